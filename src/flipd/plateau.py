"""Automatic choice of t0: the flattest stretch of each point's FLIPD curve in log sigma.

FLIPD is the derivative of the log density of the smoothed data with respect to delta =
log(sigma/psi) (plus D), so where a point's curve is flat in delta the smoothed density scales
like that of a manifold of that dimension across a range of noise: the point looks like a
k-dimensional manifold at that scale. The plateau rule reads the curve there.

Per point, on levels evenly spaced in delta (:func:`flipd.plateau_grid`):

1. every stretch of ``width`` consecutive levels gets a *flatness*: the range of FLIPD over
   the stretch per unit of delta it spans, relative to its level (the stretch's mean FLIPD),
   ``(max - min) / (span · max(level, 1))``: the fraction by which FLIPD changes per unit of
   log sigma (plain dimensions per unit below a level of 1, so points of dimension 0 are not
   penalised for their tiny level). A range, not a fitted slope: a slope vanishes at the turning
   point of any bump, which would pass for a plateau;
2. stretches with a level where the model does not denoise the point reliably
   (:func:`flipd.reliability.reliable_levels`) are left out;
3. the flattest remaining stretch is chosen: the LID is its mean FLIPD, t0 its middle level.
   It is a plateau (``found``) when its flatness is at most ``max_flatness``; otherwise the
   point is flagged, its LID is still the flattest stretch's mean, and the caller warns.

Unlike a knee, a plateau has a meaning for a perfect model: on a flat d-dimensional
Gaussian the exact FLIPD curve is d at every small noise level, so the rule reads d
(``tests/test_plateau.py`` checks this with :mod:`flipd.analytic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .knee import as_curves
from .noise import PLATEAU_MAX_FLATNESS, PLATEAU_WIDTH, REFERENCE_SCHEDULE
from .schedules import Schedule

__all__ = ["PlateauResult", "plateau", "stretch_flatness"]


class PlateauResult(NamedTuple):
    """Per-point outcome of the plateau rule.

    Attributes:
        lid: mean FLIPD over the chosen stretch, [N] float64.
        t0: the stretch's middle level in ``t_grid``'s units, [N] float64.
        flatness: (max - min) / (span · max(level, 1)) of the chosen stretch, [N] float64 (per
            unit of log sigma: |d FLIPD / d delta| / FLIPD on a straight stretch; NaN where the
            curve has non-finite values).
        found: whether the chosen stretch is flat enough to be a plateau, [N] bool.
    """

    lid: Tensor
    t0: Tensor
    flatness: Tensor
    found: Tensor


def stretch_flatness(curve: np.ndarray, delta: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flatness and mean level of every stretch of ``width`` consecutive levels.

    The flatness of a stretch is its range of FLIPD (largest minus smallest value) per unit of
    delta it spans, relative to its level: ``(max - min) / (span · max(level, 1))``. On a straight
    stretch this is ``|slope| / max(level, 1)``; unlike a fitted slope it is not zero at the top
    or bottom of a bump, so a turning point of the curve does not pass for a plateau.

    Args:
        curve: FLIPD values [N, T].
        delta: the T levels' delta = log(sigma/psi), increasing.
        width: levels per stretch (at least 2).

    Returns:
        ``(flatness, level)``, each [N, T - width + 1]: the flatness (per unit of log sigma) and
        the mean FLIPD of each stretch.
    """
    windows = np.lib.stride_tricks.sliding_window_view(curve, width, axis=1)  # [N, S, width]
    span = delta[width - 1:] - delta[: delta.size - width + 1]  # [S]
    level = windows.mean(axis=2)
    spread = windows.max(axis=2) - windows.min(axis=2)
    return spread / (span * np.maximum(level, 1.0)), level


def plateau(
    curve: Tensor | np.ndarray,
    t_grid: Sequence[float] | Tensor | np.ndarray,
    *,
    schedule: Schedule | None = None,
    width: int = PLATEAU_WIDTH,
    max_flatness: float = PLATEAU_MAX_FLATNESS,
    reliable: Tensor | np.ndarray | None = None,
) -> PlateauResult:
    """Apply the plateau rule to FLIPD curves, one stretch per point (see the module notes).

    ``plateau(flipd_curve(model, x, grid), grid, schedule=s)`` with ``grid =
    flipd.plateau_grid(s)`` and ``reliable`` the model's reliable levels
    (:func:`flipd.reliability.reliable_levels`) gives the LID and t0 of
    ``flipd.estimate(model, x, t0="plateau")``.

    Args:
        curve: FLIPD values, [N, T] (or [T] for one point), e.g. from :func:`flipd.flipd_curve`.
        t_grid: the T times of the curve's columns, increasing, in ``schedule``'s units.
        schedule: the schedule of ``t_grid`` (default: the reference VP schedule); flatness is
            measured against its delta = log(sigma/psi), the same axis for every schedule.
        width: levels per stretch (at least 2).
        max_flatness: the largest flatness that counts as a plateau.
        reliable: [N, T] bool, the levels at which the model is reliable for each point; only
            stretches of reliable levels are searched (None: all). A point without any such
            stretch is searched on all stretches and flagged as not found.

    Returns:
        :class:`PlateauResult` with tensors of shape [N].
    """
    schedule = REFERENCE_SCHEDULE if schedule is None else schedule
    values, times = as_curves(curve, t_grid)
    if not isinstance(width, int) or width < 2:
        raise ValueError(f"width must be an integer >= 2 (levels per stretch); got {width!r}.")
    if times.numel() < width:
        raise ValueError(f"The plateau rule needs at least width = {width} levels; got {times.numel()}.")
    if not (times[1:] > times[:-1]).all():
        raise ValueError("t_grid must be strictly increasing.")
    delta = schedule.delta(times).numpy()
    rows, grid = values.numpy(), times.numpy()
    n, starts = rows.shape[0], np.arange(grid.size - width + 1)
    if reliable is None:
        usable = np.ones((n, starts.size), dtype=bool)
    else:
        mask = torch.as_tensor(reliable).detach().cpu().numpy().astype(bool)
        if mask.shape != rows.shape:
            raise ValueError(f"reliable must have the curve's shape {tuple(rows.shape)}; got {tuple(mask.shape)}.")
        usable = np.lib.stride_tricks.sliding_window_view(mask, width, axis=1).all(axis=2)
    reliable_any = usable.any(axis=1)
    usable[~reliable_any] = True  # no reliable stretch: search them all, and flag the point
    flatness, level = stretch_flatness(rows, delta, width)
    flatness = np.where(np.isfinite(flatness) & usable, flatness, np.inf)
    best = np.argmin(flatness, axis=1)
    picked = np.arange(n)
    chosen_flatness = flatness[picked, best]
    finite = np.isfinite(chosen_flatness)
    lid = np.where(finite, level[picked, best], np.nan)
    middle = best + width // 2
    t0 = grid[middle] if width % 2 else np.sqrt(grid[middle - 1] * grid[middle])
    found = finite & (chosen_flatness <= max_flatness) & reliable_any
    return PlateauResult(
        lid=torch.from_numpy(lid), t0=torch.from_numpy(np.where(finite, t0, np.nan)),
        flatness=torch.from_numpy(np.where(finite, chosen_flatness, np.nan)), found=torch.from_numpy(found),
    )
