"""End-to-end workflows behind the command line: training on named data, estimating LID into
result tables, FLIPD curves with knees, and the demo.

Each function takes already-resolved objects (a :class:`~flipd.sources.PointSet`, a
:class:`~flipd.sources.LoadedModel`, settings) and returns results as arrays or dicts; the
command line only parses options, shows progress and prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
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
    n_probes, stderr (NaN where the trace gives none), and ground truth, label, PNG size when known."""
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
    """Per-component summaries (by true LID when components are unknown) and the overall MAE."""
    lids = np.asarray(lids, dtype=np.float64)
    lid_true = np.asarray(lid_true, dtype=np.float64)
    groups = np.asarray(component) if component is not None else lid_true
    summaries = []
    for value in sorted(set(groups.tolist())):
        chosen = groups == value
        estimates, truth = lids[chosen], lid_true[chosen]
        summaries.append(GroupSummary(
            component=int(value) if component is not None else None, n=int(chosen.sum()),
            lid_true=float(np.median(truth)), lid_mean=float(np.mean(estimates)),
            lid_std=float(np.std(estimates, ddof=1)) if chosen.sum() > 1 else 0.0,
            mae=float(np.mean(np.abs(estimates - truth))),
        ))
    return summaries, float(np.mean(np.abs(lids - lid_true)))


def summary_record(lids: np.ndarray, points: PointSet) -> dict[str, Any]:
    """Numbers for the run metadata: mean LID, and MAE per component when the truth is known."""
    lids = np.asarray(lids, dtype=np.float64)
    record: dict[str, Any] = {"n": int(lids.size), "lid_mean": float(np.nanmean(lids)), "lid_median": float(np.nanmedian(lids))}
    if points.lid_true is not None:
        groups, mae = summarize_by_component(lids, points.lid_true, points.component)
        record["mae"] = mae
        record["per_component"] = [group.__dict__ for group in groups]
    return record
