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

from .schedules import VP

#: The schedule whose times the reference knee rule is phrased in.
REFERENCE_SCHEDULE = VP()
#: The window of reference times searched for a knee (exclusive bounds).
REFERENCE_WINDOW = (0.05, 0.5)

__all__ = ["KneeResult", "knee", "reference_knee_grid", "REFERENCE_SCHEDULE", "REFERENCE_WINDOW"]


class KneeResult(NamedTuple):
    """Per-point outcome of the knee rule.

    Attributes:
        lid: FLIPD at the knee, or the fallback where none was found, [N].
        t0: time of the knee in ``t_grid``'s units, NaN where none was found, [N].
        found: whether a knee was found, [N] bool.
    """

    lid: Tensor
    t0: Tensor
    found: Tensor


def reference_knee_grid(n_grid: int = 50) -> Tensor:
    """Reference VP times searched by the knee rule: ``linspace(0, 1, n_grid)`` inside the window."""
    grid = torch.linspace(0, 1, n_grid, dtype=torch.float64)
    low, high = REFERENCE_WINDOW
    return grid[(grid > low) & (grid < high)]


def knee(
    curve: Tensor | np.ndarray,
    t_grid: Sequence[float] | Tensor | np.ndarray,
    *,
    ambient_dim: int | None = None,
    window: tuple[float, float] | None = REFERENCE_WINDOW,
    sensitivity: float = 1.0,
) -> KneeResult:
    """Apply the knee rule to FLIPD curves, one knee per point.

    Args:
        curve: FLIPD values, [N, T] (or [T] for one point), e.g. from :func:`flipd.flipd_curve`.
        t_grid: the T times of the curve's columns, increasing.
        ambient_dim: D, returned where no knee is found (NaN if not given).
        window: only times strictly inside ``(low, high)`` are searched; None searches all.
            The default is the reference window for reference VP times; for other schedules
            convert the window through ``delta`` (see :func:`flipd.flipd` with ``t0="auto"``).
        sensitivity: kneed's S parameter.

    Returns:
        :class:`KneeResult` with tensors of shape [N].
    """
    from kneed import KneeLocator  # imported here: it loads matplotlib and scipy.signal (seconds)

    values = torch.as_tensor(curve, dtype=torch.float64).detach().cpu()
    if values.ndim == 1:
        values = values[None]
    times = torch.as_tensor(t_grid, dtype=torch.float64).flatten()
    if values.ndim != 2 or values.shape[1] != times.numel():
        raise ValueError(
            f"curve must have shape [N, T] with T = len(t_grid) = {times.numel()}; got {tuple(values.shape)}."
        )
    if times.numel() > 1 and not (times[1:] > times[:-1]).all():
        raise ValueError("t_grid must be strictly increasing.")
    keep = torch.ones_like(times, dtype=torch.bool)
    if window is not None:
        keep = (times > window[0]) & (times < window[1])
    if keep.sum() < 3:
        raise ValueError(f"The knee rule needs at least 3 times inside the window {window}; got {int(keep.sum())}.")
    times, values = times[keep].numpy(), values[:, keep].numpy()
    fallback = float("nan") if ambient_dim is None else float(ambient_dim)
    lid = np.full(values.shape[0], fallback)
    t0 = np.full(values.shape[0], np.nan)
    for i, row in enumerate(values):
        if not np.isfinite(row).all():
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            located = KneeLocator(times, row, S=sensitivity, curve="convex", direction="decreasing").knee
        if located is not None:
            j = int(np.argmin(np.abs(times - located)))
            lid[i], t0[i] = row[j], times[j]
    t0_tensor = torch.from_numpy(t0)
    return KneeResult(lid=torch.from_numpy(lid), t0=t0_tensor, found=~torch.isnan(t0_tensor))
