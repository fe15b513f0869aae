"""Triton GPU kernels. Imported only when Triton is installed; run on the CPU under
TRITON_INTERPRET=1 (set before triton is imported) in the test suite."""
