"""Resumable chunked estimation: a long run split into chunks of points, each saved when done.

Each finished chunk is saved as its own file in a run directory next to the output, together
with a manifest of the settings. An interrupted run continues from its last completed chunk; a
run with different settings is refused, naming what differs. Chunk results depend only on the
settings and the points' indices, so a resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .files import atomic_path, write_json

__all__ = [
    "CHUNK_COLUMNS",
    "ChunkEstimator",
    "ChunkedEstimate",
    "RunConflict",
    "estimate_in_chunks",
    "remove_run_directory",
]

#: Per-point arrays saved for every chunk of an estimation run.
CHUNK_COLUMNS: tuple[str, ...] = ("lid", "t0", "sigma", "delta", "stderr")
MANIFEST_FORMAT = "flipd.estimate_run"
MANIFEST_VERSION = 2  # 2: per-point seeds (chunk files of version 1 are not resumed)
MANIFEST_FILE = "manifest.json"


class RunSettings(Protocol):
    """What chunked estimation needs of a run's settings: the chunk size and a JSON record."""

    chunk_size: int

    def to_json(self) -> dict[str, Any]: ...


class RunConflict(ValueError):
    """A run directory cannot be used as asked (resume with other settings, stale run, ...)."""


@dataclass
class ChunkedEstimate:
    """The outcome of :func:`estimate_in_chunks`.

    Attributes:
        columns: per-point arrays named by :data:`CHUNK_COLUMNS`, each [N].
        trace: the trace estimator that ran ("exact", "hutchinson" or "gaussian").
        n_probes: probes per point.
        mode: differentiation mode that ran.
        chunk_seconds: compute time of every chunk (including those finished before a resume).
        resumed_chunks: chunks found finished when this call started.
        n_chunks: chunks in all.
        resolved: the method's resolved settings (defaults filled in), as the estimator reported.
    """

    columns: dict[str, np.ndarray]
    trace: str
    n_probes: int
    mode: str
    chunk_seconds: list[float] = field(default_factory=list)
    resumed_chunks: int = 0
    n_chunks: int = 0
    resolved: dict[str, Any] = field(default_factory=dict)


def _chunk_file(directory: Path, index: int) -> Path:
    return directory / f"chunk-{index:06d}.npz"


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable ``name: old -> new`` lines for every entry that differs (nested keys dotted)."""
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            lines.append(f"{key}: {before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r}")
    return lines


def _manifest(identity: Mapping[str, Any], settings: RunSettings, n_points: int) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "run": {"settings": settings.to_json(), "n_points": n_points, **identity},
    }


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunConflict(
            f"Cannot read the run manifest {str(path)!r} ({error}); delete {str(directory)!r} to start over."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RunConflict(f"{str(path)!r} is not a flipd run manifest; delete {str(directory)!r} to start over.")
    return manifest


def prepare_run_directory(
    directory: Path,
    identity: Mapping[str, Any],
    settings: RunSettings,
    n_points: int,
    *,
    resume: bool,
) -> int:
    """Create or check the run directory; return how many leading chunks are already finished.

    Args:
        directory: the run directory (see :func:`chunk_directory_for`).
        identity: JSON-serialisable description of the data and model (names, fingerprints);
            resuming needs it equal, like the settings.
        settings: the estimation settings.
        n_points: number of points.
        resume: continue a run found in ``directory``; without it an existing run directory is
            an error (so finished work is never silently thrown away).

    Raises:
        RunConflict: an unfinished run exists and ``resume`` is False, or the run found differs.
    """
    expected = _manifest(identity, settings, n_points)
    if directory.exists() and not (directory / MANIFEST_FILE).exists():
        if any(directory.iterdir()):
            raise RunConflict(
                f"{str(directory)!r} exists but holds no run manifest; move it away or delete it."
            )
    if (directory / MANIFEST_FILE).exists():
        if not resume:
            raise RunConflict(
                f"An unfinished run exists in {str(directory)!r}; continue it with --resume, or "
                "start over with --force."
            )
        found = _read_manifest(directory)
        differences = describe_differences(found.get("run", {}), expected["run"])
        if differences:
            raise RunConflict(
                "Cannot resume: the settings differ from the interrupted run ("
                + "; ".join(differences)
                + "). Rerun with the original settings, or start over with --force."
            )
        finished = 0
        while _chunk_file(directory, finished).is_file():
            finished += 1
        return finished
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / MANIFEST_FILE, expected)
    return 0


def _save_chunk(directory: Path, index: int, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> None:
    with atomic_path(_chunk_file(directory, index)) as temporary:
        with temporary.open("wb") as stream:
            np.savez(stream, **arrays, info=np.array(json.dumps(dict(info))))


def _load_chunk(directory: Path, index: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = _chunk_file(directory, index)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in CHUNK_COLUMNS}
            info = json.loads(str(archive["info"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise RunConflict(
            f"Cannot read the finished chunk {str(path)!r} ({error}); delete it and resume to recompute it."
        ) from error
    return arrays, info


#: ``estimator(x_chunk, indices, progress) -> (arrays, info)``: per-point arrays named by
#: :data:`CHUNK_COLUMNS` and JSON-serialisable facts (trace, n_probes, mode) for the points of
#: one chunk, whose global indices are ``indices`` (int64 [n]).
ChunkEstimator = Callable[[torch.Tensor, np.ndarray, Callable[[int], None] | None], tuple[dict[str, np.ndarray], dict[str, Any]]]


def estimate_in_chunks(
    estimator: ChunkEstimator,
    x: torch.Tensor,
    settings: RunSettings,
    directory: str | os.PathLike,
    *,
    identity: Mapping[str, Any],
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    on_chunk_done: Callable[[int, int], None] | None = None,
) -> ChunkedEstimate:
    """Run ``estimator`` on ``x`` chunk by chunk, saving each finished chunk.

    Args:
        estimator: a :data:`ChunkEstimator` (e.g. :func:`flipd.jobs.estimate.method_chunks`).
        x: points [N, ...] as the estimator takes them.
        settings: the run's settings (their ``chunk_size`` splits the points; ``to_json()`` is recorded).
        directory: run directory for the manifest and chunk files (created).
        identity: description of data and model stored in the manifest (must match to resume).
        resume: continue the run found in ``directory`` (see :func:`prepare_run_directory`).
        progress: called with the number of points finished (once with the points of chunks
            already finished when resuming).
        on_chunk_done: called as ``on_chunk_done(chunks_finished, n_chunks)`` after each chunk
            is saved.

    Returns:
        :class:`ChunkedEstimate` with the per-point results in point order. The run directory
        is left in place; remove it with :func:`remove_run_directory` once the results are saved.
        If this call fails before any chunk is finished, the run directory is removed.
    """
    directory = Path(directory)
    n = int(x.shape[0])
    chunk = settings.chunk_size
    n_chunks = max(1, math.ceil(n / chunk))
    finished = min(prepare_run_directory(directory, identity, settings, n, resume=resume), n_chunks)
    if progress is not None and finished:
        progress(min(n, finished * chunk))
    parts: list[dict[str, np.ndarray]] = []
    infos: list[dict[str, Any]] = []
    for index in range(finished):
        arrays, info = _load_chunk(directory, index)
        expected_rows = min(n, (index + 1) * chunk) - index * chunk
        if any(arrays[name].shape != (expected_rows,) for name in CHUNK_COLUMNS):
            raise RunConflict(
                f"The finished chunk {str(_chunk_file(directory, index))!r} has the wrong size; "
                "delete it and resume to recompute it."
            )
        parts.append(arrays)
        infos.append(info)
    try:
        for index in range(finished, n_chunks):
            began = time.perf_counter()
            start, stop = index * chunk, min(n, (index + 1) * chunk)
            arrays, info = estimator(x[start:stop], np.arange(start, stop, dtype=np.int64), progress)
            info = {**info, "seconds": time.perf_counter() - began}
            _save_chunk(directory, index, arrays, info)
            parts.append(arrays)
            infos.append(info)
            if on_chunk_done is not None:
                on_chunk_done(index + 1, n_chunks)
    except BaseException:
        if not _chunk_file(directory, 0).is_file():
            remove_run_directory(directory)  # nothing finished: nothing to resume
        raise
    columns = {name: np.concatenate([part[name] for part in parts]) for name in CHUNK_COLUMNS}
    last = infos[-1]
    return ChunkedEstimate(
        columns=columns, trace=last["trace"], n_probes=int(last["n_probes"]), mode=last["mode"],
        chunk_seconds=[float(info["seconds"]) for info in infos], resumed_chunks=finished, n_chunks=n_chunks,
        resolved=dict(last.get("resolved", {})),
    )


def remove_run_directory(directory: str | os.PathLike) -> None:
    """Delete a run directory made by :func:`estimate_in_chunks` (its manifest and chunk files only)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for file in directory.iterdir():
        if file.name == MANIFEST_FILE or (file.name.startswith("chunk-") and file.suffix == ".npz"):
            file.unlink()
        elif file.name.startswith(".chunk-") or file.name.startswith(f".{MANIFEST_FILE}"):
            file.unlink()  # temporary files of an interrupted write
    with contextlib.suppress(OSError):
        directory.rmdir()


