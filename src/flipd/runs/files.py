"""Files a run writes: atomic writes, JSON, result tables, fingerprints. Imports nothing of flipd.

Everything a run writes goes through :func:`atomic_path`: the content is written to a uniquely
named temporary file in the destination's directory and moved into place with
:func:`os.replace`, so a reader (or a crash) never sees a half-written file, and two writers
never share a temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "TABLE_SUFFIXES",
    "atomic_directory",
    "atomic_path",
    "check_table_path",
    "check_writable_directory",
    "chunk_directory_for",
    "current_umask",
    "fingerprint_array",
    "fingerprint_path",
    "load_average",
    "lock_path_for",
    "metadata_path_for",
    "output_lock",
    "read_table",
    "json_default",
    "write_json",
    "write_table",
    "write_text",
]

TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The temporary file lives in the destination's directory (so :func:`os.replace` is an atomic
    rename on the same file system) and keeps the destination's suffix, so writers that pick a
    format from the suffix (pandas, matplotlib) work. On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix, dir=target.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.chmod(temporary_path, 0o666 & ~current_umask())  # mkstemp makes private files
        os.replace(temporary_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder next to ``path``; on success it replaces ``path`` (a folder).

    What is written into the yielded folder appears at ``path`` all at once: a folder that was
    at ``path`` is moved aside, the new one renamed into place, and the old one removed (put
    back if the rename fails). The new folder gets the process umask's permissions. On an
    exception the new folder is removed and ``path`` is left as it was. Whether ``path`` may be
    replaced is the caller's decision.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes a private directory
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(backup, target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def check_writable_directory(directory: str | os.PathLike, what: str = "the output") -> Path:
    """Make sure files can be written in ``directory`` (which may not exist yet), cheaply and
    before any expensive work: a temporary file is created and removed in it or, if it does not
    exist, in its nearest existing parent (which :func:`atomic_path` would create it under).
    Nothing is left behind.

    Raises:
        NotADirectoryError: ``directory`` or a parent is a file.
        PermissionError: files cannot be created there (the message names the folder).
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"Cannot write {what} in {str(directory)!r}: {str(existing)!r} is a file, not a folder; choose another path."
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".flipd-write-check.", dir=existing)
    except OSError as error:
        raise PermissionError(
            f"Cannot write {what} in {str(directory)!r}: files cannot be created in {str(existing)!r} "
            f"({error.strerror or error}); choose a writable place."
        ) from None
    os.close(handle)
    os.unlink(probe)
    return directory


def lock_path_for(output: str | os.PathLike) -> Path:
    """The lock file that marks ``output`` as being written by a run: the name + ``.lock``."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold ``output``'s lock file (:func:`lock_path_for`) for the duration of a run.

    The lock is created atomically (``O_CREAT | O_EXCL``) and holds the process id; it is
    removed at the end, also on errors and interruptions. A lock left by a process that no
    longer runs is taken over. (Two runs taking over the same stale lock at the same instant
    are not told apart: a window of microseconds after a crash.)

    Raises:
        FileExistsError: another live process holds the lock (the message names it and the fix).
    """
    lock = lock_path_for(output)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                text = lock.read_text().strip()
            except FileNotFoundError:  # released meanwhile: try again
                continue
            if text.isdigit() and not _process_is_alive(int(text)):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # stale: its run is gone
                continue
            holder = f"process {text}" if text.isdigit() else "another run"
            raise FileExistsError(
                f"{str(Path(output))!r} is being written by {holder} (lock file {str(lock)!r}); wait for "
                "it to finish or choose another --out. If no run is going on, delete the lock file."
            ) from None
        with os.fdopen(handle, "w") as stream:
            stream.write(f"{os.getpid()}\n")
        break
    else:
        raise FileExistsError(f"Cannot take the lock {str(lock)!r}: other runs keep taking it; try again.")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def json_default(value: Any) -> Any:
    """The ``default=`` of :func:`json.dumps` for what runs record: numpy scalars and arrays,
    tensors, paths. Raises ``TypeError`` for anything else."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot write a {type(value).__name__} to JSON.")


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, value: Mapping[str, Any]) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically (NaN and inf become null)."""
    plain = json.loads(json.dumps(value, default=json_default))
    return write_text(path, json.dumps(_json_safe(plain), indent=2, allow_nan=False) + "\n")


def check_table_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path, raising ``ValueError`` unless it ends in .parquet or .csv."""
    table = Path(path)
    if table.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(
            f"Cannot write a table to {str(table)!r}: use a file name ending in .parquet or .csv."
        )
    return table


def write_table(path: str | os.PathLike, columns: Mapping[str, Any]) -> Path:
    """Write equal-length columns to a .parquet or .csv file atomically (format from the suffix)."""
    import pandas as pd

    table = check_table_path(path)
    frame = pd.DataFrame({name: np.asarray(values) if not isinstance(values, list) else values for name, values in columns.items()})
    with atomic_path(table) as temporary:
        if table.suffix.lower() == ".parquet":
            frame.to_parquet(temporary, index=False)
        else:
            frame.to_csv(temporary, index=False)
    return table


def read_table(path: str | os.PathLike):
    """Read a .parquet or .csv table written by :func:`write_table` as a pandas DataFrame."""
    import pandas as pd

    table = check_table_path(path)
    if not table.is_file():
        raise FileNotFoundError(f"No table at {str(table)!r}.")
    return pd.read_parquet(table) if table.suffix.lower() == ".parquet" else pd.read_csv(table)


def metadata_path_for(table: str | os.PathLike) -> Path:
    """Where the run metadata of a result table goes: the same name with a .json suffix."""
    return Path(table).with_suffix(".json")


def chunk_directory_for(table: str | os.PathLike) -> Path:
    """The run directory holding the finished chunks of an estimation writing ``table``."""
    table = Path(table)
    return table.with_name(table.name + ".chunks")


# --------------------------------------------------------------------------- fingerprints


def fingerprint_array(array: np.ndarray | torch.Tensor) -> str:
    """SHA-256 of an array's dtype, shape and bytes (identifies the data a run was made on)."""
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    values = np.ascontiguousarray(values)
    digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


#: Files larger than this are fingerprinted by size and their first and last MiB only.
FULL_HASH_LIMIT = 256 * 2**20


def _hash_file(digest: Any, file: Path) -> None:
    size = file.stat().st_size
    digest.update(f"{size}".encode())
    with file.open("rb") as stream:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: stream.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(stream.read(2**20))
            stream.seek(-(2**20), os.SEEK_END)
            digest.update(stream.read(2**20))


def fingerprint_path(path: str | os.PathLike) -> str:
    """SHA-256 over a file, or over the relative names and contents of a directory's files."""
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        _hash_file(digest, root)
        return digest.hexdigest()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        _hash_file(digest, file)
    return digest.hexdigest()


