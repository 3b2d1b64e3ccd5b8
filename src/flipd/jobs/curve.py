"""The curve job: FLIPD across noise levels for every point, with the knee of each curve (and,
with ``rule="plateau"``, the flattest stretch the plateau rule picks; with ``rule="calibrated"``,
the one level the calibrated rule picks for all the points).

:func:`compute_curves` computes curves in memory; :class:`CurveSettings` and
:func:`curve_chunks` run the same computation chunk by chunk through
:mod:`flipd.runs.chunks` (resumable, and split over the processes of a launched job), and
:func:`curves_from_chunks` joins the chunks into one :class:`CurveResult`. Each point's curve
and knee depend only on the settings and its index, so chunking changes no number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..datasets.sources import PointSet
from ..calibrated import CALIBRATION_POINTS, CalibratedLevel, band_reading, calibrated_band, calibrated_level, check_ratio
from ..estimator import EstimateWarning, flipd_curve, resolve_trace
from ..knee import knee
from ..models.base import Model
from ..noise import CALIBRATED_RATIO, DATA_SET_RULES, KNEE_WINDOW, to_reference_time
from ..plateau import plateau
from ..reliability import denoising_calibration, reliable_levels
from ..runs.chunks import ChunkedEstimate, ChunkEstimator
from ..schedules import Schedule
from .records import known_columns

__all__ = [
    "CURVE_COLUMNS",
    "CURVE_RULES",
    "CurveResult",
    "CurveSettings",
    "compute_curves",
    "curve_chunks",
    "curve_table_columns",
    "curves_from_chunks",
]

#: Rules whose choice a curve run can mark: the reference knee rule, or the plateau, the
#: calibrated or the band rule as well.
CURVE_RULES: tuple[str, ...] = ("knee", "plateau", "calibrated", "band")

#: Per-point arrays saved for every chunk of a curve run: the curve [n, T] and its knee [n].
CURVE_COLUMNS: tuple[str, ...] = ("curves", "knee_t0", "knee_lid", "knee_found")
#: Arrays added with the plateau rule: its choice [n] and the reliable levels [n, T].
PLATEAU_COLUMNS: tuple[str, ...] = ("plateau_t0", "plateau_lid", "plateau_flatness", "plateau_found", "reliable")
#: Arrays added with the calibrated rule: the model's calibration at every level [n, T] (the
#: level is chosen from the first points' once the chunks are joined).
CALIBRATED_COLUMNS: tuple[str, ...] = ("calibration",)


@dataclass
class CurveResult:
    """FLIPD curves of N points at T noise levels, with the knee chosen on each.

    Attributes:
        times, sigma, delta: the T noise levels (schedule time, noise std, log sigma/psi).
        curves: FLIPD estimates [N, T].
        knee_t0, knee_lid: [N] noise level and FLIPD at each point's knee (NaN t0 where none
            was found; the LID then falls back to the ambient dimension).
        knee_found: [N] bool.
        window: the window of reference times searched for knees (None: the whole grid).
        trace, n_probes: the trace estimator used.
        plateau_t0, plateau_lid, plateau_flatness, plateau_found: [N] the plateau rule's
            choice (:func:`flipd.plateau`) when it was asked for, else None.
        reliable: [N, T] bool, the levels where the model denoises each point reliably
            (plateau and calibrated rules).
        calibration: [N, T] the model's denoising calibration (calibrated and band rules).
        calibrated_ratio: the calibrated rule's tolerance (:func:`flipd.calibrated.calibrated_level`).
        band: whether the band rule chooses (:func:`flipd.calibrated.band_reading`, on the
            first points' curves at the band's levels).

    The calibrated (band) rule's choice, :attr:`level`, is derived from ``calibration`` (and
    ``curves``) when first asked for, so a chunked run chooses it once, from the first points of
    the whole run.
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
    plateau_t0: np.ndarray | None = None
    plateau_lid: np.ndarray | None = None
    plateau_flatness: np.ndarray | None = None
    plateau_found: np.ndarray | None = None
    reliable: np.ndarray | None = None
    calibration: np.ndarray | None = None
    calibrated_ratio: float = CALIBRATED_RATIO
    band: bool = False

    @cached_property
    def level(self) -> CalibratedLevel | None:
        """The calibrated rule's level, from the first :data:`~flipd.calibrated.CALIBRATION_POINTS`
        points' calibration (None unless the calibrated rule ran)."""
        if self.calibration is None:
            return None
        level = calibrated_level(self.calibration[:CALIBRATION_POINTS], self.times, ratio=self.calibrated_ratio)
        if not self.band:
            return level
        in_band = np.isin(self.times, calibrated_band(level).numpy())
        return band_reading(level, self.curves[:CALIBRATION_POINTS][:, in_band])

    def levels_read(self) -> np.ndarray:
        """[T] bool: the levels the calibrated or band rule reads every point at (all False for
        the other rules)."""
        if self.level is None:
            return np.zeros(self.times.size, dtype=bool)
        return np.isin(self.times, self.level.times_read().numpy())

    def chosen(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """The rule that chose and its choice per point: ``(rule, t0 [N], lid [N], found [N])``
        (the calibrated rule's found: the model denoises the point reliably at its level)."""
        if self.plateau_t0 is not None:
            return "plateau", self.plateau_t0, self.plateau_lid, self.plateau_found
        if self.level is not None:
            n = self.curves.shape[0]
            return ("band" if self.band else "calibrated", np.full(n, self.level.t0),
                    self.curves[:, self.levels_read()].mean(axis=1), self.reliable[:, self.level.index])
        return "knee", self.knee_t0, self.knee_lid, self.knee_found


def compute_curves(
    model: Model,
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    trace: str = "auto",
    n_probes: int = 1,
    seed: int = 0,
    indices=None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    rule: str = "knee",
) -> CurveResult:
    """FLIPD curves of the points ``x`` (in the model's coordinates) and their knees.

    The knees are found by :func:`flipd.knee` on the reference-time axis, as ``t0="knee"``
    finds them; when fewer than 3 of ``times`` lie in the knee rule's window, the whole grid
    is searched. ``progress`` is called with the number of points done after every batch of
    every noise level (N·T in all). With ``rule="plateau"`` the plateau rule is applied too,
    on the levels where the model denoises each point reliably, as ``t0="plateau"`` does (on
    its own grid, :func:`flipd.plateau_grid`, when ``times`` is that grid). With
    ``rule="calibrated"`` the model's calibration is measured at every level and the calibrated
    rule picks one level from the first points' (on ``times``, whatever they are).
    """
    if rule not in CURVE_RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, CURVE_RULES))}; got {rule!r}.")
    dim = int(x[0].numel())
    resolved_trace, resolved_probes = resolve_trace(trace, x.shape[1:], n_probes)
    with torch.no_grad(), warnings.catch_warnings():  # the caller reports results by the table's index
        warnings.simplefilter("ignore", EstimateWarning)
        curves = flipd_curve(
            model, x, times, trace=trace, n_probes=n_probes, seed=seed, indices=indices,
            batch_size=batch_size, progress=progress, encoded=True,
        ).detach().cpu().to(torch.float64)
    window = knee_window(model.schedule, times)
    found = knee(curves, times, schedule=model.schedule, ambient_dim=dim, window=window)
    result = CurveResult(
        times=times.numpy(), sigma=model.schedule.sigma(times).numpy(), delta=model.schedule.delta(times).numpy(),
        curves=curves.numpy(), knee_t0=found.t0.numpy(), knee_lid=found.lid.numpy(),
        knee_found=found.found.numpy(), window=window, trace=resolved_trace, n_probes=resolved_probes,
    )
    if rule in ("plateau", *DATA_SET_RULES):
        point_indices = torch.arange(x.shape[0]) if indices is None else torch.as_tensor(np.asarray(indices))
        calibration = denoising_calibration(
            model, x, times, schedule=model.schedule, prediction=model.prediction, seed=seed, indices=point_indices,
            batch_size=batch_size or 1024,
        )
        result.reliable = reliable_levels(calibration).numpy()
    if rule in DATA_SET_RULES:
        result.calibration = calibration.numpy()
        result.band = rule == "band"
    if rule == "plateau":
        chosen = plateau(curves, times, schedule=model.schedule, reliable=result.reliable)
        result.plateau_t0, result.plateau_lid = chosen.t0.numpy(), chosen.lid.numpy()
        result.plateau_flatness, result.plateau_found = chosen.flatness.numpy(), chosen.found.numpy()
    return result


def knee_window(schedule: Schedule, times: torch.Tensor) -> tuple[float, float] | None:
    """The window of reference times searched for knees on the curve grid ``times`` [T]: the
    knee rule's window, or None (the whole grid) when fewer than 3 of ``times`` lie in it."""
    reference = to_reference_time(schedule, times)
    if int(((reference > KNEE_WINDOW[0]) & (reference < KNEE_WINDOW[1])).sum()) < 3:
        return None
    return KNEE_WINDOW


@dataclass(frozen=True)
class CurveSettings:
    """The settings of a chunked curve run; a run can only be resumed with equal settings.

    Attributes:
        times: the T noise levels, increasing, in the model's time units.
        trace: "auto", "exact", "hutchinson" or "gaussian".
        n_probes: Hutchinson probes per point.
        seed: seed of the probes (and of the choice of points).
        batch_size: points per forward pass.
        chunk_size: points per saved chunk.
        rule: "knee", or "plateau", "calibrated" or "band" for that rule as well.
    """

    times: tuple[float, ...]
    trace: str = "auto"
    n_probes: int = 1
    seed: int = 0
    batch_size: int = 256
    chunk_size: int = 1024
    rule: str = "knee"

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        if self.rule not in CURVE_RULES:
            raise ValueError(f"rule must be one of {', '.join(map(repr, CURVE_RULES))}; got {self.rule!r}.")
        for name in ("n_probes", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")

    def time_grid(self) -> torch.Tensor:
        """The noise levels as a float64 tensor [T]."""
        return torch.tensor(self.times, dtype=torch.float64)

    def columns(self) -> tuple[str, ...]:
        """The arrays each chunk saves."""
        return CURVE_COLUMNS + {"plateau": PLATEAU_COLUMNS, "calibrated": CALIBRATED_COLUMNS,
                                "band": CALIBRATED_COLUMNS}.get(self.rule, ())

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["times"] = list(self.times)
        return record


def curve_chunks(model: Model, settings: CurveSettings) -> ChunkEstimator:
    """A :data:`~flipd.runs.chunks.ChunkEstimator` computing the curves and knees of
    :func:`compute_curves` (arrays :data:`CURVE_COLUMNS`) on points in the model's coordinates."""
    times = settings.time_grid()

    def run(x: torch.Tensor, indices: np.ndarray, progress: Callable[[int], None] | None):
        result = compute_curves(
            model, x, times, trace=settings.trace, n_probes=settings.n_probes, seed=settings.seed,
            indices=indices, batch_size=settings.batch_size, progress=progress, rule=settings.rule,
        )
        arrays = {"curves": result.curves, "knee_t0": result.knee_t0, "knee_lid": result.knee_lid,
                  "knee_found": result.knee_found}
        if settings.rule == "plateau":
            arrays.update({"plateau_t0": result.plateau_t0, "plateau_lid": result.plateau_lid,
                           "plateau_flatness": result.plateau_flatness, "plateau_found": result.plateau_found,
                           "reliable": result.reliable})
        if settings.rule in DATA_SET_RULES:
            arrays["calibration"] = result.calibration
        return arrays, {"trace": result.trace, "n_probes": result.n_probes}

    return run


def curves_from_chunks(schedule: Schedule, settings: CurveSettings, result: ChunkedEstimate, *,
                       calibrated_ratio: float = CALIBRATED_RATIO) -> CurveResult:
    """The :class:`CurveResult` of a chunked curve run (``result`` from
    :meth:`flipd.runs.chunks.ChunkedRun.collect` with ``columns=CURVE_COLUMNS``).

    ``calibrated_ratio`` is the calibrated rule's tolerance (>= 1). It only decides which level
    the result picks from the saved calibration, so it is not one of the run's settings: a run
    can be read again with another ratio.
    """
    check_ratio(calibrated_ratio)
    times = settings.time_grid()
    columns = result.columns
    rule_arrays = {}
    if settings.rule == "plateau":
        rule_arrays = {"plateau_t0": columns["plateau_t0"], "plateau_lid": columns["plateau_lid"],
                   "plateau_flatness": columns["plateau_flatness"],
                   "plateau_found": columns["plateau_found"].astype(bool), "reliable": columns["reliable"].astype(bool)}
    if settings.rule in DATA_SET_RULES:  # the result derives the level from the whole run's calibration
        calibration = columns["calibration"]
        rule_arrays = {"calibration": calibration, "reliable": reliable_levels(torch.from_numpy(calibration)).numpy()}
    return CurveResult(
        times=times.numpy(), sigma=schedule.sigma(times).numpy(), delta=schedule.delta(times).numpy(),
        curves=columns["curves"], knee_t0=columns["knee_t0"], knee_lid=columns["knee_lid"],
        knee_found=columns["knee_found"].astype(bool), window=knee_window(schedule, times),
        trace=result.trace, n_probes=result.n_probes, calibrated_ratio=float(calibrated_ratio),
        band=settings.rule == "band", **rule_arrays,
    )


def curve_table_columns(points: PointSet, curves: CurveResult) -> dict[str, Any]:
    """Long format, one row per (point, noise level): index, t0, sigma, delta, lid, knee (True
    on the row of the point's chosen knee), with the plateau rule also plateau (True on the
    middle row of the chosen stretch), flatness (of that stretch, per point) and reliable (the
    model denoises the point reliably at that level), with the calibrated rule calibrated (True
    on the rows of the level chosen for all the points), calibration and reliable, and ground
    truth when known."""
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
    if curves.plateau_t0 is not None:
        plateau_rows = np.zeros((n, t), dtype=bool)
        chosen = np.isfinite(curves.plateau_t0)
        plateau_rows[np.flatnonzero(chosen), np.argmin(np.abs(curves.times[None] - curves.plateau_t0[chosen, None]), axis=1)] = True
        columns["plateau"] = plateau_rows.reshape(-1)
        columns["plateau_found"] = np.repeat(curves.plateau_found, t)
        columns["flatness"] = np.repeat(curves.plateau_flatness, t)
    if curves.level is not None:
        columns["calibrated"] = np.tile(np.arange(t) == curves.level.index, n)
        if curves.band:  # the levels the band rule averages each point over
            columns["band"] = np.tile(curves.levels_read(), n)
        columns["calibration"] = curves.calibration.reshape(-1)
    if curves.reliable is not None:
        columns["reliable"] = curves.reliable.reshape(-1)
    if points.names is not None:
        columns["name"] = [name for name in points.names for _ in range(t)]
    for name, values in known_columns(points).items():
        columns[name] = np.repeat(np.asarray(values), t)
    return columns
