"""Noise-level policy, in one place: naming a noise level, the default level, the knee grid.

A noise level can be named three ways: as a time ``t0`` of the model's schedule, as the noise
standard deviation ``sigma``, or schedule-free as ``delta = log(sigma/psi)`` (the same delta is
the same Gaussian smoothing of the data under every schedule). :func:`resolve_times` turns any
of them into times of a schedule; every estimator, baseline, job and command goes through it.

Defaults are phrased in the *reference schedule* of the FLIPD paper, ``VP()`` (beta from 0.1 to
20), and carried to other schedules through delta:

* the default noise level is t0 = 0.05 of the reference schedule (sigma ≈ 0.172);
* the knee rule (:func:`flipd.knee`) searches reference times ``linspace(0, 1, 50)`` strictly
  inside (0.05, 0.5); :func:`knee_grid` is that grid in a schedule's own time units, and
  kneed is always run on the reference-time axis (it is not invariant to a non-linear change
  of axis), so every schedule picks the same knee for the same smoothing;
* the plateau rule (:func:`flipd.plateau`) searches levels evenly spaced in delta over
  :data:`PLATEAU_DELTA_RANGE` (:func:`plateau_grid`), for stretches of
  :data:`PLATEAU_WIDTH` levels whose flatness is at most :data:`PLATEAU_MAX_FLATNESS`, made of
  levels at which the model denoises the point reliably (:data:`RELIABILITY_TOLERANCE`);
* the calibrated rule (:mod:`flipd.calibrated`) reads a whole data set at the smallest level
  of :func:`plateau_grid` where the model denoises within :data:`CALIBRATED_RATIO` of its best.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .schedules import VP, Schedule

__all__ = [
    "DEFAULT_REFERENCE_T0",
    "KNEE_GRID_POINTS",
    "KNEE_WINDOW",
    "NoiseLevelError",
    "REFERENCE_SCHEDULE",
    "check_noise_level",
    "curve_times",
    "default_noise_level",
    "delta_range",
    "is_reference",
    "knee_grid",
    "PLATEAU_DELTA_RANGE",
    "PLATEAU_GRID_POINTS",
    "PLATEAU_MAX_FLATNESS",
    "PLATEAU_WIDTH",
    "RELIABILITY_TOLERANCE",
    "CALIBRATED_RATIO",
    "AUTO_RULES",
    "DATA_SET_RULES",
    "AUTO_RULE",
    "rule_named",
    "BAND_CONTRAST",
    "BAND_SPREAD_LOSS",
    "plateau_grid",
    "resolve_time",
    "resolve_times",
    "to_reference_time",
]

#: The schedule whose times the defaults and the knee rule are phrased in (FLIPD paper).
REFERENCE_SCHEDULE = VP()
#: Default noise level: t0 = 0.05 of the reference schedule (the paper's synthetic-data setting).
DEFAULT_REFERENCE_T0 = 0.05
#: The knee rule's window of reference times (exclusive bounds).
KNEE_WINDOW = (0.05, 0.5)
#: The knee rule's grid: reference times ``linspace(0, 1, KNEE_GRID_POINTS)`` inside the window.
KNEE_GRID_POINTS = 50
#: Default FLIPD-curve grid: reference times ``linspace(0, 1, CURVE_GRID_POINTS)`` without 0.
CURVE_GRID_POINTS = 50

#: The plateau rule's levels: delta = log(sigma/psi) from -3.5 (sigma/psi ≈ 0.03, reference t ≈
#: 0.0055) to 0 (sigma/psi = 1, the data's own scale when standardised; reference t ≈ 0.26),
#: covering the fixed levels t0 = 0.01, 0.02, 0.05 and 0.1 of the reference schedule.
PLATEAU_DELTA_RANGE = (-3.5, 0.0)
#: Levels of the plateau grid (step 0.125 in log sigma: 8 per factor e of noise).
PLATEAU_GRID_POINTS = 29
#: Levels in one stretch of the plateau rule (a factor e^0.5 ≈ 1.65 of noise).
PLATEAU_WIDTH = 5
#: A stretch is a plateau when FLIPD changes by at most this fraction of its level per unit of
#: log sigma: (max - min) / (span in log sigma · max(FLIPD, 1)) <= PLATEAU_MAX_FLATNESS.
PLATEAU_MAX_FLATNESS = 0.25
#: The model denoises reliably at a level when |E[eps_hat · (eps_hat - eps)]| / E[‖eps_hat‖²]
#: on the points is at most this (0 for the ideal denoiser; see :mod:`flipd.reliability`).
RELIABILITY_TOLERANCE = 0.25
#: The calibration is measured only where the model predicts at least this much noise,
#: ‖eps_hat‖² per noisy copy (for the ideal denoiser, the codimension D - LID at small noise).
#: Where it predicts less, the point looks full-dimensional at that level: the noise has no
#: normal part to predict, the ratio is Monte Carlo noise, and the calibration is NaN there
#: (:func:`flipd.reliability.calibration_of`). For the ideal denoiser at codimension 1 the
#: predicted noise per copy is a chi-square with 4 degrees of freedom over 4 (4 copies), under
#: 0.05 for 0.5 % of points (under 0.25 for 9 %).
MIN_PREDICTED_NOISE = 0.05
#: The calibrated rule (:mod:`flipd.calibrated`) reads a data set at the smallest level of the
#: plateau grid where the model's median |calibration| is at most this many times its smallest.
CALIBRATED_RATIO = 1.5
#: The band rule (:func:`flipd.calibrated.band_reading`) averages each point's FLIPD over the
#: calibrated band; when the points' FLIPD at the calibrated level differ by more than this many
#: times each point's own level-to-level wobble over the band (parts of different dimension) ...
BAND_CONTRAST = 3.0
#: ... only over the band's first levels, before the spread of the points' FLIPD (its standard
#: deviation over the points) has shrunk by more than this fraction of its value at the first.
BAND_SPREAD_LOSS = 0.15

#: Automatic noise-level rules by name: "knee" (the reference knee rule, method notes §5),
#: "plateau" (the flattest stretch of the curve, :mod:`flipd.plateau`), "calibrated" (one level
#: for the data set, the smallest the model denoises well, :mod:`flipd.calibrated`), "band" (the
#: calibrated level's band averaged, unless the points differ in dimension there:
#: :func:`flipd.calibrated.band_reading`) and "auto" (:data:`AUTO_RULE`).
AUTO_RULES: tuple[str, ...] = ("auto", "knee", "plateau", "calibrated", "band")
#: The rule ``t0="auto"`` stands for: the band rule, the best of the rules on every synthetic
#: suite (``benchmarks/results/calibrated_variants_summary.md``). The reference knee rule is
#: ``t0="knee"``.
AUTO_RULE = "band"
#: The rules that read the whole data set at levels chosen once, from its first points.
DATA_SET_RULES: tuple[str, ...] = ("calibrated", "band")

NOISE_NAMES = ("t0", "sigma", "delta")


class NoiseLevelError(ValueError):
    """A noise level that is badly named or that the schedule cannot reach.

    ``name`` is the way the level was named ("t0", "sigma" or "delta") when one was.
    """

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


def is_reference(schedule: Schedule) -> bool:
    """Whether ``schedule`` is the reference VP schedule (beta 0.1 to 20)."""
    return isinstance(schedule, VP) and math.isclose(schedule.beta_min, 0.1) and math.isclose(schedule.beta_max, 20.0)


def default_noise_level(schedule: Schedule) -> dict[str, float]:
    """``{"t0": 0.05}`` for the reference schedule, else the same smoothing as ``{"delta": ...}``."""
    if is_reference(schedule):
        return {"t0": DEFAULT_REFERENCE_T0}
    return {"delta": float(REFERENCE_SCHEDULE.delta(DEFAULT_REFERENCE_T0))}


def _given(t0: Any, sigma: Any, delta: Any) -> dict[str, Any]:
    given = {name: value for name, value in zip(NOISE_NAMES, (t0, sigma, delta)) if value is not None}
    if len(given) > 1:
        raise NoiseLevelError(
            "Give the noise level at most once: t0= (schedule time), sigma= (noise std) or "
            f"delta= (log sigma/psi); got {', '.join(given)}."
        )
    return given


def _times_of(schedule: Schedule, name: str, value: Tensor) -> Tensor:
    if name == "t0":
        return schedule.check_t(value, "t0")
    if name == "sigma":
        if (value <= 0).any():
            raise NoiseLevelError(f"sigma must be positive; got {value.min().item():g}.")
        return schedule.check_t(schedule.t_from_sigma(value), "t0 (from sigma)")
    return schedule.check_t(schedule.t_from_delta(value), "t0 (from delta)")


def resolve_times(
    n: int,
    schedule: Schedule,
    *,
    t0: float | Tensor | None = None,
    sigma: float | Tensor | None = None,
    delta: float | Tensor | None = None,
) -> Tensor:
    """Times [n] (float64) of ``schedule`` for a noise level named by at most one of
    ``t0`` / ``sigma`` / ``delta`` (each a number, or a tensor [n] for one level per point);
    with none given, :func:`default_noise_level`.

    Raises:
        NoiseLevelError: more than one name given, or a level of the wrong shape or sign.
        ValueError: a level outside the schedule (the message names the range).
    """
    given = _given(t0, sigma, delta) or default_noise_level(schedule)
    (name, value), = given.items()
    value = torch.as_tensor(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=torch.float64)
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, n)):
        raise NoiseLevelError(f"{name} must be a scalar or have shape [N] = [{n}]; got shape {tuple(value.shape)}.")
    times = _times_of(schedule, name, value)
    return times.expand(n).clone() if times.ndim == 0 or times.shape[0] == 1 else times


def resolve_time(
    schedule: Schedule,
    *,
    t0: float | None = None,
    sigma: float | None = None,
    delta: float | None = None,
    default_delta: float | None = None,
) -> float:
    """One noise level (a single number), named by at most one of t0 / sigma / delta, as a time
    of ``schedule``; with none given, ``default_delta`` if set, else :func:`default_noise_level`."""
    given = _given(t0, sigma, delta)
    if not given and default_delta is not None:
        given = {"delta": default_delta}
    given = given or default_noise_level(schedule)
    (name, value), = given.items()
    value = torch.as_tensor(value, dtype=torch.float64)
    if value.ndim != 0:
        raise NoiseLevelError(f"{name} must be a single number; got shape {tuple(value.shape)}.")
    return float(_times_of(schedule, name, value))


def delta_range(schedule: Schedule) -> tuple[float, float]:
    """The smallest and largest delta = log(sigma/psi) that ``schedule`` reaches."""
    span = max(1.0, schedule.t_max - schedule.t_min)
    low = schedule.t_min if schedule.includes_t_min else schedule.t_min + 1e-9 * span
    return float(schedule.delta(low)), float(schedule.delta(schedule.t_max))


def rule_named(t0: Any) -> Any:
    """The rule a ``t0=`` names: :data:`AUTO_RULE` for "auto", anything else as it is."""
    return AUTO_RULE if isinstance(t0, str) and t0 == "auto" else t0


def check_noise_level(schedule: Schedule, noise: dict[str, Any]) -> None:
    """Raise :class:`NoiseLevelError` naming the level if ``schedule`` cannot reach ``noise``
    (``{"t0": ...}``, ``{"sigma": ...}`` or ``{"delta": ...}``; a rule by name, ``{"t0":
    "auto"}`` or another of :data:`AUTO_RULES`, passes)."""
    (name, value), = noise.items()
    if name == "t0" and value in AUTO_RULES:
        return
    try:
        resolve_time(schedule, **{name: float(value)})
    except ValueError:
        bracket = "[" if schedule.includes_t_min else "("
        raise NoiseLevelError(
            f"{name} {value:g} is not a noise level of the model's schedule {schedule!r}: its times run over "
            f"{bracket}{schedule.t_min:g}, {schedule.t_max:g}], reaching sigma {float(schedule.sigma(schedule.t_max)):.3g} "
            f"and delta {delta_range(schedule)[1]:.3g} at the end.",
            name=name,
        ) from None


def to_reference_time(schedule: Schedule, t: float | Tensor) -> Tensor:
    """Times of the reference schedule with the same smoothing (delta) as the times ``t`` of
    ``schedule``, float64; levels beyond the reference range are clamped to its ends."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if is_reference(schedule):
        return t.clone()
    low, high = delta_range(REFERENCE_SCHEDULE)
    deltas = schedule.delta(t).clamp(low, high)
    return REFERENCE_SCHEDULE.t_from_delta(deltas)


def _from_reference(schedule: Schedule, reference_t: Tensor) -> Tensor:
    """Times of ``schedule`` with the smoothing of reference times ``reference_t``, keeping
    only the levels the schedule reaches."""
    if is_reference(schedule):
        return reference_t.clone()
    low, high = delta_range(schedule)
    deltas = REFERENCE_SCHEDULE.delta(reference_t)
    return schedule.t_from_delta(deltas[(deltas > low) & (deltas <= high)])


def knee_grid(schedule: Schedule | None = None, n_grid: int = KNEE_GRID_POINTS) -> Tensor:
    """The times of ``schedule`` (default: the reference) at which the knee rule (``t0="knee"``
    or ``"knee"``) evaluates FLIPD
    curves: reference times ``linspace(0, 1, n_grid)`` strictly inside :data:`KNEE_WINDOW`,
    carried through delta. Float64 [T], increasing.

    ``flipd.knee(flipd.flipd_curve(model, x, grid), grid, schedule=schedule)`` with this grid
    gives what ``flipd.estimate(model, x, t0="knee")`` gives.
    """
    schedule = REFERENCE_SCHEDULE if schedule is None else schedule
    grid = torch.linspace(0, 1, n_grid, dtype=torch.float64)
    low, high = KNEE_WINDOW
    times = _from_reference(schedule, grid[(grid > low) & (grid < high)])
    if times.numel() < 3:
        raise NoiseLevelError(f"{schedule!r} reaches fewer than 3 of the knee rule's noise levels.")
    return times


def plateau_grid(schedule: Schedule | None = None, n_grid: int = PLATEAU_GRID_POINTS) -> Tensor:
    """The times of ``schedule`` (default: the reference) at which ``t0="plateau"`` evaluates
    FLIPD curves: ``n_grid`` levels evenly spaced in delta over :data:`PLATEAU_DELTA_RANGE`,
    keeping those the schedule reaches. Float64 [T], increasing."""
    schedule = REFERENCE_SCHEDULE if schedule is None else schedule
    low, high = delta_range(schedule)
    deltas = torch.linspace(*PLATEAU_DELTA_RANGE, n_grid, dtype=torch.float64)
    deltas = deltas[(deltas > low) & (deltas <= high)]
    if deltas.numel() < PLATEAU_WIDTH:
        raise NoiseLevelError(f"{schedule!r} reaches fewer than {PLATEAU_WIDTH} of the plateau rule's noise levels.")
    return schedule.t_from_delta(deltas)


def curve_times(
    schedule: Schedule,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    steps: int | None = None,
) -> Tensor:
    """Increasing times of ``schedule`` at which to evaluate FLIPD curves, float64 [T].

    With no bounds given: reference times ``linspace(0, 1, 50)`` without 0 (covering the knee
    rule's window) carried to ``schedule`` through delta, keeping the levels it reaches. With
    bounds: ``steps`` (default 25) times evenly spaced in ``[t_min, t_max]`` of ``schedule``; a
    missing bound is taken from the reference grid.
    """
    if steps is not None and steps < 3:
        raise NoiseLevelError(f"A FLIPD curve needs at least 3 noise levels; got steps = {steps}.")
    default = _from_reference(schedule, torch.linspace(0, 1, CURVE_GRID_POINTS, dtype=torch.float64)[1:])
    if t_min is None and t_max is None and steps is None:
        times = default
    else:
        low = float(default[0]) if t_min is None else float(t_min)
        high = float(default[-1]) if t_max is None else float(t_max)
        if not low < high:
            raise NoiseLevelError(f"The curve's range is empty: t_min {low:g} must be below t_max {high:g}.")
        times = torch.linspace(low, high, steps or 25, dtype=torch.float64)
        schedule.check_t(times, "curve time")
    if times.numel() < 3:
        raise NoiseLevelError(f"{schedule!r} reaches too few of the reference noise levels for a curve; give t_min and t_max.")
    return times
