"""The estimate job: LID of every point with FLIPD or a baseline, chunked and resumable.

:func:`plan_estimate` resolves the settings (the noise level through :mod:`flipd.noise`) and
builds the chunk estimator; :func:`flipd.runs.chunks.estimate_in_chunks` runs it; the table
columns come from :func:`estimate_table_columns`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..baselines import BASELINES, NB_REFERENCE_DELTA
from ..datasets.sources import PointSet
from ..estimator import estimate
from ..models.base import Model
from ..noise import check_noise_level, default_noise_level, resolve_time
from ..runs.chunks import ChunkedEstimate, ChunkEstimator
from .inputs import LoadedModel
from .records import known_columns

__all__ = [
    "METHODS",
    "MODEL_METHODS",
    "EstimatePlan",
    "EstimateSettings",
    "baseline_chunks",
    "estimate_table_columns",
    "flipd_chunks",
    "plan_estimate",
]


#: LID estimators ``flipd estimate --method`` runs: FLIPD and the baselines of :mod:`flipd.baselines`.
METHODS: tuple[str, ...] = ("flipd", *BASELINES)
#: Methods that need a diffusion model.
MODEL_METHODS: tuple[str, ...] = ("flipd", *(name for name, baseline in BASELINES.items() if baseline.needs_model))


@dataclass(frozen=True)
class EstimateSettings:
    """The settings of an estimation run; a run can only be resumed with equal settings.

    Attributes:
        method: "flipd" or a baseline of :mod:`flipd.baselines` (see :data:`METHODS`).
        t0: noise level as a time of the model's schedule, or "auto" for the knee rule.
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
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; use one of {', '.join(METHODS)}.")
        given = [name for name in ("t0", "sigma", "delta") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"Give the noise level once (t0, sigma or delta); got {', '.join(given)}.")
        if self.method == "flipd" and not given:
            raise ValueError("FLIPD needs a noise level: give t0, sigma or delta.")
        if given and self.method not in ("flipd", "nb"):
            raise ValueError(f"The {self.method} method takes no noise level; drop --{given[0]}.")
        if isinstance(self.t0, str) and (self.t0 != "auto" or self.method != "flipd"):
            raise ValueError(f"t0 must be a number, or 'auto' with the flipd method; got {self.t0!r}.")
        if self.n_neighbors is not None and self.method in MODEL_METHODS:
            raise ValueError(f"n_neighbors applies to the classical methods, not {self.method}.")
        for name in ("n_probes", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")

    def noise_level(self) -> dict[str, Any]:
        """The noise level as a keyword argument (``{"t0": ...}``, ...), or {} when none is set."""
        return {name: getattr(self, name) for name in ("t0", "sigma", "delta") if getattr(self, name) is not None}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _flipd_arrays(result) -> dict[str, np.ndarray]:
    return {
        "lid": result.lid.detach().cpu().to(torch.float64).numpy(),
        "t0": result.t0.cpu().numpy(),
        "sigma": result.sigma.cpu().numpy(),
        "delta": result.delta.cpu().numpy(),
        "stderr": result.stderr.cpu().to(torch.float64).numpy(),
    }


def flipd_chunks(model: Model, settings: EstimateSettings, batch: dict[str, int] | None = None) -> ChunkEstimator:
    """A :data:`~flipd.runs.chunks.ChunkEstimator` running :func:`flipd.estimate` with ``settings``
    on points already in the model's coordinates. Probes depend on the seed and each point's
    global index, so a chunk's result does not depend on the chunking or on other chunks.

    ``batch`` (``{"used": ...}``) is updated with the batch size that ran: when a batch runs
    out of GPU memory the estimator halves it, and later chunks start from the halved size."""
    batch = {"used": settings.batch_size} if batch is None else batch

    def run(x: torch.Tensor, indices: np.ndarray, progress: Callable[[int], None] | None):
        result = estimate(
            model, x, **settings.noise_level(), trace=settings.trace, n_probes=settings.n_probes,
            seed=settings.seed, indices=indices, batch_size=batch["used"], mode=settings.mode,
            progress=progress, encoded=True,
        )
        batch["used"] = result.batch_size or batch["used"]
        info = {"trace": result.trace, "n_probes": result.n_probes, "mode": result.mode, "batch_size": batch["used"]}
        return _flipd_arrays(result), info

    return run


def baseline_chunks(settings: EstimateSettings, *, model: Model | None = None) -> ChunkEstimator:
    """A :data:`~flipd.runs.chunks.ChunkEstimator` running the baseline ``settings.method`` of
    :mod:`flipd.baselines` (on points in the model's coordinates for model-based baselines).

    The noise level columns hold the level the normal bundle used (NaN for the other
    baselines, which use several or none); stderr is NaN. Classical estimators find each
    point's neighbours among the points of its chunk: give them one chunk for all points.
    """
    baseline = BASELINES[settings.method]

    def run(x: torch.Tensor, indices: np.ndarray, progress: Callable[[int], None] | None):
        overrides: dict[str, Any] = {}
        if settings.method == "nb":
            noise = settings.noise_level()
            overrides = {"seed": settings.seed, "indices": indices, "encoded": True,
                         **({"t": noise["t0"]} if "t0" in noise else noise)}
        elif settings.method == "fpregress":
            overrides = {"seed": settings.seed, "indices": indices, "encoded": True, "trace": settings.trace,
                         "n_probes": settings.n_probes, "batch_size": settings.batch_size}
        elif settings.n_neighbors is not None:
            overrides = {"n_neighbors": settings.n_neighbors}
        with torch.no_grad():
            lid = np.asarray(baseline(x, model=model, **overrides), dtype=np.float64)
        n = lid.shape[0]
        levels = {name: np.full(n, np.nan) for name in ("t0", "sigma", "delta")}
        if settings.method == "nb":
            noise = settings.noise_level()
            time = resolve_time(model.schedule, **noise, default_delta=NB_REFERENCE_DELTA)
            time64 = torch.tensor(time, dtype=torch.float64)
            levels = {"t0": np.full(n, time), "sigma": np.full(n, float(model.schedule.sigma(time64))),
                      "delta": np.full(n, float(model.schedule.delta(time64)))}
        if progress is not None:
            progress(n)
        trace = settings.trace if settings.method == "fpregress" else "none"
        probes = settings.n_probes if settings.method == "fpregress" else 0
        return {"lid": lid, **levels, "stderr": np.full(n, np.nan)}, {"trace": trace, "n_probes": probes, "mode": "none"}

    return run


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
    if method == "flipd":
        estimator = flipd_chunks(model.model, settings, batch)
    elif method in MODEL_METHODS:
        estimator = baseline_chunks(settings, model=model.model)
    else:
        estimator = baseline_chunks(settings)
    return EstimatePlan(settings=settings, estimator=estimator, x=x, noise=noise, batch=batch)
