"""Resumable chunked estimation: a long run split into chunks of points, each saved when done.

Each finished chunk is saved as its own file (``chunk-%06d.npz``: the per-point arrays and a
JSON ``info``) in a run directory next to the output, together with a manifest of the
settings. An interrupted run continues with whatever chunks are finished, in any order and
from any number of processes; a run with different settings is refused, naming what differs.
Chunk results depend only on the settings and the points' indices, so a resumed run, or a run
split over several processes, gives the same numbers as one uninterrupted process.

Under a launcher (:mod:`.distributed`) rank 0 creates or checks the manifest, the others check
it too, the unfinished chunks are dealt round-robin over the ranks (rank r takes the r-th,
(r+W)-th, ... of them: chunks r, r+W, ... of a fresh run), each rank saves its own chunks, and
rank 0 assembles all of them in point order once every rank is done (:class:`ChunkedRun`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .distributed import Launch, RankFailed, RankGroup
from .files import atomic_path, write_json, write_text

__all__ = [
    "CHUNK_COLUMNS",
    "ChunkEstimator",
    "ChunkedEstimate",
    "ChunkedRun",
    "RunConflict",
    "estimate_in_chunks",
    "open_chunked_run",
    "remove_run_directory",
]

#: Per-point arrays saved for every chunk of an estimation run.
CHUNK_COLUMNS: tuple[str, ...] = ("lid", "t0", "sigma", "delta", "stderr")
#: Per-point arrays an estimator may add (the plateau rule: whether it found a plateau, as
#: 1.0/0.0, and its flatness; the calibrated rule: whether the point is denoised reliably at
#: the level, as 1.0/0.0); kept when every chunk has them.
OPTIONAL_CHUNK_COLUMNS: tuple[str, ...] = ("plateau_found", "flatness", "reliable")
MANIFEST_FORMAT = "flipd.estimate_run"
MANIFEST_VERSION = 2  # 2: per-point seeds (chunk files of version 1 are not resumed)
MANIFEST_FILE = "manifest.json"
CHUNK_PATTERN = "chunk-[0-9][0-9][0-9][0-9][0-9][0-9].npz"
#: A rank that fails while computing chunks leaves this file (its message) for the others,
#: which look for it before each chunk and stop early.
FAILURE_PREFIX = "failed-rank-"


class RunSettings(Protocol):
    """What chunked estimation needs of a run's settings: the chunk size and a JSON record."""

    chunk_size: int

    def to_json(self) -> dict[str, Any]: ...


class RunConflict(ValueError):
    """A run directory cannot be used as asked (resume with other settings, stale run, ...)."""


@dataclass
class ChunkedEstimate:
    """The outcome of a chunked run (:meth:`ChunkedRun.collect`, :func:`estimate_in_chunks`).

    Attributes:
        columns: the per-point arrays of the run (:data:`CHUNK_COLUMNS` for an estimation, and
            those of :data:`OPTIONAL_CHUNK_COLUMNS` that every chunk has), each with N rows in
            point order.
        trace: the trace estimator that ran ("exact", "hutchinson", "gaussian", "none").
        n_probes: probes per point.
        mode: differentiation mode that ran ("" where the chunks do not record one).
        chunk_seconds: compute time of every chunk (including those finished before a resume).
        resumed_chunks: chunks found finished when the run started.
        n_chunks: chunks in all.
        chunk_ranks: the rank that computed each chunk (0 for chunks of older runs).
        resolved: the method's resolved settings (defaults filled in), as the estimator reported.
    """

    columns: dict[str, np.ndarray]
    trace: str
    n_probes: int
    mode: str
    chunk_seconds: list[float] = field(default_factory=list)
    resumed_chunks: int = 0
    n_chunks: int = 0
    chunk_ranks: list[int] = field(default_factory=list)
    resolved: dict[str, Any] = field(default_factory=dict)


def _chunk_file(directory: Path, index: int) -> Path:
    return directory / f"chunk-{index:06d}.npz"


def finished_chunks(directory: str | os.PathLike, n_chunks: int) -> list[int]:
    """Indices (0..n_chunks-1, increasing) of the chunks whose files are in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (int(path.name[6:12]) for path in directory.glob(CHUNK_PATTERN) if path.is_file())
    return sorted(index for index in found if index < n_chunks)


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


def _check_manifest(directory: Path, expected: Mapping[str, Any], *, by: str = "the interrupted run") -> None:
    found = _read_manifest(directory)
    differences = describe_differences(found.get("run", {}), expected["run"])
    if differences:
        raise RunConflict(
            f"Cannot resume: the settings differ from {by} ("
            + "; ".join(differences)
            + "). Rerun with the original settings, or start over (--force on the command line; "
            + f"in Python, remove {str(directory)!r} with remove_run_directory)."
        )


def prepare_run_directory(
    directory: Path,
    identity: Mapping[str, Any],
    settings: RunSettings,
    n_points: int,
    *,
    resume: bool,
) -> list[int]:
    """Create or check the run directory; return the indices of the chunks already finished.

    Any set of finished chunks is recognised (a run split over several processes finishes
    them in no particular order), each of them checked to be readable.

    Args:
        directory: the run directory (see :func:`chunk_directory_for`).
        identity: JSON-serialisable description of the data and model (names, fingerprints);
            resuming needs it equal, like the settings.
        settings: the estimation settings.
        n_points: number of points.
        resume: continue a run found in ``directory``; without it an existing run directory is
            an error (so finished work is never silently thrown away).

    Raises:
        RunConflict: an unfinished run exists and ``resume`` is False, the run found differs,
            or a finished chunk file is damaged (the message names it and the fix).
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
                f"An unfinished run exists in {str(directory)!r}; continue it with --resume "
                "(resume=True in Python), or start over with --force (in Python, remove it with remove_run_directory)."
            )
        _check_manifest(directory, expected)
        _remove_failure_notes(directory)  # left by ranks of the interrupted run
        return finished_chunks(directory, max(1, math.ceil(n_points / settings.chunk_size)))
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / MANIFEST_FILE, expected)
    return []


def _save_chunk(directory: Path, index: int, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> None:
    with atomic_path(_chunk_file(directory, index)) as temporary:
        with temporary.open("wb") as stream:
            np.savez(stream, **arrays, info=np.array(json.dumps(dict(info))))


def _load_chunk(directory: Path, index: int, columns: Sequence[str] = CHUNK_COLUMNS,
                rows: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays named ``columns`` and the info of a finished chunk, each array checked to
    have ``rows`` rows when given."""
    path = _chunk_file(directory, index)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in columns}
            arrays.update({name: archive[name] for name in OPTIONAL_CHUNK_COLUMNS
                           if name in archive.files and name not in arrays})
            info = json.loads(str(archive["info"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise RunConflict(
            f"Cannot read the finished chunk {str(path)!r} ({error}); delete it and resume to recompute it."
        ) from error
    if rows is not None and any(array.ndim == 0 or array.shape[0] != rows for array in arrays.values()):
        raise RunConflict(
            f"The finished chunk {str(path)!r} has the wrong size; delete it and resume to recompute it."
        )
    return arrays, info


#: ``estimator(x_chunk, indices, progress) -> (arrays, info)``: per-point arrays (named by
#: :data:`CHUNK_COLUMNS` for an estimation; one row per point) and JSON-serialisable facts
#: (trace, n_probes, mode) for the points of one chunk, whose global indices are ``indices``
#: (int64 [n]).
ChunkEstimator = Callable[[torch.Tensor, np.ndarray, Callable[[int], None] | None], tuple[dict[str, np.ndarray], dict[str, Any]]]


def _remove_failure_notes(directory: Path) -> None:
    for note in directory.glob(f"{FAILURE_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            note.unlink()


def _failure_notes(directory: Path) -> list[tuple[int, str]]:
    """(rank, message) of the failure notes in ``directory``, by rank."""
    notes = []
    for note in directory.glob(f"{FAILURE_PREFIX}*.txt"):
        with contextlib.suppress(OSError, ValueError):
            notes.append((int(note.name[len(FAILURE_PREFIX):-4]), note.read_text(encoding="utf-8").strip()))
    return sorted(notes)


def single_process() -> RankGroup:
    """The group of one process that chunked runs use when no launcher started several."""
    return RankGroup(Launch(), torch.device("cpu"), None)


@dataclass
class ChunkedRun:
    """A run directory opened by :func:`open_chunked_run`: which chunks exist, which this process computes.

    Attributes:
        directory: the run directory (manifest and chunk files).
        n_points: points in the run (N).
        chunk_size: points per chunk (the last chunk may be shorter).
        columns: names of the per-point arrays every chunk holds.
        finished: chunks finished before the run was opened (by any process).
        owned: chunks this process computes, in order.
        group: the processes of the job.
    """

    directory: Path
    n_points: int
    chunk_size: int
    columns: tuple[str, ...]
    finished: tuple[int, ...]
    owned: tuple[int, ...]
    group: RankGroup

    @property
    def n_chunks(self) -> int:
        return max(1, math.ceil(self.n_points / self.chunk_size))

    def bounds(self, index: int) -> tuple[int, int]:
        """The first point and one past the last point of chunk ``index``."""
        return index * self.chunk_size, min(self.n_points, (index + 1) * self.chunk_size)

    @property
    def points_owned(self) -> int:
        """Points this process computes."""
        return sum(stop - start for start, stop in map(self.bounds, self.owned))

    @property
    def points_finished(self) -> int:
        """Points of the chunks finished before the run was opened."""
        return sum(stop - start for start, stop in map(self.bounds, self.finished))

    def _remove_if_empty(self) -> None:
        if self.group.is_main and not finished_chunks(self.directory, self.n_chunks):
            remove_run_directory(self.directory)  # nothing finished: nothing to resume

    def compute(self, estimator: ChunkEstimator, x: Any, *, progress: Callable[[int], None] | None = None,
                on_chunk_done: Callable[[int, int], None] | None = None) -> None:
        """Compute and save the chunks this process owns, then wait for the other processes.

        Args:
            estimator: a :data:`ChunkEstimator`.
            x: the points [N, ...] as the estimator takes them; only ``len(x)`` and slices
                ``x[start:stop]`` are used.
            progress: called with the number of points finished by this process.
            on_chunk_done: called as ``on_chunk_done(chunks_finished, n_chunks)`` after each
                chunk is saved, ``chunks_finished`` counting the chunks finished before and
                those this process finished since.

        Raises:
            RankFailed: another process failed (its own error is raised there).
            ValueError: ``x`` does not have N points, or the estimator's arrays lack a column.
        """
        if len(x) != self.n_points:
            raise ValueError(f"The run has {self.n_points} points but {len(x)} were given.")
        step = "computing the chunks"
        try:
            with self.group.agree(step):
                self._compute_owned(estimator, x, progress, on_chunk_done, step)
        except BaseException:
            if self.group.is_main:
                _remove_failure_notes(self.directory)
            self._remove_if_empty()
            raise

    def _compute_owned(self, estimator: ChunkEstimator, x: Any, progress: Callable[[int], None] | None,
                       on_chunk_done: Callable[[int, int], None] | None, step: str) -> None:
        """The chunk loop of :meth:`compute`. Under a launcher, a failure leaves a note for the
        other ranks, and a note left by another rank stops this one before its next chunk."""
        distributed = self.group.world_size > 1
        try:
            done = len(self.finished)
            for index in self.owned:
                if distributed and (notes := _failure_notes(self.directory)):
                    ranks = ", ".join(str(rank) for rank, _ in notes)
                    raise RankFailed(f"stopped while {step}: rank {ranks} of {self.group.world_size} failed ({notes[0][1]})")
                began = time.perf_counter()
                start, stop = self.bounds(index)
                arrays, info = estimator(x[start:stop], np.arange(start, stop, dtype=np.int64), progress)
                missing = [name for name in self.columns if name not in arrays]
                if missing:
                    raise ValueError(f"The chunk estimator returned no {', '.join(missing)}.")
                info = {**info, "seconds": time.perf_counter() - began, "rank": self.group.rank}
                kept = [*self.columns, *(name for name in OPTIONAL_CHUNK_COLUMNS if name in arrays and name not in self.columns)]
                _save_chunk(self.directory, index, {name: arrays[name] for name in kept}, info)
                done += 1
                if on_chunk_done is not None:
                    on_chunk_done(done, self.n_chunks)
        except RankFailed:
            raise
        except BaseException as error:
            if distributed:
                with contextlib.suppress(OSError):
                    text = " ".join(str(error).split()) or type(error).__name__
                    write_text(self.directory / f"{FAILURE_PREFIX}{self.group.rank}.txt", f"{type(error).__name__}: {text}")
            raise

    def collect(self) -> ChunkedEstimate:
        """Load every chunk (all must be finished) and join them in point order; rank 0 calls this.

        Raises:
            RunConflict: a chunk is missing or damaged (the message names its file).
        """
        parts: list[dict[str, np.ndarray]] = []
        infos: list[dict[str, Any]] = []
        for index in range(self.n_chunks):
            start, stop = self.bounds(index)
            if not _chunk_file(self.directory, index).is_file():
                raise RunConflict(
                    f"The chunk {str(_chunk_file(self.directory, index))!r} is missing; run the same command "
                    "with --resume (resume=True in Python) to compute it."
                )
            arrays, info = _load_chunk(self.directory, index, self.columns, rows=stop - start)
            parts.append(arrays)
            infos.append(info)
        last = infos[-1]
        names = [*self.columns, *(name for name in OPTIONAL_CHUNK_COLUMNS
                                  if name not in self.columns and all(name in part for part in parts))]
        return ChunkedEstimate(
            columns={name: np.concatenate([part[name] for part in parts]) for name in names},
            trace=str(last.get("trace", "")), n_probes=int(last.get("n_probes", 0)), mode=str(last.get("mode", "")),
            chunk_seconds=[float(info["seconds"]) for info in infos], resumed_chunks=len(self.finished),
            n_chunks=self.n_chunks, chunk_ranks=[int(info.get("rank", 0)) for info in infos],
            resolved=dict(last.get("resolved", {})),
        )


def open_chunked_run(
    directory: str | os.PathLike,
    identity: Mapping[str, Any],
    settings: RunSettings,
    n_points: int,
    *,
    resume: bool = False,
    columns: Sequence[str] = CHUNK_COLUMNS,
    group: RankGroup | None = None,
) -> ChunkedRun:
    """Create or check a run directory on every process and deal out the unfinished chunks.

    Rank 0 creates the manifest, or checks it and finds the finished chunks (see
    :func:`prepare_run_directory`); the other ranks then check the manifest against their own
    settings, data and model. The unfinished chunks are dealt round-robin: rank r of W
    computes the r-th, (r+W)-th, ... of them, so a fresh run gives rank r the chunks r, r+W, ...
    and a resumed run spreads what is left evenly, whatever the number of processes before.

    Args:
        directory: run directory for the manifest and chunk files (created).
        identity: description of data and model stored in the manifest (must match to resume).
        settings: the run's settings (their ``chunk_size`` splits the points; ``to_json()`` is recorded).
        n_points: N.
        resume: continue the run found in ``directory``.
        columns: the per-point arrays each chunk holds.
        group: the processes of the job (default: this process alone).

    Raises:
        RunConflict: see :func:`prepare_run_directory`; also when a rank's settings, data or
            model differ from rank 0's.
        RankFailed: another process failed.
    """
    directory = Path(directory)
    group = single_process() if group is None else group
    n_chunks = max(1, math.ceil(n_points / settings.chunk_size))
    found: list[int] = []
    with group.agree("checking the run directory"):
        if group.is_main:
            found = prepare_run_directory(directory, identity, settings, n_points, resume=resume)
            for index in found:
                start, stop = index * settings.chunk_size, min(n_points, (index + 1) * settings.chunk_size)
                _load_chunk(directory, index, columns, rows=stop - start)
    flags = group.share([int(index in set(found)) for index in range(n_chunks)] if group.is_main else None, n_chunks)
    finished = tuple(index for index, flag in enumerate(flags) if flag)
    todo = [index for index, flag in enumerate(flags) if not flag]
    run = ChunkedRun(directory, n_points, settings.chunk_size, tuple(columns), finished,
                     tuple(todo[group.rank :: group.world_size]), group)
    try:
        with group.agree("checking the run manifest"):
            if not group.is_main:
                _check_manifest(directory, _manifest(identity, settings, n_points), by=f"rank 0 (on rank {group.rank})")
    except BaseException:
        run._remove_if_empty()
        raise
    return run


def estimate_in_chunks(
    estimator: ChunkEstimator,
    x: Any,
    settings: RunSettings,
    directory: str | os.PathLike,
    *,
    identity: Mapping[str, Any],
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    on_chunk_done: Callable[[int, int], None] | None = None,
    columns: Sequence[str] = CHUNK_COLUMNS,
    group: RankGroup | None = None,
) -> ChunkedEstimate | None:
    """Run ``estimator`` on ``x`` chunk by chunk, saving each finished chunk.

    Args:
        estimator: a :data:`ChunkEstimator` (e.g. :func:`flipd.jobs.estimate.method_chunks`).
        x: points [N, ...] as the estimator takes them (only ``len(x)`` and ``x[start:stop]`` are used).
        settings: the run's settings (their ``chunk_size`` splits the points; ``to_json()`` is recorded).
        directory: run directory for the manifest and chunk files (created).
        identity: description of data and model stored in the manifest (must match to resume).
        resume: continue the run found in ``directory`` (see :func:`prepare_run_directory`).
        progress: called with the number of points finished (once with the points of chunks
            already finished when resuming).
        on_chunk_done: called as ``on_chunk_done(chunks_finished, n_chunks)`` after each chunk
            is saved.
        columns: the per-point arrays each chunk holds.
        group: the processes of the job (default: this process alone); see :func:`open_chunked_run`.

    Returns:
        :class:`ChunkedEstimate` with the per-point results in point order, on rank 0; None on
        the other ranks. The run directory is left in place; remove it with
        :func:`remove_run_directory` once the results are saved. If this call fails before any
        chunk is finished, the run directory is removed.
    """
    run = open_chunked_run(directory, identity, settings, len(x), resume=resume, columns=columns, group=group)
    if progress is not None and run.points_finished and run.group.is_main:
        progress(run.points_finished)
    run.compute(estimator, x, progress=progress, on_chunk_done=on_chunk_done)
    return run.collect() if run.group.is_main else None


def remove_run_directory(directory: str | os.PathLike) -> None:
    """Delete a run directory made by :func:`estimate_in_chunks` (its manifest and chunk files only)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for file in directory.iterdir():
        if file.name == MANIFEST_FILE or (file.name.startswith("chunk-") and file.suffix == ".npz"):
            file.unlink()
        elif file.name.startswith(FAILURE_PREFIX):
            file.unlink()
        elif file.name.startswith((".chunk-", f".{MANIFEST_FILE}", f".{FAILURE_PREFIX}")):
            file.unlink()  # temporary files of an interrupted write
    with contextlib.suppress(OSError):
        directory.rmdir()


