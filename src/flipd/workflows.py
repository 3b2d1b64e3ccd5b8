"""End-to-end workflows behind the command line: training on named data, estimating LID into
result tables, FLIPD curves with knees, and the demo.

Each function takes already-resolved objects (a :class:`~flipd.sources.PointSet`, a
:class:`~flipd.sources.LoadedModel`, settings) and returns results as arrays or dicts; the
command line only parses options, shows progress and prints.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .knee import REFERENCE_SCHEDULE, REFERENCE_WINDOW, knee
from .runs import ChunkedEstimate, EstimateSettings
from .schedules import VP, Schedule
from .sources import LoadedModel, PointSet

__all__ = [
    "CurveResult",
    "DEFAULT_REFERENCE_T0",
    "GroupSummary",
    "compute_curves",
    "curve_table_columns",
    "curve_times",
    "default_noise_level",
    "estimate_table_columns",
    "summarize_by_component",
]

#: Default noise level: t0 = 0.05 of the reference VP schedule (the FLIPD paper's setting for
#: synthetic data), carried to other schedules through delta = log(sigma/psi).
DEFAULT_REFERENCE_T0 = 0.05
#: Default FLIPD-curve grid: reference VP times linspace(0, 1, 50) without t = 0.
REFERENCE_CURVE_POINTS = 50


def _is_reference_vp(schedule: Schedule) -> bool:
    return isinstance(schedule, VP) and math.isclose(schedule.delta(0.3).item(), REFERENCE_SCHEDULE.delta(0.3).item())


def default_noise_level(schedule: Schedule) -> dict[str, float]:
    """``{"t0": 0.05}`` for the reference VP schedule, else the same smoothing as ``{"delta": ...}``."""
    if _is_reference_vp(schedule):
        return {"t0": DEFAULT_REFERENCE_T0}
    return {"delta": float(REFERENCE_SCHEDULE.delta(DEFAULT_REFERENCE_T0))}


def check_noise_level(schedule: Schedule, noise: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the option (--t0, --sigma, --delta) if ``schedule`` cannot
    reach the noise level ``noise`` (one of ``{"t0": ...}``, ``{"sigma": ...}``, ``{"delta": ...}``)."""
    (name, value), = noise.items()
    if name == "t0" and value == "auto":
        return
    try:
        if name == "t0":
            schedule.check_t(float(value))
        elif name == "sigma":
            if not value > 0:
                raise ValueError("the noise standard deviation must be positive")
            schedule.check_t(schedule.t_from_sigma(float(value)))
        else:
            schedule.check_t(schedule.t_from_delta(float(value)))
    except ValueError:
        bracket = "[" if schedule.includes_t_min else "("
        raise ValueError(
            f"--{name} {value:g} is not a noise level of the model's schedule {schedule!r}: its times run over "
            f"{bracket}{schedule.t_min:g}, {schedule.t_max:g}], reaching sigma {float(schedule.sigma(schedule.t_max)):.3g} "
            f"and delta {_delta_range(schedule)[1]:.3g} at the end."
        ) from None


def _delta_range(schedule: Schedule) -> tuple[float, float]:
    low = schedule.t_min if schedule.includes_t_min else schedule.t_min + 1e-9 * max(1.0, schedule.t_max - schedule.t_min)
    return float(schedule.delta(low)), float(schedule.delta(schedule.t_max))


def curve_times(
    schedule: Schedule,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    """Increasing times of ``schedule`` at which to evaluate FLIPD curves, float64 [T].

    With no bounds given: the reference grid (VP times ``linspace(0, 1, 50)`` without 0,
    covering the knee rule's window) carried to ``schedule`` through delta, keeping the
    levels the schedule reaches. With bounds: ``steps`` (default 25) times evenly spaced in
    ``[t_min, t_max]`` of ``schedule``; a missing bound is taken from the reference grid.
    """
    if steps is not None and steps < 3:
        raise ValueError(f"A FLIPD curve needs at least 3 noise levels; got --steps {steps}.")
    low_delta, high_delta = _delta_range(schedule)

    def reference_to_schedule(reference_t: torch.Tensor) -> torch.Tensor:
        deltas = REFERENCE_SCHEDULE.delta(reference_t)
        deltas = deltas[(deltas > low_delta) & (deltas <= high_delta)]
        return schedule.t_from_delta(deltas)

    reference = torch.linspace(0, 1, REFERENCE_CURVE_POINTS, dtype=torch.float64)[1:]
    if t_min is None and t_max is None and steps is None:
        times = reference_to_schedule(reference)
    else:
        default = reference_to_schedule(reference)
        low = float(default[0]) if t_min is None else float(t_min)
        high = float(default[-1]) if t_max is None else float(t_max)
        if not low < high:
            raise ValueError(f"The curve's range is empty: t-min {low:g} must be below t-max {high:g}.")
        times = torch.linspace(low, high, steps or 25, dtype=torch.float64)
        schedule.check_t(times, "curve time")
    if times.numel() < 3:
        raise ValueError(f"{schedule!r} reaches too few of the reference noise levels for a curve; give --t-min and --t-max.")
    return times


def knee_window(schedule: Schedule) -> tuple[float, float] | None:
    """The knee rule's reference window (VP times 0.05 to 0.5) in ``schedule``'s time units."""
    try:
        low, high = (float(schedule.t_from_delta(REFERENCE_SCHEDULE.delta(t))) for t in REFERENCE_WINDOW)
    except ValueError:
        return None
    return low, high


def resolved_trace_settings(trace: str, dim: int, n_probes: int) -> tuple[str, int]:
    """The trace estimator and probe count :func:`flipd.estimate` uses for ``trace`` at dimension ``dim``."""
    from .estimator import AUTO_EXACT_MAX_DIM

    if trace == "auto":
        trace = "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    if trace == "rademacher":
        trace = "hutchinson"
    return trace, (dim if trace == "exact" else n_probes)


@dataclass
class CurveResult:
    """FLIPD curves of N points at T noise levels, with the knee chosen on each.

    Attributes:
        times, sigma, delta: the T noise levels (schedule time, noise std, log sigma/psi).
        curves: FLIPD estimates [N, T].
        knee_t0, knee_lid: [N] noise level and FLIPD at each point's knee (NaN t0 where none
            was found; the LID then falls back to the ambient dimension).
        knee_found: [N] bool.
        window: the time window searched for knees (None: the whole grid).
        trace, n_probes: the trace estimator used.
    """

    times: np.ndarray
    sigma: np.ndarray
    delta: np.ndarray
    curves: np.ndarray
    knee_t0: np.ndarray
    knee_lid: np.ndarray
    knee_found: np.ndarray
    window: tuple[float, float] | None
    trace: str
    n_probes: int


def compute_curves(
    model: LoadedModel,
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    trace: str = "auto",
    n_probes: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> CurveResult:
    """FLIPD curves of the points ``x`` (in the model's coordinates) and their knees.

    ``progress`` is called with the number of points done after every batch of every noise
    level (N·T in all).
    """
    from .estimator import flipd_curve

    dim = int(x[0].numel())
    resolved_trace, resolved_probes = resolved_trace_settings(trace, dim, n_probes)
    with torch.no_grad():
        curves = flipd_curve(
            model.model, x, times, schedule=model.schedule, prediction=model.prediction,
            trace=trace, n_probes=n_probes, seed=seed, batch_size=batch_size, progress=progress,
        ).detach().cpu().to(torch.float64)
    window = knee_window(model.schedule)
    inside = int(((times > window[0]) & (times < window[1])).sum()) if window else 0
    if inside < 3:
        window = None
    found = knee(curves, times, ambient_dim=dim, window=window)
    return CurveResult(
        times=times.numpy(), sigma=model.schedule.sigma(times).numpy(), delta=model.schedule.delta(times).numpy(),
        curves=curves.numpy(), knee_t0=found.t0.numpy(), knee_lid=found.lid.numpy(),
        knee_found=found.found.numpy(), window=window, trace=resolved_trace, n_probes=resolved_probes,
    )


# --------------------------------------------------------------------------- tables


def _known_columns(points: PointSet) -> dict[str, Any]:
    """What is known about each point besides its estimate: ground truth, names, labels, sizes."""
    columns: dict[str, Any] = {}
    if points.lid_true is not None:
        columns["lid_true"] = points.lid_true
    if points.component is not None:
        columns["component"] = points.component
    if points.labels is not None:
        columns["label"] = points.labels
    if points.png_bytes is not None:
        columns["png_bytes"] = points.png_bytes
    return columns


def estimate_table_columns(points: PointSet, result: ChunkedEstimate, method: str = "flipd") -> dict[str, Any]:
    """One row per point: index, [name], lid, noise level (t0, sigma, delta), method, trace,
    n_probes, stderr (NaN where there is none: exact traces and baselines), and ground truth,
    label, PNG size when known."""
    n = points.n
    columns: dict[str, Any] = {"index": points.index}
    if points.names is not None:
        columns["name"] = list(points.names)
    columns.update({
        "lid": result.columns["lid"],
        "t0": result.columns["t0"],
        "sigma": result.columns["sigma"],
        "delta": result.columns["delta"],
        "method": [method] * n,
        "trace": [result.trace] * n,
        "n_probes": np.full(n, result.n_probes, dtype=np.int64),
        "stderr": np.where(result.trace == "exact", np.nan, result.columns["stderr"]),
    })
    columns.update(_known_columns(points))
    return columns


def curve_table_columns(points: PointSet, curves: CurveResult) -> dict[str, Any]:
    """Long format, one row per (point, noise level): index, t0, sigma, delta, lid, knee (True
    on the row of the point's chosen knee), and ground truth when known."""
    n, t = curves.curves.shape
    knee_rows = np.zeros((n, t), dtype=bool)
    for i in range(n):
        if curves.knee_found[i]:
            knee_rows[i, int(np.argmin(np.abs(curves.times - curves.knee_t0[i])))] = True
    columns: dict[str, Any] = {
        "index": np.repeat(points.index, t),
        "t0": np.tile(curves.times, n),
        "sigma": np.tile(curves.sigma, n),
        "delta": np.tile(curves.delta, n),
        "lid": curves.curves.reshape(-1),
        "knee": knee_rows.reshape(-1),
    }
    if points.names is not None:
        columns["name"] = [name for name in points.names for _ in range(t)]
    for name, values in _known_columns(points).items():
        columns[name] = np.repeat(np.asarray(values), t)
    return columns


@dataclass
class GroupSummary:
    """Estimates of one ground-truth component: count, true LID, mean and spread, MAE."""

    component: int | None
    n: int
    lid_true: float
    lid_mean: float
    lid_std: float
    mae: float


def summarize_by_component(lids: np.ndarray, lid_true: np.ndarray, component: np.ndarray | None = None) -> tuple[list[GroupSummary], float]:
    """Per-component summaries (grouped by true LID when components are unknown) and the overall MAE."""
    from .metrics import mae, mae_per_component

    lids = np.asarray(lids, dtype=np.float64)
    lid_true = np.asarray(lid_true, dtype=np.float64)
    groups = np.asarray(component, dtype=np.int64) if component is not None else np.unique(lid_true, return_inverse=True)[1]
    per_group = mae_per_component(lid_true, lids, groups)
    summaries = []
    for value, group_mae in per_group.items():
        chosen = groups == value
        estimates = lids[chosen]
        summaries.append(GroupSummary(
            component=int(value) if component is not None else None, n=int(chosen.sum()),
            lid_true=float(np.median(lid_true[chosen])), lid_mean=float(np.mean(estimates)),
            lid_std=float(np.std(estimates, ddof=1)) if chosen.sum() > 1 else 0.0, mae=group_mae,
        ))
    return summaries, mae(lid_true, lids)


def summary_record(lids: np.ndarray, points: PointSet) -> dict[str, Any]:
    """Numbers for the run metadata: mean LID, and MAE per component when the truth is known."""
    lids = np.asarray(lids, dtype=np.float64)
    record: dict[str, Any] = {"n": int(lids.size), "lid_mean": float(np.nanmean(lids)), "lid_median": float(np.nanmedian(lids))}
    if points.lid_true is not None:
        groups, mae = summarize_by_component(lids, points.lid_true, points.component)
        record["mae"] = mae
        record["per_component"] = [group.__dict__ for group in groups]
    return record


# --------------------------------------------------------------------------- training


def _replace_directory(source: Path, target: Path) -> None:
    """Move the finished directory ``source`` onto ``target``, replacing what was there."""
    if not target.exists():
        os.replace(source, target)
        return
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, backup)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


#: Networks ``flipd train`` can build: "mlp" for vectors (and flattened images), "unet" for images.
NETWORK_CHOICES: tuple[str, ...] = ("mlp", "unet")


def _training_input(points: PointSet, network: str, widths: tuple[int, ...], channels: tuple[int, ...]) -> tuple[torch.Tensor, Any]:
    """The training tensor and the network spec for ``network`` on ``points``."""
    from .networks import MLPUNetConfig, NetworkSpec

    if network == "mlp":
        x = points.x.reshape(points.n, -1)
        return x, NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=int(x.shape[1]), widths=tuple(widths)).to_json())
    if network == "unet":
        if points.kind != "images":
            raise ValueError(f"The unet network is for images, but {points.spec!r} holds vectors; use the mlp network.")
        from .unet import UNET_KIND, UNetConfig

        config = UNetConfig(image_shape=points.point_shape, block_out_channels=tuple(channels))
        return points.x, NetworkSpec(UNET_KIND, config.to_json())
    raise ValueError(f"Unknown network {network!r}; use one of {', '.join(NETWORK_CHOICES)}.")


def train_model(
    points: PointSet,
    out: str | os.PathLike,
    *,
    steps: int = 4000,
    batch_size: int = 512,
    lr: float = 2e-3,
    widths: tuple[int, ...] = (256, 256, 256),
    network: str = "mlp",
    channels: tuple[int, ...] = (16, 32, 64),
    standardize: str = "per_coordinate",
    max_seconds: float | None = None,
    low_t_fraction: float = 0.5,
    low_t_max: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Any:
    """Train a diffusion model on ``points`` and save it as a flipd checkpoint in ``out``.

    ``network`` "mlp" is an MLP U-net (:class:`flipd.networks.MLPUNet`) with hidden
    ``widths``, for vectors and for images flattened to vectors; "unet" is a convolutional
    U-net (:class:`flipd.unet.ImageUNet`) with ``channels`` per resolution level, for images.
    ``standardize`` is how the data are rescaled before training: "per_coordinate",
    "scalar" (one scale for all coordinates: keeps the data's shape) or "none". The checkpoint
    is written into a temporary directory next to ``out`` and moved into place when complete,
    so ``out`` never holds a half-written model. The data's name, size and fingerprint are
    recorded in the checkpoint's metadata under "data".

    ``low_t_fraction`` of every batch draws its times from U(t_min, ``low_t_max``) rather than
    U(t_min, 1): FLIPD reads the score at small t0 (0.05 by default), where uniform times spend
    few steps (:class:`flipd.train.TrainConfig`). Pass 0 for the reference uniform sampling.

    Returns:
        The trained :class:`flipd.train.DiffusionModel`.
    """
    from .runs import current_umask, fingerprint_array
    from .train import TrainConfig, train_diffusion

    x, network_spec = _training_input(points, network, widths, channels)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, max_seconds=max_seconds, standardize=standardize,
        low_t_fraction=low_t_fraction, low_t_max=low_t_max,
        warmup_steps=min(500, max(1, steps // 10)), eval_every=max(1, min(500, steps // 4)),
    )
    model = train_diffusion(x, network=network_spec, config=config, progress=progress, device=device)
    model.metadata["data"] = {
        "spec": points.spec, "n_points": points.n, "point_shape": list(points.point_shape),
        "fingerprint": fingerprint_array(x), "description": points.description,
    }
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save(staging)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes a private directory
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model


# --------------------------------------------------------------------------- demo

#: Where ``flipd demo`` writes models, tables and figures unless told otherwise.
DEMO_DEFAULT_OUT = "runs/demo"
#: The demo's data sets: low-dimensional, with several components of known LID each.
DEMO_DATASETS: tuple[str, ...] = ("lollipop", "doughnut")
#: Points drawn for the demo's FLIPD-curve figure, per data set.
DEMO_CURVE_POINTS = 60
#: The demo's network and batch: small enough to train in about a minute per data set on 2 cores.
DEMO_WIDTHS = (128, 128, 128)
DEMO_BATCH_SIZE = 256
#: One scale for all coordinates keeps the geometry (a round torus stays round).
DEMO_STANDARDIZE = "scalar"

ProgressFactory = Callable[[str, int], Any]


@dataclass
class DemoEntry:
    """The demo's outcome on one data set."""

    name: str
    setting: str
    groups: list[GroupSummary]
    mae: float
    table: Path
    figures: list[Path]
    train_seconds: float | None
    estimate_seconds: float


@dataclass
class DemoReport:
    """The demo's outcome on every data set."""

    datasets: list[DemoEntry]
    directory: Path


def _null_progress(description: str, total: int):
    import contextlib

    return contextlib.nullcontext(lambda _: None)


def run_demo(
    out: str | os.PathLike,
    *,
    steps: int = 4000,
    n_train: int = 20_000,
    n_eval: int = 2000,
    seed: int = 0,
    retrain: bool = False,
    progress: bool = True,
    progress_bar: ProgressFactory | None = None,
    announce: Callable[[str], None] = lambda message: None,
    datasets: tuple[str, ...] = DEMO_DATASETS,
) -> DemoReport:
    """Train a small model per demo data set, estimate LID of fresh points, write tables and figures.

    Layout of ``out``: ``models/<name>/`` (checkpoints, reused unless ``retrain``),
    ``<name>_lid.parquet`` and ``.json`` (per-point results and run metadata), and
    ``plots/`` (LID histograms per component, scatter coloured by LID, FLIPD curves with knees).

    Args:
        out: output folder.
        steps, n_train: training steps and points per model.
        n_eval: points whose LID is estimated (drawn with another seed than the training points).
        seed: seed of data, training and probes.
        retrain: train even when ``out/models/<name>`` holds a checkpoint.
        progress: show training progress bars.
        progress_bar: ``progress_bar(description, total)`` returns a context manager yielding
            ``advance(k)``, for estimation progress.
        announce: receives one-line messages about what happens.
    """
    from . import plots
    from .runs import estimate_in_chunks, fingerprint_array, flipd_chunks, remove_run_directory, write_json, write_table
    from .sources import load_model, load_points, with_subset

    directory = Path(out)
    figures_directory = directory / "plots"
    make_bar = progress_bar or _null_progress
    entries = []
    for name in datasets:
        model_directory = directory / "models" / name
        train_seconds = None
        if retrain or not (model_directory / "flipd_model.json").is_file():
            announce(f"[{name}] training a diffusion model on {n_train} points ({steps} steps)")
            began = time.perf_counter()
            train_model(
                load_points(name, n_train, seed), model_directory, steps=steps, batch_size=DEMO_BATCH_SIZE,
                widths=DEMO_WIDTHS, standardize=DEMO_STANDARDIZE, seed=seed, progress=progress,
            )
            train_seconds = time.perf_counter() - began
        else:
            announce(f"[{name}] reusing the model in {model_directory} (--retrain to train again)")
        loaded = load_model(model_directory, device="cpu")
        points = load_points(name, n_eval, seed + 1)
        x = loaded.prepare(points)
        noise = default_noise_level(loaded.schedule)
        settings = EstimateSettings(**noise, trace="exact", seed=seed, batch_size=512, chunk_size=max(1, points.n))
        table_path = directory / f"{name}_lid.parquet"
        run_directory = table_path.with_name(table_path.name + ".chunks")
        remove_run_directory(run_directory)
        began = time.perf_counter()
        with make_bar(f"FLIPD {name}", points.n) as advance:
            result = estimate_in_chunks(
                flipd_chunks(loaded.model, settings, schedule=loaded.schedule, prediction=loaded.prediction), x, settings,
                run_directory, progress=advance,
                identity={"data": {"spec": name, "fingerprint": fingerprint_array(x)}, "model": {"fingerprint": loaded.fingerprint}},
            )
        estimate_seconds = time.perf_counter() - began
        columns = estimate_table_columns(points, result)
        write_table(table_path, columns)
        remove_run_directory(run_directory)
        groups, mae_value = summarize_by_component(columns["lid"], points.lid_true, points.component)

        figures = plots.plot_estimates(
            figures_directory, lids=columns["lid"], x=points.x.numpy(), lid_true=points.lid_true,
            component=points.component, prefix=f"{name}_", title=name,
        )
        subset = with_subset(points, np.linspace(0, points.n - 1, min(points.n, DEMO_CURVE_POINTS)).round().astype(int))
        with make_bar(f"curves {name}", subset.n * len(curve_times(loaded.schedule))) as advance:
            curves = compute_curves(loaded, loaded.prepare(subset), curve_times(loaded.schedule), seed=seed, progress=advance)
        figures.append(plots.plot_curves(
            curves.times, curves.curves, figures_directory / f"{name}_curves.png", knee_times=curves.knee_t0,
            knee_lids=curves.knee_lid, ambient_dim=points.ambient_dim, true_lids=subset.lid_true,
            title=f"FLIPD curves on {name}",
        ))
        setting = ", ".join(f"{key} = {value:g}" for key, value in noise.items()) + ", exact trace"
        write_json(table_path.with_suffix(".json"), run_record(
            "demo", points=points, data_seed=seed + 1, model=loaded, settings=settings.to_json(),
            training={key: loaded.metadata.get(key) for key in ("steps_run", "final_val_loss", "seconds", "parameters")},
            summary=summary_record(columns["lid"], points),
            timings={"train_s": train_seconds, "estimate_s": estimate_seconds},
            outputs={"table": str(table_path), "plots": [str(f) for f in figures]},
        ))
        entries.append(DemoEntry(name, setting, groups, mae_value, table_path, figures, train_seconds, estimate_seconds))
    return DemoReport(entries, directory)


# --------------------------------------------------------------------------- run records


def run_record(
    command: str,
    *,
    points: PointSet,
    data_seed: int,
    model: LoadedModel | None,
    settings: dict[str, Any],
    timings: dict[str, Any],
    outputs: dict[str, Any],
    device: Any = "cpu",
    **extra: Any,
) -> dict[str, Any]:
    """The metadata written beside a result table: what ran, on what, how, how long, where.

    Holds the command and its arguments, the data (name, size, seed, fingerprint of the points
    as the model saw them), the model (path, kind, fingerprint, schedule), the settings, the
    timings, the outputs, ``extra`` entries, and :func:`flipd.runs.environment_info` (versions,
    threads, device, machine).
    """
    import sys

    from .runs import environment_info, fingerprint_array

    record: dict[str, Any] = {
        "command": command,
        "argv": list(sys.argv),
        "data": {
            "spec": points.spec, "n_points": points.n, "seed": data_seed, "point_shape": list(points.point_shape),
            "description": points.description, "fingerprint": fingerprint_array(points.x),
        },
        "model": None if model is None else {
            "path": str(Path(model.path).resolve()), "kind": model.kind, "fingerprint": model.fingerprint,
            "description": model.description, "schedule": repr(model.schedule), "prediction": model.prediction,
        },
        "settings": settings,
        **extra,
        "timings": timings,
        "outputs": outputs,
    }
    record.update(environment_info(device))
    return record


# --------------------------------------------------------------------------- estimation plans


@dataclass
class EstimatePlan:
    """What an estimation run will do: its settings, the chunk estimator, and its input."""

    settings: Any
    estimator: Callable
    x: torch.Tensor
    noise: dict[str, Any]


def plan_estimate(
    method: str,
    model: LoadedModel | None,
    points: PointSet,
    *,
    t0: float | str | None = None,
    sigma: float | None = None,
    delta: float | None = None,
    trace: str = "auto",
    n_probes: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    chunk_size: int = 1024,
    n_neighbors: int | None = None,
) -> EstimatePlan:
    """Resolve the settings of an estimation with ``method`` and build its chunk estimator.

    FLIPD without a noise level gets :func:`default_noise_level`; a noise level the model's
    schedule cannot reach is refused before anything runs. Classical estimators need no model,
    run on the points flattened to vectors, and take all points as one chunk (each point's
    neighbours are searched among all points).

    Raises:
        ValueError: the method needs a model and none was given, or the settings do not fit.
    """
    from .runs import MODEL_METHODS, EstimateSettings, baseline_chunks, flipd_chunks

    noise = {name: value for name, value in (("t0", t0), ("sigma", sigma), ("delta", delta)) if value is not None}
    if method in MODEL_METHODS:
        if model is None:
            raise ValueError(f"The {method} method needs a diffusion model: pass --model DIR (a checkpoint from flipd train).")
        if method == "flipd" and not noise:
            noise = default_noise_level(model.schedule)
        if noise:
            check_noise_level(model.schedule, noise)
        x = model.prepare(points)
    else:
        x = points.x.reshape(points.n, -1)
        chunk_size = max(1, points.n)
    settings = EstimateSettings(
        method=method, **noise, trace=trace, n_probes=n_probes, seed=seed, batch_size=batch_size,
        chunk_size=chunk_size, n_neighbors=n_neighbors,
    )
    if method == "flipd":
        estimator = flipd_chunks(model.model, settings, schedule=model.schedule, prediction=model.prediction)
    elif method in MODEL_METHODS:
        estimator = baseline_chunks(settings, model=model.model, schedule=model.schedule, prediction=model.prediction)
    else:
        estimator = baseline_chunks(settings)
    return EstimatePlan(settings=settings, estimator=estimator, x=x, noise=noise)
