"""Hash of the native sources (csrc/), shared by setup.py (compiled into tna_kernels._C as
SOURCE_HASH) and the import check of an editable checkout, which rebuilds nothing but says when
_C is older than its sources. Standard library only: setup.py loads it before anything is built."""

import hashlib
from pathlib import Path

SUFFIXES = (".cpp", ".h", ".txt")


def source_hash(csrc: Path) -> str:
    """sha256 (first 16 hex digits) over every C++ source and header under ``csrc`` except the
    C++ tests, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.suffix in SUFFIXES and "tests" not in p.parts):
        digest.update(path.relative_to(csrc).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
