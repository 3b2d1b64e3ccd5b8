"""Run records: atomic files, result tables, run metadata and resumable chunked estimation.

Everything a run writes goes through :func:`atomic_path`: the content is written to a temporary
file in the destination's directory and moved into place with :func:`os.replace`, so a reader
(or a crash) never sees a half-written file.

A long estimation is split into chunks of points (:func:`estimate_in_chunks`). Each finished
chunk is saved as its own file in a run directory next to the output, together with a manifest
of the settings. An interrupted run continues from its last completed chunk; a run with
different settings is refused, naming what differs. Chunk results depend only on the settings
and the chunk's position, so a resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHUNK_COLUMNS",
    "ChunkEstimator",
    "ChunkedEstimate",
    "EstimateSettings",
    "METHODS",
    "MODEL_METHODS",
    "baseline_chunks",
    "flipd_chunks",
    "RunConflict",
    "atomic_path",
    "chunk_directory_for",
    "environment_info",
    "estimate_in_chunks",
    "fingerprint_array",
    "fingerprint_path",
    "metadata_path_for",
    "read_table",
    "write_json",
    "write_table",
]

#: Per-point arrays saved for every chunk of an estimation run.
CHUNK_COLUMNS: tuple[str, ...] = ("lid", "t0", "sigma", "delta", "stderr")
MANIFEST_FORMAT = "flipd.estimate_run"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv")


class RunConflict(ValueError):
    """A run directory cannot be used as asked (resume with other settings, stale run, ...)."""


# --------------------------------------------------------------------------- atomic files


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


def _json_default(value: Any) -> Any:
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
    plain = json.loads(json.dumps(value, default=_json_default))
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


# --------------------------------------------------------------------------- environment


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


#: Packages whose versions are recorded with every run (None when not installed).
RECORDED_PACKAGES: tuple[str, ...] = (
    "torch", "numpy", "scipy", "kneed", "safetensors", "pandas", "pyarrow", "matplotlib",
    "typer", "rich", "diffusers", "pillow", "scikit-learn", "scikit-dimension",
)


def cache_directories() -> dict[str, str]:
    """Where models are kept between runs (the folders are not created here).

    ``demo_models``: models trained by ``flipd demo`` (relative to the working directory, see
    its ``--out``); ``huggingface_hub`` and ``torch_hub``: where those libraries keep downloaded
    models (flipd itself never downloads; give it local folders).
    """
    from .workflows import DEMO_DEFAULT_OUT

    home = Path.home()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache"))
    hf_home = Path(os.environ.get("HF_HOME", xdg / "huggingface"))
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or str(hf_home / "hub")
    return {
        "demo_models": str(Path(DEMO_DEFAULT_OUT) / "models"),
        "huggingface_hub": hub,
        "torch_hub": torch.hub.get_dir(),
    }


def device_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """The device a run uses and what accelerators the machine has."""
    info: dict[str, Any] = {"device": str(device) if device is not None else "cpu"}
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    return info


def environment_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Versions, threads, device and machine: recorded with every run and shown by ``flipd info``."""
    from . import __version__

    versions = {"flipd": __version__, "python": platform.python_version()}
    versions.update({name: _package_version(name) for name in RECORDED_PACKAGES})
    return {
        "versions": versions,
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "device": device_info(device),
        "caches": cache_directories(),
    }


# --------------------------------------------------------------------------- chunked estimation


#: LID estimators ``flipd estimate --method`` runs: FLIPD and the baselines of :mod:`flipd.baselines`.
METHODS: tuple[str, ...] = ("flipd", "nb", "fpregress", "lpca", "mle", "ess", "twonn")
#: Methods that need a diffusion model.
MODEL_METHODS: tuple[str, ...] = ("flipd", "nb", "fpregress")


@dataclass(frozen=True)
class EstimateSettings:
    """The settings of an estimation run; a run can only be resumed with equal settings.

    Attributes:
        method: "flipd" or a baseline of :mod:`flipd.baselines` (see :data:`METHODS`).
        t0: noise level as a time of the model's schedule, or "auto" for the knee rule.
        sigma: noise level as the noise standard deviation (instead of t0).
        delta: noise level as log(sigma/psi) (instead of t0).
        trace: "auto", "exact", "hutchinson" or "gaussian" (flipd, fpregress).
        n_probes: Hutchinson probes per point (flipd, fpregress).
        seed: seed of the probes or noisy copies (and of the choice of points).
        batch_size: points per forward pass.
        chunk_size: points per saved chunk.
        mode: differentiation mode, "auto", "reverse" or "forward" (flipd).
        n_neighbors: neighbourhood size of the classical estimators (None: their default).
    """

    method: str = "flipd"
    t0: float | str | None = None
    sigma: float | None = None
    delta: float | None = None
    trace: str = "auto"
    n_probes: int = 1
    seed: int = 0
    batch_size: int = 256
    chunk_size: int = 1024
    mode: str = "auto"
    n_neighbors: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; use one of {', '.join(METHODS)}.")
        given = [name for name in ("t0", "sigma", "delta") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"Give the noise level once (t0, sigma or delta); got {', '.join(given)}.")
        if self.method == "flipd" and not given:
            raise ValueError("FLIPD needs a noise level: give t0, sigma or delta.")
        if given and self.method not in ("flipd", "nb"):
            raise ValueError(f"The {self.method} method takes no noise level; drop --{given[0]}.")
        if isinstance(self.t0, str) and (self.t0 != "auto" or self.method != "flipd"):
            raise ValueError(f"t0 must be a number, or 'auto' with the flipd method; got {self.t0!r}.")
        if self.n_neighbors is not None and self.method in MODEL_METHODS:
            raise ValueError(f"n_neighbors applies to the classical methods, not {self.method}.")
        for name in ("n_probes", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")

    def noise_level(self) -> dict[str, Any]:
        """The noise level as a keyword argument (``{"t0": ...}``, ...), or {} when none is set."""
        return {name: getattr(self, name) for name in ("t0", "sigma", "delta") if getattr(self, name) is not None}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    """

    columns: dict[str, np.ndarray]
    trace: str
    n_probes: int
    mode: str
    chunk_seconds: list[float] = field(default_factory=list)
    resumed_chunks: int = 0
    n_chunks: int = 0


def chunk_seed(seed: int, chunk_index: int) -> int:
    """Seed of the probes of one chunk: a fixed function of the run's seed and the chunk's index."""
    return (seed * 1_000_003 + chunk_index * 7919 + 17) % 2**62


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


def _manifest(identity: Mapping[str, Any], settings: EstimateSettings, n_points: int) -> dict[str, Any]:
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
    settings: EstimateSettings,
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
    except (OSError, KeyError, ValueError) as error:
        raise RunConflict(
            f"Cannot read the finished chunk {str(path)!r} ({error}); delete it and resume to recompute it."
        ) from error
    return arrays, info


#: ``estimator(x_chunk, chunk_index, progress) -> (arrays, info)``: per-point arrays named by
#: :data:`CHUNK_COLUMNS` and JSON-serialisable facts (trace, n_probes, mode) for one chunk.
ChunkEstimator = Callable[[torch.Tensor, int, Callable[[int], None] | None], tuple[dict[str, np.ndarray], dict[str, Any]]]


def flipd_chunks(model: Callable, settings: EstimateSettings, *, schedule: Any = None, prediction: str = "epsilon") -> ChunkEstimator:
    """A :data:`ChunkEstimator` running :func:`flipd.estimate` with ``settings``.

    Chunk ``i`` uses the probe seed :func:`chunk_seed` (settings.seed, i), so its result does not
    depend on which other chunks ran in the same process.
    """
    from .estimator import estimate

    def run(x: torch.Tensor, index: int, progress: Callable[[int], None] | None):
        result = estimate(
            model, x, **settings.noise_level(), schedule=schedule, prediction=prediction,
            trace=settings.trace, n_probes=settings.n_probes, seed=chunk_seed(settings.seed, index),
            batch_size=settings.batch_size, mode=settings.mode, progress=progress,
        )
        arrays = {
            "lid": result.lid.detach().cpu().to(torch.float64).numpy(),
            "t0": result.t0.cpu().numpy(),
            "sigma": result.sigma.cpu().numpy(),
            "delta": result.delta.cpu().numpy(),
            "stderr": result.stderr.cpu().to(torch.float64).numpy(),
        }
        return arrays, {"trace": result.trace, "n_probes": result.n_probes, "mode": result.mode}

    return run


def baseline_chunks(
    settings: EstimateSettings, *, model: Callable | None = None, schedule: Any = None, prediction: str = "epsilon",
) -> ChunkEstimator:
    """A :data:`ChunkEstimator` running the baseline ``settings.method`` of :mod:`flipd.baselines`.

    The noise level columns hold the level the normal bundle used (NaN for the other
    baselines, which use several or none); stderr is NaN. Classical estimators find each
    point's neighbours among the points of its chunk: give them one chunk for all points.
    """
    from .baselines import BASELINES

    baseline = BASELINES[settings.method]
    schedule_used = schedule
    if schedule_used is None:
        from .schedules import VP

        schedule_used = VP()

    def run(x: torch.Tensor, index: int, progress: Callable[[int], None] | None):
        seed = chunk_seed(settings.seed, index)
        overrides: dict[str, Any] = {}
        if settings.method == "nb":
            noise = settings.noise_level()
            overrides = {"seed": seed, **({"t": noise["t0"]} if "t0" in noise else noise)}
        elif settings.method == "fpregress":
            overrides = {"seed": seed, "trace": settings.trace, "n_probes": settings.n_probes, "batch_size": settings.batch_size}
        elif settings.n_neighbors is not None:
            overrides = {"n_neighbors": settings.n_neighbors}
        with torch.no_grad():
            lid = np.asarray(baseline(x, model=model, schedule=schedule, prediction=prediction, **overrides), dtype=np.float64)
        n = lid.shape[0]
        levels = {name: np.full(n, np.nan) for name in ("t0", "sigma", "delta")}
        if settings.method == "nb":
            from .baselines import NB_REFERENCE_DELTA

            noise = settings.noise_level() or {"delta": NB_REFERENCE_DELTA}
            (name, value), = noise.items()
            times = {"t0": lambda v: torch.as_tensor(v, dtype=torch.float64), "sigma": schedule_used.t_from_sigma,
                     "delta": schedule_used.t_from_delta}[name](value)
            levels = {"t0": np.full(n, float(times)), "sigma": np.full(n, float(schedule_used.sigma(times))),
                      "delta": np.full(n, float(schedule_used.delta(times)))}
        if progress is not None:
            progress(n)
        trace = settings.trace if settings.method == "fpregress" else "none"
        probes = settings.n_probes if settings.method == "fpregress" else 0
        return {"lid": lid, **levels, "stderr": np.full(n, np.nan)}, {"trace": trace, "n_probes": probes, "mode": "none"}

    return run


def estimate_in_chunks(
    estimator: ChunkEstimator,
    x: torch.Tensor,
    settings: EstimateSettings,
    directory: str | os.PathLike,
    *,
    identity: Mapping[str, Any],
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    on_chunk_done: Callable[[int, int], None] | None = None,
) -> ChunkedEstimate:
    """Run ``estimator`` on ``x`` chunk by chunk, saving each finished chunk.

    Args:
        estimator: a :data:`ChunkEstimator`, e.g. :func:`flipd_chunks` or :func:`baseline_chunks`.
        x: points [N, ...] as the estimator takes them.
        settings: the settings (their ``chunk_size`` splits the points; all are recorded).
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
            arrays, info = estimator(x[index * chunk : min(n, (index + 1) * chunk)], index, progress)
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


