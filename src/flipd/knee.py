"""Automatic choice of t0: the knee of each point's FLIPD curve.

Plotted against t0, FLIPD starts near the ambient dimension D at tiny noise (where a trained
model's score is least accurate), falls, and plateaus at the LID before falling again. The
reference rule (FLIPD paper) evaluates FLIPD on ``t = linspace(0, 1, 50)`` of the reference VP
schedule, keeps ``0.05 < t < 0.5``, and returns FLIPD at the knee that kneed's ``KneeLocator``
finds (S = 1, convex, decreasing), or D when there is none.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .noise import KNEE_WINDOW, REFERENCE_SCHEDULE, knee_grid, to_reference_time
from .schedules import Schedule

#: The window of reference times searched for a knee (exclusive bounds); see :mod:`flipd.noise`.
REFERENCE_WINDOW = KNEE_WINDOW

__all__ = ["KneeResult", "knee", "reference_knee_grid", "REFERENCE_SCHEDULE", "REFERENCE_WINDOW"]


class KneeResult(NamedTuple):
    """Per-point outcome of the knee rule.

    Attributes:
        lid: FLIPD at the knee, or the fallback where none was found, [N].
        t0: time of the knee in ``t_grid``'s units (float64), NaN where none was found, [N].
        found: whether a knee was found, [N] bool.
    """

    lid: Tensor
    t0: Tensor
    found: Tensor


def as_curves(curve, t_grid) -> tuple[Tensor, Tensor]:
    """``(curves [N, T] float64 on the CPU, times [T] float64)`` from a curve [N, T] (or [T] for
    one point) and its grid, checking that they fit."""
    values = torch.as_tensor(curve, dtype=torch.float64).detach().cpu()
    if values.ndim == 1:
        values = values[None]
    times = torch.as_tensor(t_grid, dtype=torch.float64).flatten()
    if values.ndim != 2 or values.shape[1] != times.numel():
        raise ValueError(
            f"curve must have shape [N, T] with T = len(t_grid) = {times.numel()}; got {tuple(values.shape)}."
        )
    return values, times


def reference_knee_grid(n_grid: int = 50) -> Tensor:
    """Reference VP times searched by the knee rule: ``linspace(0, 1, n_grid)`` inside the window
    (:func:`flipd.knee_grid` of the reference schedule)."""
    return knee_grid(REFERENCE_SCHEDULE, n_grid)


def knee(
    curve: Tensor | np.ndarray,
    t_grid: Sequence[float] | Tensor | np.ndarray,
    *,
    schedule: Schedule | None = None,
    ambient_dim: int | None = None,
    window: tuple[float, float] | None = REFERENCE_WINDOW,
    sensitivity: float = 1.0,
) -> KneeResult:
    """Apply the knee rule to FLIPD curves, one knee per point.

    kneed's knee depends on the axis it is given, so the rule always runs on the reference
    schedule's time axis: times of another ``schedule`` are carried there through delta =
    log(sigma/psi) first. ``knee(flipd_curve(model, x, grid), grid, schedule=s)`` with
    ``grid = flipd.knee_grid(s)`` gives the LID and t0 of ``flipd.estimate(model, x,
    t0="knee")`` for every schedule.

    Args:
        curve: FLIPD values, [N, T] (or [T] for one point), e.g. from :func:`flipd.flipd_curve`.
        t_grid: the T times of the curve's columns, increasing, in ``schedule``'s units.
        schedule: the schedule of ``t_grid`` (default: the reference VP schedule).
        ambient_dim: D, returned where no knee is found (NaN if not given).
        window: only reference times strictly inside ``(low, high)`` are searched (the
            reference window by default); None searches all.
        sensitivity: kneed's S parameter.

    Returns:
        :class:`KneeResult` with tensors of shape [N].
    """
    from kneed import KneeLocator  # imported here: it loads matplotlib and scipy.signal (seconds)

    values, times = as_curves(curve, t_grid)
    if times.numel() > 1 and not (times[1:] > times[:-1]).all():
        raise ValueError("t_grid must be strictly increasing.")
    axis = times if schedule is None else to_reference_time(schedule, times)
    keep = torch.ones_like(times, dtype=torch.bool)
    if window is not None:
        keep = (axis > window[0]) & (axis < window[1])
    if keep.sum() < 3:
        raise ValueError(
            f"The knee rule needs at least 3 times inside the window {window} of reference times; got {int(keep.sum())}."
        )
    times, axis, values = times[keep].numpy(), axis[keep].numpy(), values[:, keep].numpy()
    fallback = float("nan") if ambient_dim is None else float(ambient_dim)
    lid = np.full(values.shape[0], fallback)
    t0 = np.full(values.shape[0], np.nan)
    for i, row in enumerate(values):
        if not np.isfinite(row).all():
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            located = KneeLocator(axis, row, S=sensitivity, curve="convex", direction="decreasing").knee
        if located is not None:
            j = int(np.argmin(np.abs(axis - located)))
            lid[i], t0[i] = row[j], times[j]
    t0_tensor = torch.from_numpy(t0)
    return KneeResult(lid=torch.from_numpy(lid), t0=t0_tensor, found=~torch.isnan(t0_tensor))
