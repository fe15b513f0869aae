"""Loads the native core, tna_kernels._C, and says exactly what is wrong when it cannot.

Three failures, each with the one command that fixes it:
* missing: no built module next to the package (a source checkout that was never built);
* stale:   the module was built from other sources than this checkout's csrc/ (an editable
           install whose C++ changed since), or exposes another binding interface;
* broken:  a module file exists but the dynamic loader refuses it (the message says why).
_C links no torch library, so a torch upgrade never makes it stale."""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path
from types import ModuleType

from ._source_hash import source_hash

# The binding interface this Python code calls (csrc/module.cpp: INTERFACE_VERSION).
INTERFACE_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_CSRC = PACKAGE_DIR.parent / "csrc"


def fix_command() -> str:
    """The command that (re)builds _C: an editable rebuild in a source checkout, else a reinstall."""
    if CHECKOUT_CSRC.is_dir():
        return f"pip install -e {PACKAGE_DIR.parent}"
    return "pip install --force-reinstall --no-deps tna_kernels"


def module_files() -> list[Path]:
    return [PACKAGE_DIR / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if (PACKAGE_DIR / f"_C{suffix}").exists()]


def load_native() -> ModuleType:
    files = module_files()
    try:
        native = importlib.import_module("tna_kernels._C")
    except ImportError as exc:
        if not files and "No module named" in str(exc):
            raise ImportError(
                "tna_kernels._C is missing: the native core was never built for this checkout. "
                f"Fix: {fix_command()}") from exc
        raise ImportError(
            f"tna_kernels._C is broken: {', '.join(map(str, files)) or 'the module'} could not be "
            f"loaded ({exc}). Fix: {fix_command()}") from exc
    got = getattr(native, "INTERFACE_VERSION", None)
    if got != INTERFACE_VERSION:
        raise ImportError(
            f"tna_kernels._C is stale: it exposes binding interface {got}, this Python code needs "
            f"{INTERFACE_VERSION}. Fix: {fix_command()}")
    if CHECKOUT_CSRC.is_dir() and native.SOURCE_HASH != source_hash(CHECKOUT_CSRC):
        raise ImportError(
            f"tna_kernels._C is stale: it was built from other sources than {CHECKOUT_CSRC} "
            f"(built {native.SOURCE_HASH}, sources now {source_hash(CHECKOUT_CSRC)}). "
            f"Fix: {fix_command()}")
    return native
