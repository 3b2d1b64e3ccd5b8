"""The estimate job: LID of every point with FLIPD or a baseline, chunked and resumable.

:func:`plan_estimate` resolves the settings (the noise level through :mod:`flipd.noise`) and
builds the chunk estimator; :func:`flipd.runs.chunks.estimate_in_chunks` runs it; the table
columns come from :func:`estimate_table_columns`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..datasets.sources import PointSet
from ..calibrated import CALIBRATION_POINTS, CalibratedLevel, check_ratio
from ..estimator import (
    AUTO_RULES, DATA_SET_RULES, EstimateWarning, NonFiniteOutputError, calibrated_t0, check_options, estimate,
    non_finite_outputs, resolve_trace,
)
from ..methods import METHODS as METHOD_REGISTRY
from ..methods import MODEL_METHODS
from ..models.base import Model
from ..results import LIDResult
from ..noise import CALIBRATED_RATIO, check_noise_level, default_noise_level, rule_named
from ..runs.chunks import ChunkedEstimate, ChunkEstimator
from .inputs import LoadedModel
from .records import known_columns, non_finite_output_error

__all__ = [
    "METHODS",
    "MODEL_METHODS",
    "EstimatePlan",
    "EstimateSettings",
    "TRACE_METHODS",
    "check_method_options",
    "estimate_table_columns",
    "flipd_chunks",
    "method_chunks",
    "non_finite_outputs_error",
    "plan_estimate",
]


#: LID estimators ``flipd estimate --method`` runs: the names of :data:`flipd.methods.METHODS`.
METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)


#: Methods that take a trace estimator and Hutchinson probes.
TRACE_METHODS: tuple[str, ...] = tuple(name for name, method in METHOD_REGISTRY.items() if "trace" in method.defaults)


def check_method_options(
    method: str, *, noise: dict[str, Any] | None = None, n_neighbors: int | None = None, trace: str = "auto",
    n_probes: int = 1,
) -> None:
    """Refuse options that ``method`` does not take, before any model or data is loaded.

    Args:
        method: one of :data:`METHODS`.
        noise: the noise level as given (``{"t0": 0.05}``, ``{"t0": "auto"}``, ...), or {}.
        n_neighbors: neighbourhood size (classical methods only).
        trace, n_probes: trace estimator and probes (:data:`TRACE_METHODS` only; the
            defaults "auto" and 1 pass for every method).

    Raises:
        ValueError: an unknown method, or an option it does not take (the message names it).
    """
    noise = noise or {}
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
    if len(noise) > 1:
        raise ValueError(f"Give the noise level once (t0, sigma or delta); got {', '.join(noise)}.")
    if noise and not METHOD_REGISTRY[method].reads_noise_level:
        raise ValueError(f"The {method} method takes no noise level; drop --{next(iter(noise))}.")
    t0 = noise.get("t0")
    if isinstance(t0, str) and (t0 not in AUTO_RULES or method != "flipd"):
        raise ValueError(f"t0 must be a number, or one of {', '.join(AUTO_RULES)} with the flipd method; got {t0!r}.")
    if n_neighbors is not None and "n_neighbors" not in METHOD_REGISTRY[method].defaults:
        raise ValueError(f"n_neighbors (--neighbors) applies to the classical methods, not {method}.")
    if method not in TRACE_METHODS and (trace != "auto" or n_probes != 1):
        option = "--trace" if trace != "auto" else "--probes"
        raise ValueError(f"The {method} method takes no trace estimator or probes; drop {option}.")


@dataclass(frozen=True)
class EstimateSettings:
    """The settings of an estimation run; a run can only be resumed with equal settings.

    Attributes:
        method: "flipd" or a baseline of :mod:`flipd.baselines` (see :data:`METHODS`).
        t0: noise level as a time of the model's schedule, or a rule of
            :data:`flipd.estimator.AUTO_RULES` ("knee": the knee rule; "plateau"; "calibrated":
            one level for the table, chosen from its first points; "band", stored for "auto"
            too: the calibrated level's band, chosen likewise).
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
        given = [name for name in ("t0", "sigma", "delta") if getattr(self, name) is not None]
        if self.method == "flipd" and not given:
            raise ValueError("FLIPD needs a noise level: give t0, sigma or delta.")
        check_method_options(self.method, noise={name: getattr(self, name) for name in given},
                             n_neighbors=self.n_neighbors, trace=self.trace, n_probes=self.n_probes)
        check_options(self.seed, self.batch_size, None, self.mode)
        resolve_trace(self.trace, 1, self.n_probes)
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {self.chunk_size!r}.")
        # "auto" is stored as the rule it stands for, so a run begun under another meaning of
        # "auto" (the knee rule before) is not resumed with this one.
        object.__setattr__(self, "t0", rule_named(self.t0))

    def noise_level(self) -> dict[str, Any]:
        """The noise level as a keyword argument (``{"t0": ...}``, ...), or {} when none is set."""
        return {name: getattr(self, name) for name in ("t0", "sigma", "delta") if getattr(self, name) is not None}

    def method_settings(self) -> dict[str, Any]:
        """The method's own settings among these (trace and probes for FLIPD, k for lPCA, ...)."""
        own = {"trace": self.trace, "n_probes": self.n_probes, "mode": self.mode, "n_neighbors": self.n_neighbors}
        defaults = METHOD_REGISTRY[self.method].defaults
        return {name: value for name, value in own.items() if name in defaults and value is not None}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def method_chunks(settings: EstimateSettings, model: Model | None = None, batch: dict[str, int] | None = None,
                  level: CalibratedLevel | None = None, head: LIDResult | None = None) -> ChunkEstimator:
    """A :data:`~flipd.runs.chunks.ChunkEstimator` running ``METHODS[settings.method]`` (FLIPD or a
    baseline, one calling convention) on points already in the model's coordinates.

    Probes and noisy copies depend on the seed and each point's global index, so a chunk's
    result does not depend on the chunking or on other chunks. The facts returned beside the
    arrays are the result's trace, probes and mode, and the method's resolved settings.
    Classical estimators find each point's neighbours among the points of its chunk: give them
    one chunk for all points.

    ``batch`` (``{"used": ...}``) is updated with the batch size that ran: when a FLIPD batch
    runs out of GPU memory the estimator halves it, and later chunks start from the halved size.
    With ``t0="calibrated"`` (or ``"band"``), ``level`` is the data set's level (chosen once by
    :func:`plan_estimate`: :func:`flipd.calibrated_t0`, or the ``level`` of ``flipd.estimate(...,
    t0="band")`` on the first points), so every chunk is read at it (at its ``read_times``).
    ``head``, if given, is the result of the table's first points (global indices
    0..len(head)-1) at that level, kept from the choice: their rows are taken from it, not
    computed again.
    """
    method = METHOD_REGISTRY[settings.method]
    batch = {"used": settings.batch_size} if batch is None else batch
    noise = settings.noise_level()
    if settings.t0 in DATA_SET_RULES:
        if level is None:
            raise ValueError(f"t0={settings.t0!r} needs the data set's level: pass "
                             f"level=flipd.calibrated_t0(model, x{', band=True' if settings.t0 == 'band' else ''}).")
        noise = {"t0": level}
    kept = None if head is None else _chunk_arrays(head)

    def run(x: torch.Tensor, indices: np.ndarray, progress: Callable[[int], None] | None):
        indices = np.asarray(indices)
        known = np.zeros(len(indices), dtype=bool) if kept is None else indices < len(head)
        result = head
        if known.any() and progress is not None:  # the kept rows are done
            progress(int(known.sum()))
        if not known.all():
            with warnings.catch_warnings():  # the job reports results over all chunks, by the table's index
                warnings.simplefilter("ignore", EstimateWarning)
                result = method(
                    x[torch.from_numpy(~known).to(x.device)] if known.any() else x, model, **noise,
                    seed=settings.seed, indices=indices[~known], batch_size=batch["used"], progress=progress,
                    encoded=True, **settings.method_settings(),
                )
        batch["used"] = result.batch_size or batch["used"]
        info = {"trace": result.trace, "n_probes": result.n_probes, "mode": result.mode,
                "resolved": dict(result.settings), "batch_size": batch["used"]}
        if not known.any():
            return _chunk_arrays(result), info
        computed = _chunk_arrays(result) if result is not head else None
        arrays = {}
        for name, values in kept.items():
            arrays[name] = np.empty(len(indices), dtype=values.dtype)
            arrays[name][known] = values[indices[known]]
            if computed is not None:
                arrays[name][~known] = computed[name]
        return arrays, info

    return run


def _chunk_arrays(result: LIDResult) -> dict[str, np.ndarray]:
    """A chunk's arrays [n] from its result: the columns, and what the rule found per point."""
    arrays = result.columns()
    if result.plateau_found is not None:  # the plateau rule: did it find a plateau, how flat there
        arrays["plateau_found"] = result.plateau_found.cpu().numpy().astype(np.float64)
        arrays["flatness"] = result.flatness.cpu().to(torch.float64).numpy()
    if result.reliable is not None:  # the calibrated rule: is the point denoised reliably at the level
        arrays["reliable"] = result.reliable.cpu().numpy().astype(np.float64)
    return arrays


def flipd_chunks(model: Model, settings: EstimateSettings) -> ChunkEstimator:
    """:func:`method_chunks` for FLIPD (the settings' method must be "flipd")."""
    if settings.method != "flipd":
        raise ValueError(f"flipd_chunks needs settings with method 'flipd'; got {settings.method!r}.")
    return method_chunks(settings, model)


def estimate_table_columns(
    points: PointSet, result: ChunkedEstimate, method: str = "flipd", *, knee_rule: bool = False,
) -> dict[str, Any]:
    """One row per point: index, [name], lid, noise level (t0, sigma, delta), method, trace,
    n_probes, ambient_dim, stderr (NaN where there is none: exact traces and baselines),
    knee_found (with the knee rule, ``knee_rule=True``), plateau_found and flatness (with the
    plateau rule), and ground truth, label, PNG size when known, so the table stands without its
    JSON sidecar."""
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
        "ambient_dim": np.full(n, int(np.prod(points.point_shape)), dtype=np.int64),
        "stderr": np.where(result.trace == "exact", np.nan, result.columns["stderr"]),
    })
    if knee_rule:
        columns["knee_found"] = np.isfinite(result.columns["t0"])
    if "plateau_found" in result.columns:  # the plateau rule: did it find a plateau, how flat there
        columns["plateau_found"] = result.columns["plateau_found"] == 1.0
        columns["flatness"] = result.columns["flatness"]
    if "reliable" in result.columns:  # the calibrated rule: is the point denoised reliably at the level
        columns["reliable"] = result.columns["reliable"] == 1.0
    columns.update(known_columns(points))
    return columns


@dataclass
class EstimatePlan:
    """What an estimation run will do: its settings, the chunk estimator, and its input.

    Attributes:
        x: the points in the model's coordinates: a tensor, or streamed points
            (:class:`~flipd.datasets.streaming.PreparedPoints`) read by ``len(x)`` and
            ``x[start:stop]`` only.
        batch: ``{"used": batch size}``, updated as chunks run (smaller than
            ``settings.batch_size`` after a batch ran out of GPU memory).
    """

    settings: Any
    estimator: Callable
    x: Any
    noise: dict[str, Any]
    batch: dict[str, int] = field(default_factory=dict)
    level: CalibratedLevel | None = None


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
    calibrated_ratio: float = CALIBRATED_RATIO,
) -> EstimatePlan:
    """Resolve the settings of an estimation with ``method`` and build its chunk estimator.

    FLIPD without a noise level gets :func:`default_noise_level`; a noise level the model's
    schedule cannot reach is refused before anything runs. Classical estimators need no model,
    run on the points flattened to vectors, and take all points as one chunk (each point's
    neighbours are searched among all points). With ``t0="calibrated"`` the table's level is
    chosen here with the rule's tolerance ``calibrated_ratio`` (>= 1,
    :func:`flipd.calibrated_t0`); with ``t0="band"`` the band rule's levels as well, by
    ``flipd.estimate(..., t0="band")`` on the first min(N, 2048) points, whose FLIPD the chunks
    then take rather than compute again (so that work runs here, before the chunks). The level
    (and the levels read), not the ratio, are part of the run's identity.

    Raises:
        ValueError: the method needs a model and none was given, or the settings do not fit.
    """
    check_ratio(calibrated_ratio)
    noise = {name: value for name, value in (("t0", t0), ("sigma", sigma), ("delta", delta)) if value is not None}
    if method in MODEL_METHODS:
        if model is None:
            raise ValueError(f"The {method} method needs a diffusion model (a checkpoint from flipd train, or a diffusers folder).")
        if method == "flipd" and not noise:
            noise = default_noise_level(model.schedule)
        if noise:
            check_noise_level(model.schedule, noise)
        x = model.prepare(points)
    else:
        x = points.tensor().reshape(points.n, -1)  # neighbours are searched among all points
        chunk_size = max(1, points.n)
    settings = EstimateSettings(
        method=method, **noise, trace=trace, n_probes=n_probes, seed=seed, batch_size=batch_size,
        chunk_size=chunk_size, n_neighbors=n_neighbors,
    )
    batch = {"used": batch_size}
    level = head = None
    if settings.t0 == "band":  # the band rule reads its first points at every level of the band: keep them
        with warnings.catch_warnings():  # the job reports results over all points, by the table's index
            warnings.simplefilter("ignore", EstimateWarning)
            head = estimate(model.model, x[: min(len(x), CALIBRATION_POINTS)], t0="band", seed=seed,
                            batch_size=batch_size, encoded=True, calibrated_ratio=calibrated_ratio,
                            **settings.method_settings())
        batch["used"] = head.batch_size or batch_size
        head.settings = {**head.settings, "batch_size": batch["used"]}  # as every chunk's (the flipd method's)
        level = head.level
    elif settings.t0 in DATA_SET_RULES:  # one level for the whole table, from its first points
        level = calibrated_t0(model.model, x[: min(len(x), CALIBRATION_POINTS)], seed=seed, batch_size=batch_size,
                              encoded=True, ratio=calibrated_ratio, trace=trace, n_probes=n_probes)
    estimator = method_chunks(settings, model.model if method in MODEL_METHODS else None, batch, level, head)
    return EstimatePlan(settings=settings, estimator=estimator, x=x, noise=noise, batch=batch, level=level)


def non_finite_outputs_error(error: NonFiniteOutputError, plan: EstimatePlan, model: Model, points: PointSet) -> ValueError:
    """The error to show when the model returned NaN or inf in a chunk: every such point of the
    run at that noise level, named by the table's index column. The points after the failing
    ones are checked with forward passes only (earlier chunks were finished without a fault)."""
    positions = list(error.indices)
    start = max(positions, default=points.n) + 1
    if error.time is not None and start < points.n:
        step = plan.settings.chunk_size  # chunk by chunk: streamed points are read a chunk at a time
        for first in range(start, points.n, step):
            last = min(points.n, first + step)
            positions += non_finite_outputs(
                model, plan.x[first:last], error.time, indices=range(first, last),
                batch_size=plan.settings.batch_size, encoded=True,
            )
    return non_finite_output_error(sorted(set(positions)), points, error.time)
