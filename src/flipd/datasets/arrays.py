"""Reading numpy files safely: numbers only, never an unpickled object, every failure named.

``np.load(..., allow_pickle=False)`` refuses object arrays, but for a ``.npz`` only when a
member is read, and in both cases with a message that names neither the file nor the fix.
These helpers read ``.npy`` files and ``.npz`` members and turn every failure into a
``ValueError`` naming the file, the member and what to do.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["array_file_error", "open_npz", "read_archive_member", "read_npy"]

_FIX = "Save numbers with numpy.save or numpy.savez (an object array, which needs unpickling, is never loaded)."


def array_file_error(file: Path, reason: str, member: str | None = None) -> ValueError:
    """The error for a numpy file (or one ``member`` of a ``.npz``) that cannot be read as numbers."""
    where = f"the array {member!r} of {str(file)!r}" if member is not None else repr(str(file))
    return ValueError(f"Cannot read {where} as a numpy array: {reason}. {_FIX}")


def _reason(file: Path, error: BaseException, dtype: Any = None) -> str:
    if dtype is not None and (dtype.hasobject or dtype.fields is not None):
        return f"it holds {dtype} values (Python objects or records), not numbers"
    if "allow_pickle" in str(error) or "Python objects" in str(error):
        return "it holds Python objects (dtype object), not numbers"
    if file.is_file() and file.stat().st_size == 0:
        return "it is empty (0 bytes)"
    return str(error) or type(error).__name__


def _check_numbers(file: Path, values: np.ndarray, member: str | None = None) -> np.ndarray:
    if values.dtype.hasobject or values.dtype.fields is not None:
        raise array_file_error(file, _reason(file, ValueError(), values.dtype), member)
    return values


def read_npy(file: Path, *, mmap: bool = False) -> np.ndarray:
    """The array in a ``.npy`` file (memory-mapped if ``mmap``), refusing object and record arrays.

    Raises:
        ValueError: the file is empty, damaged, or holds objects (the message names the file).
    """
    try:
        values = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, EOFError, OSError) as error:
        raise array_file_error(file, _reason(file, error)) from None
    return _check_numbers(file, values)


def open_npz(file: Path) -> Any:
    """An open ``.npz`` archive (``np.load(file, allow_pickle=False)``; use it in a ``with``).

    Raises:
        ValueError: the file is empty or not a ``.npz`` archive (the message names the file).
    """
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise array_file_error(file, _reason(file, error)) from None


def read_archive_member(archive: Any, key: str, file: Path) -> np.ndarray:
    """Member ``key`` of an open ``.npz`` archive (``np.load(file, allow_pickle=False)``).

    Raises:
        ValueError: the member holds objects or is damaged (the message names file and member).
    """
    try:
        values = archive[key]
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise array_file_error(file, _reason(file, error), key) from None
    return _check_numbers(file, values, key)
