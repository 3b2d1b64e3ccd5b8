"""What a job records about its run: per-component summaries and the metadata beside a table."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.sources import PointSet
from ..estimator import out_of_range
from ..metrics import concordance_index, mae, mae_per_component, spearman
from ..runs.environment import environment_info

__all__ = [
    "NON_FINITE_SHOWN", "GroupSummary", "known_columns", "non_finite_output_error", "non_finite_warning",
    "out_of_range_warning", "run_record", "summarize_by_component", "summary_record",
]


def known_columns(points: PointSet) -> dict[str, Any]:
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
    for name, values in (points.passthrough or {}).items():  # the user's own columns, unchanged
        columns[name if name not in RESULT_COLUMNS and name not in columns else f"input_{name}"] = values
    return columns


#: Columns the result tables write themselves; a user's column of the same name is kept as input_<name>.
RESULT_COLUMNS = frozenset({
    "index", "name", "lid", "t0", "sigma", "delta", "method", "trace", "n_probes", "ambient_dim", "stderr",
    "knee_found", "plateau_found", "flatness", "knee", "plateau", "reliable", "lid_true", "component", "label",
    "png_bytes",
})


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


#: Indices of non-finite estimates listed in the metadata and in the warning (the count is total).
NON_FINITE_SHOWN = 100


def non_finite_warning(lids: np.ndarray, points: PointSet) -> str | None:
    """A one-line warning naming the points whose LID estimate is NaN or infinite, or None."""
    bad = ~np.isfinite(np.asarray(lids, dtype=np.float64))
    if not bad.any():
        return None
    return (
        f"{int(bad.sum())} of {bad.size} LID estimates are not finite (NaN or inf), at index "
        f"{_shown(points.index[bad])}; they are kept in the table as they are and counted in "
        "the metadata (summary.n_non_finite). Check those points (duplicates, outliers) or the noise level."
    )


def _shown(indices: np.ndarray, limit: int = 10) -> str:
    return ", ".join(map(str, indices[:limit].tolist())) + (", ..." if indices.size > limit else "")


def out_of_range_warning(lids: np.ndarray, stderr: np.ndarray | None, points: PointSet) -> str | None:
    """A one-line warning naming the points whose finite LID estimate lies outside [0, D] by
    more than its standard error (:func:`flipd.estimator.out_of_range`), or None."""
    outside = out_of_range(lids, stderr, points.ambient_dim)
    if not outside.any():
        return None
    return (
        f"{int(outside.sum())} of {outside.size} LID estimates lie outside [0, D = {points.ambient_dim}] by more "
        f"than their standard error, at index {_shown(points.index[outside])}; they are kept in the table as they "
        "are and counted in the metadata (summary.n_out_of_range). Check those points (outliers, duplicates), "
        "the model and the noise level; estimates without a standard error (exact trace, one probe, "
        "baselines) are held to [0, D] exactly."
    )


def scale_not_found_warning(found: np.ndarray, column: str, points: PointSet, rule: str, consequence: str) -> str | None:
    """A one-line warning naming the points for which the noise-level ``rule`` found no scale
    (``found`` [N] bool, the table's ``column``) and what their LID is (``consequence``), or None."""
    missing = ~np.asarray(found, dtype=bool)
    if not missing.any():
        return None
    return (
        f"the {rule} rule found no scale for {int(missing.sum())} of {missing.size} points, at index "
        f"{_shown(points.index[missing])}; {consequence}. They are kept in the table (its {column} column is "
        "False there) and counted in the metadata (summary.n_scale_not_found); flipd curve --plot shows their curves."
    )


def non_finite_output_error(positions: list[int], points: PointSet, time: float | None) -> ValueError:
    """The error for a model that returned NaN or inf for the points at ``positions`` (0..N-1),
    named by the table's index column."""
    index = points.index[np.asarray(positions, dtype=np.int64)]
    at = f" at t = {time:.4g}" if time is not None else ""
    return ValueError(
        f"The model returned non-finite values (NaN or inf){at} for {index.size} of {points.n} points of "
        f"{points.spec!r}, at index {_shown(index)}; check those points (far from the training data?), the "
        "model's weights, and that the noise level is inside the range it was trained on."
    )


def summary_record(
    lids: np.ndarray, points: PointSet, stderr: np.ndarray | None = None, scale_found: np.ndarray | None = None,
) -> dict[str, Any]:
    """Numbers for the run metadata: mean LID (over finite estimates), the count and (first
    :data:`NON_FINITE_SHOWN`) indices of non-finite estimates and of estimates outside [0, D]
    by more than their standard error ``stderr`` [N], MAE per component when the truth is
    known, and, when a rule chose t0 (``scale_found`` [N] bool), the count and first indices
    of the points where it found no scale."""
    lids = np.asarray(lids, dtype=np.float64)
    finite = np.isfinite(lids)
    outside = out_of_range(lids, stderr, points.ambient_dim)
    record: dict[str, Any] = {
        "n": int(lids.size),
        "lid_mean": float(np.mean(lids[finite])) if finite.any() else None,
        "lid_median": float(np.median(lids[finite])) if finite.any() else None,
        "n_non_finite": int((~finite).sum()),
        "non_finite_index": points.index[~finite][:NON_FINITE_SHOWN].tolist(),
        "n_out_of_range": int(outside.sum()),
        "out_of_range_index": points.index[outside][:NON_FINITE_SHOWN].tolist(),
    }
    if scale_found is not None:
        missing = ~np.asarray(scale_found, dtype=bool)
        record["n_scale_not_found"] = int(missing.sum())
        record["scale_not_found_index"] = points.index[missing][:NON_FINITE_SHOWN].tolist()
    if points.lid_true is not None:
        groups, mae = summarize_by_component(lids, points.lid_true, points.component)
        record["mae"] = mae
        record["per_component"] = [group.__dict__ for group in groups]
        record.update(ranking_record(lids, points.lid_true))
    if points.png_bytes is not None:
        usable = np.isfinite(lids)
        record["spearman_png_bytes"] = spearman(lids[usable], points.png_bytes[usable]) if usable.sum() > 2 else None
    return record


def ranking_record(lids: np.ndarray, lid_true: np.ndarray) -> dict[str, Any]:
    """How well the estimates order the points against the truth, over finite estimates:
    Harrell's concordance index (None when every point has the same true LID: no pair to
    compare) and the Spearman correlation (None likewise)."""
    lids, lid_true = np.asarray(lids, dtype=np.float64), np.asarray(lid_true, dtype=np.float64)
    usable = np.isfinite(lids) & np.isfinite(lid_true)
    if usable.sum() < 2 or np.unique(lid_true[usable]).size < 2:
        return {"concordance_harrell": None, "spearman": None}
    return {"concordance_harrell": concordance_index(lid_true[usable], lids[usable], "harrell"),
            "spearman": spearman(lid_true[usable], lids[usable])}


def run_record(
    command: str,
    *,
    points: PointSet,
    data_seed: int,
    model: Any,
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
    record: dict[str, Any] = {
        "command": command,
        "argv": list(sys.argv),
        "data": {
            "spec": points.spec, "n_points": points.n, "seed": data_seed, "point_shape": list(points.point_shape),
            "description": points.description, "fingerprint": points.fingerprint(),
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
