"""Reading numpy files safely: numbers only, never an unpickled object, every failure named.

``np.load(..., allow_pickle=False)`` refuses object arrays, but for a ``.npz`` only when a
member is read, and in both cases with a message that names neither the file nor the fix.
These helpers read ``.npy`` files and ``.npz`` members and turn every failure into a
``ValueError`` naming the file, the member and what to do. A ``.npz`` member can also be read
block by block without loading it (:func:`archive_member_header`, :func:`archive_member_blocks`:
its ``.npy`` header, then its rows, decompressed as they are read for ``np.savez_compressed``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MemberHeader", "archive_member_blocks", "archive_member_header", "array_file_error", "open_npz",
           "read_archive_member", "read_npy"]

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


@dataclass(frozen=True)
class MemberHeader:
    """What the ``.npy`` header of a ``.npz`` member says: its shape, its dtype and whether
    it is stored in Fortran (column-major) order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _member_name(archive: zipfile.ZipFile, key: str) -> str:
    names = set(archive.namelist())
    return f"{key}.npy" if f"{key}.npy" in names else key


def _read_header(handle: Any) -> MemberHeader | None:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    else:  # other versions: read the member whole
        return None
    return MemberHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran_order))


def archive_member_header(file: Path, key: str) -> MemberHeader | None:
    """The header of member ``key`` of the ``.npz`` ``file``, read without its data; None when
    it cannot be read this way (a damaged or unusual member: read it with
    :func:`read_archive_member`, which names the problem)."""
    try:
        with zipfile.ZipFile(file) as archive, archive.open(_member_name(archive, key)) as handle:
            return _read_header(handle)
    except (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile):
        return None


def archive_member_blocks(file: Path, key: str, rows: int) -> Iterator[np.ndarray]:
    """Member ``key`` of ``file`` (a C-order array [N, ...] of numbers) as consecutive blocks of
    up to ``rows`` rows, read (and decompressed) as they are needed; memory holds one block.

    Raises:
        ValueError: the member is not such an array, or its data end early (names file and member).
    """
    try:
        with zipfile.ZipFile(file) as archive, archive.open(_member_name(archive, key)) as handle:
            header = _read_header(handle)
            if header is None or header.fortran_order or header.ndim == 0 or header.dtype.hasobject \
                    or header.dtype.fields is not None:
                raise array_file_error(file, "it cannot be read block by block (a C-order array of numbers)", key)
            row_items = int(np.prod(header.shape[1:], dtype=np.int64))
            row_bytes = header.dtype.itemsize * row_items
            for start in range(0, header.shape[0], rows):
                count = min(rows, header.shape[0] - start)
                data = handle.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise array_file_error(file, f"its data end after {start + len(data) // max(1, row_bytes)} of "
                                                 f"{header.shape[0]} rows (a damaged or truncated file)", key)
                yield np.frombuffer(data, dtype=header.dtype).reshape(count, *header.shape[1:])
    except (EOFError, OSError, zipfile.BadZipFile) as error:
        raise array_file_error(file, _reason(file, error), key) from None
