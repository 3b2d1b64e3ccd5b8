"""Automatic choice of t0 for a data set: the smallest noise level the model denoises well.

For a perfect model FLIPD is most accurate at the smallest noise level (it tends to the LID
as sigma -> 0); a trained model is least accurate there, and FLIPD reads its score exactly
where it is worst. The *calibration* of :mod:`flipd.reliability` measures, without labels, how
far the model's noise prediction is from an ideal denoiser's at each level: 0 for the ideal
one, growing where the model predicts too much or too little of the noise. The calibrated rule
takes both into account, per data set:

1. on the levels of :func:`flipd.plateau_grid` (evenly spaced in delta = log(sigma/psi)),
   the *median* over the points of |calibration| is the model's denoising error at that level
   (over the points where it is measured: not those that look full-dimensional there, see
   :mod:`flipd.reliability`);
2. the model's best level is where that median is smallest;
3. t0 is the *smallest* level whose median is at most ``ratio`` times the best one
   (:data:`flipd.noise.CALIBRATED_RATIO`): as little noise as the model can be trusted with.
   Every point is read at that t0.

The choice is one level for the whole data set, so it depends on which points it is made
from: :func:`flipd.estimate` makes it from the first :data:`CALIBRATION_POINTS` points it is
given (streams included); ``flipd estimate`` chooses it once per table, so a table estimated in
chunks, by several processes or resumed is read at one level (the level is part of the run's
identity: a resume that would choose another is refused). To read other points at a level
chosen before, pass it: ``flipd.estimate(model, x, t0=level)``. A level is also left out when
the model's output is not finite there for any of the points.
Per point, the result says whether the model denoises that point reliably at the chosen level
(|calibration| <= :data:`flipd.noise.RELIABILITY_TOLERANCE`); the other points are flagged.

:func:`calibrated_band` gives every level within the ratio, not only the smallest: averaging
each point's FLIPD over them cancels part of an imperfect model's level-to-level error (see its
notes; ``python -m flipd.bench calibrated_variants`` measures it as the "band mean"). The band
can reach large noise levels, where parts of the data of different dimension blur together, so
the *band rule* (``t0="band"``, :func:`band_reading`) averages over the whole band only when
the points' FLIPD at the calibrated level differ by little more than each point's wobble over
the band (:func:`band_contrast` at most :data:`flipd.noise.BAND_CONTRAST`), and otherwise over the
calibrated band's first levels only, before the points' spread has shrunk. It costs one FLIPD
pass per level of the band on the points the choice is made from, and one per level read on
the other points.

With a perfect model the median calibration grows with the noise from 0, so the rule takes
the smallest level of the grid (``tests/test_calibrated.py`` checks this with
:mod:`flipd.analytic`). Like every label-free check, it cannot see a model that is calibrated
but wrong about the manifold.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .knee import as_curves
from .noise import BAND_CONTRAST, BAND_SPREAD_LOSS, CALIBRATED_RATIO, RELIABILITY_TOLERANCE

__all__ = ["CALIBRATION_POINTS", "MIN_CALIBRATION_POINTS", "CalibratedLevel", "band_contrast", "band_reading",
           "calibrated_band", "calibrated_level", "check_ratio", "smallest_within"]

#: Points the data-set level is chosen from (the first ones given).
CALIBRATION_POINTS = 2048
#: Fewer points than this make the median calibration, and so the level, noisy: a warning says so.
MIN_CALIBRATION_POINTS = 64


class CalibratedLevel(NamedTuple):
    """The level the calibrated rule chose for a data set.

    Attributes:
        t0: the chosen time, in ``t_grid``'s units.
        index: its position in ``t_grid``.
        times: the levels searched, [T] float64.
        median_calibration: median over the points of |calibration| at each level, [T] float64.
        best_t0: the level where the model denoises best (smallest median).
        n_points: how many points the choice was made from.
        reliable: whether the median at the chosen level is within
            :data:`flipd.noise.RELIABILITY_TOLERANCE` (False: the model does not denoise most
            of these points reliably at the chosen level).
        ratio: the rule's tolerance the level was chosen with (see :func:`calibrated_level`).
        read_times: the levels each point's FLIPD is averaged over, [B] float64; None (the
            calibrated rule): ``t0`` alone. Set by the band rule (:func:`band_reading`).
        contrast: the band rule's :func:`band_contrast` that decided ``read_times`` (None for
            the calibrated rule).
    """

    t0: float
    index: int
    times: Tensor
    median_calibration: Tensor
    best_t0: float
    n_points: int
    reliable: bool
    ratio: float = CALIBRATED_RATIO
    read_times: Tensor | None = None
    contrast: float | None = None

    def times_read(self) -> Tensor:
        """The levels every point is read at, [B] float64 (``[t0]`` unless the band rule chose more)."""
        if self.read_times is None:
            return torch.tensor([self.t0], dtype=torch.float64)
        return self.read_times.clone()


def check_ratio(ratio: float) -> None:
    """Refuse a ratio of the calibrated rule that is not a number >= 1."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio >= 1.0:
        raise ValueError(f"ratio must be a number >= 1 (how much worse than its best the model may denoise); got {ratio!r}.")


def calibrated_level(
    calibration: Tensor | np.ndarray,
    t_grid: Sequence[float] | Tensor | np.ndarray,
    *,
    ratio: float = CALIBRATED_RATIO,
) -> CalibratedLevel:
    """Apply the calibrated rule to the calibration of N points at T levels (see the module notes).

    Args:
        calibration: [N, T] from :func:`flipd.reliability.denoising_calibration` (signed; its
            magnitude is used), or [T] for one point.
        t_grid: the T times of its columns, increasing.
        ratio: how much worse than at its best level the model may denoise at the chosen level
            (at least 1).

    Returns:
        :class:`CalibratedLevel`.
    """
    check_ratio(ratio)
    values, times = as_curves(calibration, t_grid)
    if not (times[1:] > times[:-1]).all():
        raise ValueError("t_grid must be strictly increasing.")
    magnitude = values.abs().numpy()
    measured = ~np.isnan(magnitude)  # NaN: not measured (the point looks full-dimensional there)
    usable = ~np.isinf(magnitude).any(axis=0)
    if not usable.any():
        raise ValueError("The calibration is not finite at any level; the model's output is not finite there.")
    finite = usable & measured.any(axis=0)
    if not finite.any():  # nothing to calibrate: FLIPD of full-dimensional data is about D at any small level
        index = int(np.flatnonzero(usable)[0])
        warnings.warn(
            f"The model predicts almost no noise for any of these {values.shape[0]} points at any level: the data "
            "look full-dimensional to it (LID about D), so its denoising cannot be checked; the calibrated rule "
            f"reads them at the smallest level, t0 = {float(times[index]):.4g}, flagged as not shown reliable.",
            RuntimeWarning, stacklevel=3,
        )
        return CalibratedLevel(
            t0=float(times[index]), index=index, times=times.clone(),
            median_calibration=torch.full((times.numel(),), math.inf, dtype=torch.float64), best_t0=float(times[index]),
            n_points=int(values.shape[0]), reliable=False, ratio=float(ratio),
        )
    if values.shape[0] < MIN_CALIBRATION_POINTS:
        warnings.warn(
            f"The calibrated rule chose its level from only {values.shape[0]} points; the median calibration is "
            f"noisy below {MIN_CALIBRATION_POINTS}. Choose it from more points of the same data "
            "(level = flipd.calibrated_t0(model, more_points); flipd.estimate(model, x, t0=level)).",
            RuntimeWarning, stacklevel=3,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a level with no measured point: excluded by finite
        median = np.where(finite, np.nanmedian(np.where(np.isinf(magnitude), np.nan, magnitude), axis=0), np.inf)
    index, best = smallest_within(median, ratio)
    return CalibratedLevel(
        t0=float(times[index]), index=index, times=times.clone(), median_calibration=torch.from_numpy(median),
        best_t0=float(times[best]), n_points=int(values.shape[0]),
        reliable=bool(median[index] <= RELIABILITY_TOLERANCE), ratio=float(ratio),
    )


def calibrated_band(level: CalibratedLevel) -> Tensor:
    """Every level of the rule's grid where the model denoises within ``level.ratio`` times its best.

    The calibrated rule reads a data set at the smallest of these levels. An imperfect model's
    FLIPD also wobbles from level to level, and averaging each point's FLIPD over all of them
    cancels part of that error: ``flipd.flipd_curve(model, x, calibrated_band(level)).mean(1)``
    (``python -m flipd.bench calibrated_variants`` measures both on trained models). For a
    perfect model the median calibration grows from 0 with the noise, so the band is the
    smallest levels only.

    Args:
        level: the rule's choice, :func:`calibrated_level` or :func:`flipd.calibrated_t0`.

    Returns:
        The band's times, increasing, [B] float64 (B >= 1; ``level.t0`` is the first).
    """
    median = level.median_calibration.numpy()  # inf where the model's output was not finite, or nothing measured
    if not np.isfinite(median).any():  # no level could be checked: the chosen one alone
        return level.times[level.index : level.index + 1].clone()
    return level.times[torch.from_numpy(median <= level.ratio * median.min())].clone()


def band_contrast(curves: Tensor | np.ndarray) -> float:
    """How much the points' FLIPD differ, against how much each point's FLIPD wobbles over a band.

    Args:
        curves: [N, B] FLIPD of N points at the B levels of :func:`calibrated_band` (the first
            column at the calibrated level).

    Returns:
        The standard deviation over the points of the first column, divided by the mean over
        the points of each point's standard deviation over the B levels (``inf`` when no point
        wobbles; 0 for one point or one level). Points whose FLIPD is not finite at some level
        are left out (``inf`` when none is left: no wobble can be measured).
    """
    values = torch.as_tensor(curves, dtype=torch.float64)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"curves must be [N, B] with N, B >= 1; got shape {tuple(values.shape)}.")
    values = values[torch.isfinite(values).all(dim=1)]
    if values.shape[0] == 0:
        return math.inf
    if values.shape[0] < 2 or values.shape[1] < 2:
        return 0.0
    spread = float(values[:, 0].std())
    wobble = float(values.std(dim=1).mean())
    return math.inf if wobble == 0.0 else spread / wobble


def band_reading(level: CalibratedLevel, curves: Tensor | np.ndarray, *, max_contrast: float = BAND_CONTRAST,
                 max_spread_loss: float = BAND_SPREAD_LOSS) -> CalibratedLevel:
    """The band rule's choice: the levels of the band (:func:`calibrated_band`) each point's FLIPD
    is averaged over.

    An imperfect model's FLIPD wobbles from level to level, and averaging each point's FLIPD over
    the band cancels part of that. But the band can reach large noise levels, where parts of the
    data of different dimension blur together and their FLIPD moves towards each other. When
    the points' FLIPD at the calibrated level differ by more than ``max_contrast`` times their
    wobble over the band (:func:`band_contrast`), the differences are the data's, not the
    model's, and the rule keeps only the band's first levels: up to the last before the spread
    of the points' FLIPD (standard deviation over the points) has shrunk by more than
    ``max_spread_loss`` of its value at the calibrated level. Otherwise it keeps the whole band.

    Args:
        level: the calibrated rule's choice (:func:`calibrated_level`).
        curves: [N, B] FLIPD of the points the level was chosen from, at ``calibrated_band(level)``.
        max_contrast: the contrast above which the spread is kept (default
            :data:`flipd.noise.BAND_CONTRAST`).
        max_spread_loss: the fraction of the spread that may be lost, in [0, 1) (default
            :data:`flipd.noise.BAND_SPREAD_LOSS`).

    Returns:
        ``level`` with ``read_times`` (the levels kept, ``level.t0`` first) and ``contrast`` set.
    """
    if not 0.0 <= max_spread_loss < 1.0:
        raise ValueError(f"max_spread_loss must be in [0, 1); got {max_spread_loss!r}.")
    band = calibrated_band(level)
    values = torch.as_tensor(curves, dtype=torch.float64)
    if values.ndim != 2 or values.shape[1] != band.numel():
        raise ValueError(f"curves must be [N, {band.numel()}] (FLIPD at the level's band); got {tuple(values.shape)}.")
    contrast = band_contrast(values)
    kept = band.numel()
    if contrast > max_contrast:  # parts of different dimension: stop where they start to blur together
        finite = values[torch.isfinite(values).all(dim=1)]
        spread = finite.std(dim=0) if finite.shape[0] > 1 else torch.zeros(band.numel(), dtype=torch.float64)
        lost = spread < (1.0 - max_spread_loss) * spread[0]
        kept = int(torch.nonzero(lost)[0]) if bool(lost.any()) else band.numel()
    return level._replace(read_times=band[: max(kept, 1)].clone(), contrast=contrast)


def smallest_within(error: np.ndarray, ratio: float) -> tuple[int, int]:
    """The rule's last step on any per-level error (lower is better; ``inf`` where unusable).

    Args:
        error: [T] the model's denoising error at each level, levels in increasing order.
        ratio: how much worse than at its best level the chosen level may be (at least 1).

    Returns:
        ``(chosen, best)``: the index of the smallest level whose error is at most ``ratio`` times
        the smallest error, and the index of that smallest error.
    """
    best = int(np.argmin(error))
    return int(np.flatnonzero(error <= ratio * error[best])[0]), best
