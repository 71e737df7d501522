"""Constants whose bytes live in a file mapping (weights of a module loaded from .gxm are
read-only views of the mapped file, so loading copies nothing).

A mapped file that is truncated on disk while mapped (``cp other.gxm model.gxm`` writes
over the same inode) makes every later read of the lost pages a SIGBUS.  Executables
therefore own their weights: backends call ``detach_constants`` on their private copy of
the module, which copies each file-backed constant once, after checking that the file
still covers the whole mapping (``FormatError`` instead of a crash when it does not).
docs/reliability.md says what is safe to do with a file in use."""
from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from ..errors import FormatError


def file_mapping(arr: Any) -> mmap.mmap | None:
    """The mmap that ``arr``'s memory belongs to, or None (owned or other memory)."""
    base = arr
    for _ in range(64):  # numpy views -> memoryview -> mmap
        if isinstance(base, mmap.mmap):
            return base if _file_size(base) is not None else None
        if isinstance(base, memoryview):
            base = base.obj
        elif isinstance(base, np.ndarray):
            base = base.base
        else:
            return None
        if base is None:
            return None
    return None


def _file_size(mm: mmap.mmap) -> int | None:
    """The current size of the file behind ``mm``; None for an anonymous mapping (no file:
    ``size()`` has no descriptor to stat) or a closed one."""
    try:
        return mm.size()
    except (OSError, ValueError):
        return None


def check_mapping(mm: Any, where: str = "the model file") -> None:
    """FormatError when the file behind mapping ``mm`` is now shorter than the mapping
    (reading the missing part would crash the process with SIGBUS)."""
    if isinstance(mm, memoryview):
        mm = mm.obj
    if not isinstance(mm, mmap.mmap):
        return
    size = _file_size(mm)
    if size is not None and size < len(mm):
        raise FormatError(f"{where} was truncated or replaced in place on disk while in use "
                          f"({len(mm)} bytes mapped, now {size}): load it again (gx.save "
                          "replaces files by rename, which is safe)")


def owned(arr: np.ndarray, where: str = "a loaded model's file") -> np.ndarray:
    """``arr`` itself, or a read-only private copy when it is a view of a file mapping."""
    mm = file_mapping(arr)
    if mm is None:
        return arr
    check_mapping(mm, where)
    out = np.array(arr, copy=True, order="C")
    out.flags.writeable = False
    return out


def detach_constants(module) -> int:
    """Replace every file-backed constant value in ``module`` (a copy the caller owns) by a
    private copy; returns how many were copied."""
    n = 0
    for op in module.walk():
        if op.name != "constant":
            continue
        v = op.attrs.get("value")
        if isinstance(v, np.ndarray) and file_mapping(v) is not None:
            op.set_attr("value", owned(v))
            n += 1
    return n


def has_file_backed_constants(module) -> bool:
    """Whether any constant of ``module`` is a view of a file mapping."""
    return any(op.name == "constant" and isinstance(op.attrs.get("value"), np.ndarray)
               and file_mapping(op.attrs["value"]) is not None for op in module.walk())


def check_constants(module) -> None:
    """FormatError when a file that ``module``'s constants map was truncated since it was
    loaded (``gx.optimize`` and ``gx.compile`` check before they read any weight)."""
    seen: set[int] = set()
    for op in module.walk():
        if op.name != "constant":
            continue
        mm = file_mapping(op.attrs.get("value"))
        if mm is not None and id(mm) not in seen:
            seen.add(id(mm))
            check_mapping(mm, "the .gxm file of this module")
