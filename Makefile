# Entry points. Each target bootstraps .venv on a fresh machine (torch CPU build by default).
#   make demo         the main job: ternary SNN on the embedded digits, with and without TNA (+ fp32)
#   make test         every lane: CPU tests, Triton interpreter, ctest, and a user-style install
#   make bench        speed comparisons (pytest-benchmark) against the reference and peers, then
#                     the LIF's paired-round ratios (benchmarks/lif_paired.py)
#   make gpu-compile  every Triton kernel compiled ahead of time for sm_90 and sm_80 (no GPU needed)
#   make gpu-check-dry  scripts/gpu_check.sh --dry-run: the GPU evidence script's every step on the
#                     CPU at tiny sizes (results in build/gpu_check_dry/)
#   make test-install a fresh venv, `pip install torch==2.13.0`, `pip install .` as a user types
#                     it (build isolation on), then one op of each family
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton
PEERS ?= snntorch spikingjelly
export MAX_JOBS ?= 2
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.txt') setup.py pyproject.toml
# pytest exits 5 when a lane selects no tests; that is not a failure.
PYTEST_OK = rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

.PHONY: demo demo-lif test test-cpu test-triton test-cpp test-install gpu-compile test-gpu-path gpu-check-dry bench build info clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "$(TRITON_SPEC)" numpy "setuptools>=64" wheel "pybind11>=2.12" pytest pytest-benchmark hypothesis expecttest scikit-learn pillow pyyaml safetensors matplotlib tqdm nir
	touch $@

# An editable install: the native core builds without torch (no build isolation needed, but the
# build tools are already in the venv, so skip the isolated environment's set-up).
$(VENV)/.built: $(VENV)/.deps $(CSRC)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

info: build
	$(PY) -m tna_kernels.info

demo: build
	$(PY) -m tna_kernels.train.demo --out runs/demo

demo-lif: build
	$(PY) scripts/demo_lif.py

test: test-cpu test-triton test-gpu-path test-cpp gpu-compile gpu-check-dry test-install

test-cpu: build
	$(PY) -m pytest -q -m "not slow" tests; $(PYTEST_OK)

test-triton: build
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "triton and not slow" tests; $(PYTEST_OK)

# The full GPU path on the CPU: every tna:: op's CPU dispatch routed to its CUDA implementation
# (the Triton launchers, run by the interpreter); opcheck, the reference, TNA steps vs the C++ path.
test-gpu-path: build
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "gpu_path and not slow" tests; $(PYTEST_OK)

test-cpp: build
	mkdir -p build
	cmake -S . -B build/cmake -Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)" -DPython3_EXECUTABLE=$(PY) > build/cmake.log
	cmake --build build/cmake -j $(MAX_JOBS) >> build/cmake.log
	ctest --test-dir build/cmake --output-on-failure

# Every Triton kernel x autotune config x specialisation the launchers use, compiled to cubin for
# sm_90 and sm_80 (no GPU needed); prints registers, spills and shared memory (GPU_DOC=1 also
# writes the table into docs/GPU.md).
gpu-compile: build
	env -u TRITON_INTERPRET $(PY) scripts/gpu_compile.py --arch 90,80 --jobs 2 $(if $(GPU_DOC),--markdown docs/GPU.md)

# The GPU evidence script (scripts/gpu_check.sh; docs/GPU.md) on the CPU: every step at tiny sizes
# under TRITON_INTERPRET=1, <= 2 minutes; fails on a failed step or a malformed output file.
gpu-check-dry: build
	GPU_CHECK_OUT=build/gpu_check_dry PYTHON=$(PY) bash scripts/gpu_check.sh --dry-run

test-install:
	bash scripts/test_install.sh "$(TORCH_SPEC)"

bench: build
	$(PIP) install -q --no-deps $(PEERS)
	$(PIP) install -q loguru
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=build/bench.json; $(PYTEST_OK)
	$(PY) benchmarks/report.py build/bench.json
	$(PY) benchmarks/lif_paired.py --T 4 --json build/lif_paired_T4.json
	$(PY) benchmarks/lif_paired.py --T 16 --json build/lif_paired_T16.json

clean:
	rm -rf build tna_kernels/_C*.so $(VENV)
