"""What the estimator checks before and after it runs: the points, the model, the trace
estimator and its probes, the model's outputs (shape, NaN or inf) and the estimates (finite,
inside [0, D]).

Every failure is a ``TypeError`` or ``ValueError`` whose message names the problem and the fix;
a model that returns NaN or inf raises :class:`NonFiniteOutputError` with the points' indices;
estimates that cannot be dimensions give an :class:`EstimateWarning` naming the points.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .models.base import Model, warn_if_training
from .parameterization import check_prediction
from .pil_images import as_tensor_if_pil
from .schedules import VP, Schedule

__all__ = [
    "AUTO_EXACT_MAX_DIM", "EstimateWarning", "ModelLike", "NonFiniteOutputError", "RANGE_TOLERANCE", "ScaleNotFoundWarning",
    "TRACES", "Trace",
    "out_of_range", "resolve_model", "resolve_trace", "warn_about_results",
]

#: What the estimator accepts as a model: a :class:`flipd.Model`, or a plain callable
#: ``model(y, t)`` with the schedule and prediction passed beside it.
ModelLike = Model | Callable[[Tensor, Tensor], Tensor]
Trace = Literal["auto", "exact", "hutchinson", "gaussian"]
TRACES: tuple[str, ...] = ("auto", "exact", "hutchinson", "rademacher", "gaussian")

#: Under trace="auto", the exact trace is used for vectors [N, D] up to this D (images always
#: get Hutchinson probes; see :func:`resolve_trace`).
AUTO_EXACT_MAX_DIM = 256


# --------------------------------------------------------------------------- result checks


class EstimateWarning(RuntimeWarning):
    """Some LID estimates are not finite, or lie outside [0, D] by more than their standard error."""


class ScaleNotFoundWarning(EstimateWarning):
    """A rule that chooses the noise level (knee, plateau, calibrated, band) found no scale for
    some points; the result's ``found`` is False there."""


#: Slack of the range check [0, D] for rounding, in dimensions per ambient dimension.
RANGE_TOLERANCE = 1e-4


def out_of_range(lid, stderr, ambient_dim: int) -> np.ndarray:
    """Which estimates are finite but outside [0, D] by more than their standard error.

    Args:
        lid: LID estimates [...] (tensor or array; dimensions).
        stderr: their standard errors, shaped like ``lid`` (NaN or 0 where there is none:
            the exact trace, one probe, baselines), or None.
        ambient_dim: D.

    Returns:
        Boolean array shaped like ``lid``. A NaN stderr counts as 0; a slack of
        :data:`RANGE_TOLERANCE`·D allows for rounding.
    """
    lid = np.asarray(lid.detach().cpu().to(torch.float64) if isinstance(lid, Tensor) else lid, dtype=np.float64)
    if stderr is None:
        slack = np.zeros_like(lid)
    else:
        values = stderr.detach().cpu().to(torch.float64) if isinstance(stderr, Tensor) else stderr
        slack = np.nan_to_num(np.broadcast_to(np.asarray(values, dtype=np.float64), lid.shape), nan=0.0)
    slack = np.abs(slack) + RANGE_TOLERANCE * ambient_dim
    with np.errstate(invalid="ignore"):
        return np.isfinite(lid) & ((lid < -slack) | (lid > ambient_dim + slack))


def warn_about_results(lid: Tensor, stderr: Tensor | None, ambient_dim: int, indices: Tensor, what: str) -> None:
    """Warn (:class:`EstimateWarning`) naming the points whose estimates are not finite or lie
    outside [0, D] by more than their standard error; ``indices`` [N] name the points."""
    values = lid.detach().cpu().to(torch.float64)
    if bool(torch.isfinite(values).all()) and not (values.min() < 0 or values.max() > ambient_dim):
        return  # the common case, decided by two reductions
    values = values.numpy()
    rows = values.reshape(values.shape[0], -1)
    bad_finite = ~np.isfinite(rows).all(axis=1)
    outside = out_of_range(values, stderr, ambient_dim).reshape(values.shape[0], -1).any(axis=1)
    problems = []
    for mask, name in ((bad_finite, "are not finite (NaN or inf)"),
                       (outside, f"lie outside [0, D = {ambient_dim}] by more than their standard error")):
        if mask.any():
            problems.append(f"{what} {_list(indices[torch.from_numpy(np.flatnonzero(mask))].tolist())} {name}")
    if problems:
        warnings.warn(
            "; ".join(problems) + ". Check those points (duplicates, outliers) and the noise level; "
            "silence with warnings.simplefilter('ignore', flipd.EstimateWarning).",
            EstimateWarning, stacklevel=3,
        )


# --------------------------------------------------------------------------- input checks


def _as_batch(x) -> Tensor:
    x = as_tensor_if_pil(x)  # PIL images: [N, C, H, W] in [-1, 1]
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor or numpy array of shape [N, ...]; got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point; got {x.dtype}. Convert with x.float().")
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape [N, ...] with a batch dimension; got shape {tuple(x.shape)}. "
            "For a single point use x[None]."
        )
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (N = 0); pass at least one point.")
    if x[0].numel() == 0:
        raise ValueError(f"x has no features per point (shape {tuple(x.shape)}).")
    if not _all_finite(x):
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"x has non-finite values (NaN or inf) at points {_list(bad)}; remove or fix them.")
    return x


def _all_finite(values: Tensor) -> bool:
    """Whether every entry is finite. A sum is non-finite whenever an entry is, so one cheap
    reduction settles the common case; the element-wise test runs only when the sum is not
    finite (a bad entry, or an overflowing sum of finite entries)."""
    if bool(torch.isfinite(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def _list(indices: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}] ({len(indices)} in all)"


def _is_diffusers_object(model: object) -> bool:
    return any(cls.__module__.split(".")[0] == "diffusers" for cls in type(model).__mro__)


def resolve_model(
    model: ModelLike,
    x: Tensor,
    *,
    schedule: Schedule | None,
    prediction: str | None,
    encoded: bool,
) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor, Schedule, str]:
    """``(callable, x in model coordinates, schedule, prediction)`` for a model and its points.

    A :class:`flipd.Model` brings its own schedule, prediction and coordinate map (applied to
    ``x`` unless ``encoded``); a ``schedule=`` or ``prediction=`` that contradicts it raises. A
    plain callable gets ``schedule`` (default the reference ``VP()``) and ``prediction``
    (default "epsilon"), and ``x`` is used as it is. A model whose torch modules have dropout
    or batch norm in training mode gets a ``RuntimeWarning`` (:func:`flipd.models.base.warn_if_training`).
    """
    warn_if_training(model)
    if isinstance(model, Model):
        if schedule is not None and schedule != model.schedule:
            raise ValueError(
                f"schedule={schedule!r} contradicts the model's own schedule {model.schedule!r}; "
                "drop schedule= (a flipd.Model brings its schedule)."
            )
        if prediction is not None and prediction != model.prediction:
            raise ValueError(
                f"prediction={prediction!r} contradicts the model's own prediction {model.prediction!r}; "
                "drop prediction= (a flipd.Model brings its prediction type)."
            )
        return model, (x if encoded else _as_batch(model.encode(x))), model.schedule, model.prediction
    if _is_diffusers_object(model):
        raise TypeError(
            f"A diffusers {type(model).__name__} cannot be called as model(y, t) directly: wrap it with "
            "flipd.from_diffusers(pipeline) (or from_diffusers(unet, scheduler=...)) first."
        )
    if not callable(model):
        raise TypeError(f"model must be a flipd.Model or a callable model(y, t); got {type(model).__name__}.")
    schedule = VP() if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a flipd.schedules.Schedule; got {type(schedule).__name__}.")
    prediction = "epsilon" if prediction is None else prediction
    check_prediction(prediction)
    return model, x, schedule, prediction


def _as_indices(indices, n: int) -> Tensor:
    """Global point indices [n] int64 (default 0..n-1)."""
    if indices is None:
        return torch.arange(n, dtype=torch.int64)
    if isinstance(indices, range):
        indices = list(indices)
    values = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"indices must be integers (the points' global indices); got dtype {values.dtype}.")
    values = values.to(torch.int64).flatten().cpu()
    if values.shape[0] != n:
        raise ValueError(f"indices must have one entry per point: {n}; got {values.shape[0]}.")
    if n and int(values.min()) < 0:
        raise ValueError(f"indices must be non-negative; got {int(values.min())}.")
    return values


def resolve_trace(trace: str, point_shape: int | Sequence[int], n_probes: int) -> tuple[str, int]:
    """The trace estimator and probe count that ``trace`` means for points of ``point_shape``.

    ``point_shape`` is the shape of one point, ``(D,)`` for vectors and ``(C, H, W)`` for
    images (an int D means a vector). Under "auto" the rule is: **exact for vectors [N, D]
    with D ≤ 256** (:data:`AUTO_EXACT_MAX_DIM`), **Hutchinson for everything else** — images
    of any size, and vectors with D > 256. The exact trace costs D vector-Jacobian products per
    point: for an MLP each costs about one forward pass (README, Speed) and removes the probe
    noise, which is worth it at small D; for a convolutional U-net on a 16×16 image (D = 256)
    it took 53–71 times as long per image as 4 Hutchinson probes (one thread, ``python
    -m flipd.bench trace_cost``), so image inputs get Hutchinson probes (``n_probes`` of them,
    with a standard error).
    """
    if trace not in TRACES:
        raise ValueError(f"Unknown trace {trace!r}; use one of {', '.join(TRACES)}.")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer; got {n_probes!r}.")
    shape = (int(point_shape),) if isinstance(point_shape, (int, np.integer)) else tuple(int(s) for s in point_shape)
    dim = math.prod(shape)
    if trace == "auto":
        trace = "exact" if len(shape) == 1 and dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    if trace == "rademacher":
        trace = "hutchinson"
    return trace, (dim if trace == "exact" else n_probes)


class NonFiniteOutputError(ValueError):
    """The model returned NaN or inf for some points.

    Attributes:
        indices: the global indices of every point found with a non-finite output (int list).
        n_points: how many points were checked.
        time: the time (schedule units) of the failing call when all its points shared one, else None.
    """

    def __init__(self, indices: Sequence[int], n_points: int, time: float | None = None) -> None:
        self.indices = [int(i) for i in indices]
        self.n_points = int(n_points)
        self.time = time
        at = f" at t = {time:.4g}" if time is not None else ""
        super().__init__(
            f"The model returned non-finite values (NaN or inf){at} for {len(self.indices)} of {self.n_points} "
            f"points, at indices {_list(self.indices)}; check those inputs, the model's weights, and that "
            "t0 is inside the range it was trained on."
        )


def _non_finite_rows(output: Tensor) -> Tensor:
    """Positions [k] of the rows of ``output`` [n, ...] with a NaN or inf entry."""
    finite = torch.isfinite(output.detach().reshape(output.shape[0], -1)).all(dim=1)
    return torch.nonzero(~finite).flatten().cpu()


def _output_checker(shape: torch.Size, indices: Tensor) -> Callable[[Tensor], None]:
    def check(output: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"The model returned {type(output).__name__}, not a tensor. Wrap it with "
                "flipd.ModelAdapter(..., output=...) to pick the tensor out."
            )
        if output.shape != shape:
            raise ValueError(
                f"The model returned shape {tuple(output.shape)} for input of shape {tuple(shape)}; "
                "it must return a tensor shaped like its input (check x's shape and the model)."
            )
        if not _all_finite(output.detach()):
            raise NonFiniteOutputError(indices[_non_finite_rows(output)].tolist(), shape[0])

    return check
