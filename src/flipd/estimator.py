"""The FLIPD estimator of local intrinsic dimension.

For a diffusion model with Gaussian transitions x_t = psi(t)·x_0 + sigma(t)·eps and score
s(y, t) = ∇_y log p_t(y), the local intrinsic dimension of a data point x is estimated as

    FLIPD(x, t0) = D + sigma(t0)² · [tr ∇_y s(y, t0) + ‖s(y, t0)‖²],   y = psi(t0)·x,

with D the ambient dimension (Kamkari et al., NeurIPS 2024). The network may output any of
the parameterisations in :mod:`flipd.parameterization`; the trace is exact (D basis probes) or
Hutchinson's estimate with random probes (:mod:`flipd.trace`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .knee import REFERENCE_SCHEDULE, knee, reference_knee_grid
from .parameterization import check_prediction, score_coefficients
from .schedules import VP, Schedule
from .trace import MODES, basis_probes, quadratic_forms, random_probes

Model = Callable[[Tensor, Tensor], Tensor]
Trace = Literal["auto", "exact", "hutchinson", "gaussian"]
TRACES: tuple[str, ...] = ("auto", "exact", "hutchinson", "rademacher", "gaussian")

#: Under trace="auto", the exact trace is used up to this ambient dimension.
AUTO_EXACT_MAX_DIM = 256
#: Default number of points per forward pass when ``batch_size`` is None.
DEFAULT_BATCH_SIZE = 1024
#: Default cap on (point, probe) pairs differentiated in one vectorised call.
DEFAULT_CHUNK_ROWS = 4096

__all__ = ["FLIPDResult", "Model", "flipd", "estimate", "flipd_curve"]


@dataclass
class FLIPDResult:
    """Everything :func:`estimate` measured, one entry per point.

    Attributes:
        lid: FLIPD estimates, [N] (dimensions).
        t0: noise level used per point, in the schedule's time units, [N] float64.
        sigma: noise standard deviation sigma(t0) per point, [N] float64.
        delta: log(sigma/psi) per point, [N] float64.
        stderr: standard error of each Hutchinson estimate, [N] (NaN for one probe; zeros
            for the exact trace).
        trace: "exact", "hutchinson" (Rademacher probes) or "gaussian".
        n_probes: probes per point (D for the exact trace).
        mode: differentiation mode that ran ("reverse" or "forward").
    """

    lid: Tensor
    t0: Tensor
    sigma: Tensor
    delta: Tensor
    stderr: Tensor
    trace: str
    n_probes: int
    mode: str


# --------------------------------------------------------------------------- input checks


def _as_batch(x) -> Tensor:
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


def _resolve_times(n: int, schedule: Schedule, t0, sigma, delta) -> Tensor:
    """Turn exactly one of t0 / sigma / delta into times [n] (float64) inside the schedule."""
    given = {name: value for name, value in (("t0", t0), ("sigma", sigma), ("delta", delta)) if value is not None}
    if len(given) != 1:
        raise ValueError(
            "Give the noise level exactly once: t0= (schedule time), sigma= (noise std) or "
            f"delta= (log sigma/psi); got {', '.join(given) or 'none'}."
        )
    (name, value), = given.items()
    value = torch.as_tensor(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=torch.float64)
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a scalar or have shape [N] = [{n}]; got shape {tuple(value.shape)}.")
    if name == "t0":
        times = schedule.check_t(value, "t0")
    elif name == "sigma":
        if (value <= 0).any():
            raise ValueError(f"sigma must be positive; got {value.min().item():g}.")
        times = schedule.check_t(schedule.t_from_sigma(value), "t0 (from sigma)")
    else:
        times = schedule.check_t(schedule.t_from_delta(value), "t0 (from delta)")
    return times.expand(n).clone() if times.ndim == 0 or times.shape[0] == 1 else times


def _resolve_trace(trace: str, dim: int, n_probes: int) -> tuple[str, int]:
    if trace not in TRACES:
        raise ValueError(f"Unknown trace {trace!r}; use one of {', '.join(TRACES)}.")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer; got {n_probes!r}.")
    if trace == "auto":
        trace = "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    if trace == "rademacher":
        trace = "hutchinson"
    return trace, (dim if trace == "exact" else n_probes)


def _output_checker(shape: torch.Size, offset: int) -> Callable[[Tensor], None]:
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
            finite = torch.isfinite(output.detach().reshape(shape[0], -1)).all(dim=1)
            bad = (torch.nonzero(~finite).flatten() + offset).tolist()
            raise ValueError(
                f"The model returned non-finite values at points {_list(bad)}; check those inputs, "
                "the model's weights, and that t0 is inside the range it was trained on."
            )

    return check


# --------------------------------------------------------------------------- core


def _distinct_times(times: Tensor) -> Tensor:
    """``times[:1]`` when every point shares one time (the usual case), else ``times``.

    Schedule functions then run on one element and broadcast: transcendental functions on
    [N]-sized float64 tensors can cost milliseconds each on a busy multi-threaded CPU.
    """
    return times[:1] if bool((times == times[0]).all()) else times


def _noise_terms(schedule: Schedule, prediction: str, times: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(psi, sigma, a, b)`` at ``times`` (float64, shaped like ``times``); score = a·f + b·y."""
    psi, sigma = schedule.psi(times), schedule.sigma(times)
    return psi, sigma, *score_coefficients(prediction, schedule, times, psi=psi, sigma=sigma)


def _probe_seed(seed: int, offset: int) -> int:
    """Seed for the probes of the batch starting at point ``offset`` (independent of t0)."""
    return (seed * 0x9E3779B97F4A7C15 + offset) % 2**63


def _score_norm_sq(output: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """‖a·output + b·y‖² per row of [n, D] tensors, in float64 (a, b: [1] or [n] float64).

    For score and epsilon outputs b is 0 and the norm is a²·‖output‖², with no [n, D]
    temporary; otherwise the score is formed first (a·f and b·y nearly cancel at small noise).
    """
    if not bool((b == 0).all()):
        score = torch.addcmul(b.to(output)[:, None] * y, a.to(output)[:, None], output)
        return torch.linalg.vecdot(score, score).to(torch.float64)
    return a**2 * torch.linalg.vecdot(output, output).to(torch.float64)


def _flipd_batch(
    model: Model,
    x: Tensor,
    times: Tensor,
    *,
    offset: int,
    terms: tuple[Tensor, Tensor, Tensor, Tensor],
    trace: str,
    n_probes: int,
    seed: int,
    chunk_rows: int,
    mode: str,
) -> tuple[Tensor, Tensor, str]:
    """FLIPD and its standard error for one batch x [n, ...] at times [n] (float64).

    ``terms`` are :func:`_noise_terms` of the batch's times, each [1] (a time shared by every
    point) or [n].
    """
    n, dim = x.shape[0], x[0].numel()
    broadcast = (-1,) + (1,) * (x.ndim - 1)
    psi, sigma, a, b = terms
    y = psi.to(x).reshape(broadcast) * x
    t_model = times.to(device=x.device, dtype=x.dtype)
    probes_per_call = max(1, chunk_rows // n)

    def probes():
        if trace == "exact":
            return basis_probes(y.shape, probes_per_call, dtype=y.dtype, device=y.device)
        generator = torch.Generator(device=y.device).manual_seed(_probe_seed(seed, offset))
        distribution = "gaussian" if trace == "gaussian" else "rademacher"
        return random_probes(
            y.shape, n_probes, probes_per_call, distribution=distribution,
            generator=generator, dtype=y.dtype, device=y.device,
        )

    output, forms, mode_used = quadratic_forms(
        lambda inputs: model(inputs, t_model), y, probes, mode=mode,
        check_output=_output_checker(y.shape, offset),
    )
    forms = forms.to(torch.float64)
    trace_estimate = forms.sum(0) if trace == "exact" else forms.mean(0)
    a, b, sigma = (value.to(forms.device) for value in (a, b, sigma))
    score_sq = _score_norm_sq(output.flatten(1), y.flatten(1), a, b)
    lid = dim + sigma**2 * (a * trace_estimate + b * dim + score_sq)
    if trace == "exact":
        stderr = torch.zeros_like(lid)
    elif n_probes == 1:
        stderr = torch.full_like(lid, math.nan)
    else:
        stderr = sigma**2 * a.abs() * forms.detach().std(0) / math.sqrt(n_probes)
    return lid.to(x.dtype), stderr.detach(), mode_used


def estimate(
    model: Model,
    x,
    *,
    t0: float | Tensor | Literal["auto"] | None = None,
    sigma: float | Tensor | None = None,
    delta: float | Tensor | None = None,
    schedule: Schedule | None = None,
    prediction: str = "epsilon",
    trace: Trace = "auto",
    n_probes: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    chunk_rows: int | None = None,
    mode: str = "auto",
    differentiable: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FLIPDResult:
    """FLIPD estimates with their noise levels and standard errors (see :func:`flipd`).

    Extra arguments beyond :func:`flipd`:
        chunk_rows: cap on (point, probe) pairs differentiated in one vectorised call; bounds
            memory. Default ``max(4096, points per batch)``.
        mode: "auto" (reverse mode, forward on failure), "reverse" or "forward".
        progress: called with the number of points finished after each batch.
    """
    x = _as_batch(x)
    schedule = VP() if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a flipd.schedules.Schedule; got {type(schedule).__name__}.")
    check_prediction(prediction)
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size}.")
    n, dim = x.shape[0], x[0].numel()
    trace, n_probes = _resolve_trace(trace, dim, n_probes)
    if isinstance(t0, str):
        if t0 != "auto":
            raise ValueError(f"t0 must be a number, a tensor of shape [N], or 'auto'; got {t0!r}.")
        if sigma is not None or delta is not None:
            raise ValueError("t0='auto' chooses the noise level itself; do not also pass sigma= or delta=.")
        return _estimate_auto(
            model, x, schedule=schedule, prediction=prediction, trace=trace, n_probes=n_probes,
            seed=seed, batch_size=batch_size, chunk_rows=chunk_rows, mode=mode,
            differentiable=differentiable, progress=progress,
        )
    times = _resolve_times(n, schedule, t0, sigma, delta)
    batch_size = min(n, batch_size or DEFAULT_BATCH_SIZE)
    rows = chunk_rows or max(DEFAULT_CHUNK_ROWS, batch_size)
    grad_context = contextlib.nullcontext() if differentiable else torch.no_grad()
    distinct = _distinct_times(times)  # [1] when all points share a time, else [n]
    terms = _noise_terms(schedule, prediction, distinct)
    lids, stderrs, mode_used = [], [], mode
    with grad_context:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch_terms = terms if len(distinct) == 1 else tuple(value[start:stop] for value in terms)
            lid, stderr, mode_used = _flipd_batch(
                model, x[start:stop], times[start:stop], offset=start, terms=batch_terms,
                trace=trace, n_probes=n_probes, seed=seed, chunk_rows=rows, mode=mode,
            )
            lids.append(lid if differentiable else lid.detach())
            stderrs.append(stderr)
            if progress is not None:
                progress(stop - start)
    return FLIPDResult(
        lid=torch.cat(lids), t0=times,
        sigma=terms[1].expand(n).clone(),
        delta=schedule.delta(distinct).expand(n).clone(),
        stderr=torch.cat(stderrs).cpu(), trace=trace, n_probes=n_probes, mode=mode_used,
    )


def flipd(
    model: Model,
    x,
    *,
    t0: float | Tensor | Literal["auto"] | None = None,
    schedule: Schedule | None = None,
    prediction: str = "epsilon",
    trace: Trace = "auto",
    n_probes: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    sigma: float | Tensor | None = None,
    delta: float | Tensor | None = None,
    differentiable: bool = False,
    return_stderr: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Tensor]:
    """Local intrinsic dimension of each point of ``x`` by FLIPD.

    Args:
        model: ``model(y, t) -> tensor shaped like y``; ``y`` [N, ...] is the noised input,
            ``t`` a float tensor [N] in the schedule's time units. Wrap other signatures with
            :class:`flipd.ModelAdapter`.
        x: data points, tensor or array of shape [N, ...] (vectors or images), in the units
            the model was trained on (clean data, not noised).
        t0: noise level as a time of ``schedule`` (float, or tensor [N] for one per point), or
            "auto" for the knee rule (:func:`flipd.knee`). Alternatively give ``sigma=`` (the
            noise standard deviation) or ``delta=`` (log sigma/psi): exactly one of the three.
        schedule: the model's noise schedule; default the reference ``VP()``.
        prediction: what the network outputs: "score", "epsilon", "sample", "v_prediction"
            or "flow_velocity".
        trace: "exact" (D basis probes), "hutchinson" (Rademacher probes), "gaussian"
            (Gaussian probes), or "auto" (exact for D ≤ 256, else Hutchinson).
        n_probes: Hutchinson probes per point (ignored by the exact trace).
        seed: seed of the probes; results are reproducible for a given seed and batch size.
            No global random state is touched.
        batch_size: points per forward pass (default up to 1024).
        differentiable: keep the graph so gradients flow to ``x`` (FLIPD as a loss term).
        return_stderr: also return the per-point standard error of the Hutchinson estimate.
        **options: passed to :func:`estimate` (``chunk_rows``, ``mode``, ``progress``).

    Returns:
        LID estimates, tensor [N] in x's dtype and device; with ``return_stderr`` a pair
        ``(lid, stderr)``.

    Example:
        >>> lid = flipd.flipd(model, x, t0=0.05)  # doctest: +SKIP
    """
    result = estimate(
        model, x, t0=t0, sigma=sigma, delta=delta, schedule=schedule, prediction=prediction,
        trace=trace, n_probes=n_probes, seed=seed, batch_size=batch_size,
        differentiable=differentiable, **options,
    )
    return (result.lid, result.stderr) if return_stderr else result.lid


def flipd_curve(
    model: Model,
    x,
    t_grid: Sequence[float] | Tensor,
    **kwargs,
) -> Tensor:
    """FLIPD at every time of ``t_grid`` for every point: a tensor of shape [N, T].

    Column j equals ``flipd(model, x, t0=t_grid[j], **kwargs)`` exactly (same probes), so
    curves are smooth in t for Hutchinson estimates too. ``kwargs`` are those of :func:`flipd`
    except the noise level.
    """
    for name in ("t0", "sigma", "delta"):
        if name in kwargs:
            raise ValueError(f"flipd_curve takes the noise levels from t_grid; do not pass {name}=.")
    grid = torch.as_tensor(t_grid, dtype=torch.float64).flatten()
    if grid.numel() == 0:
        raise ValueError("t_grid is empty; pass at least one time.")
    columns = [flipd(model, x, t0=float(t), **kwargs) for t in grid]
    return torch.stack(columns, dim=1)


def _estimate_auto(model, x, *, schedule: Schedule, progress, **kwargs) -> FLIPDResult:
    """t0 chosen per point by the knee rule on the reference grid (method notes §5)."""
    dim = x[0].numel()
    reference_times = reference_knee_grid()
    times = schedule.t_from_delta(REFERENCE_SCHEDULE.delta(reference_times))
    curve = flipd_curve(model, x, times, schedule=schedule, **kwargs)
    if progress is not None:
        progress(x.shape[0])
    found = knee(curve, reference_times, ambient_dim=dim)
    # Report the chosen noise level in this schedule's own time units (NaN where no knee).
    index = torch.searchsorted(reference_times, found.t0.nan_to_num(0.0).to(torch.float64))
    index = index.clamp(max=len(times) - 1)
    no_knee = ~found.found

    def pick(values: Tensor) -> Tensor:
        picked = values[index].clone()
        picked[no_knee] = math.nan
        return picked

    return FLIPDResult(
        lid=found.lid.to(x), t0=pick(times), sigma=pick(schedule.sigma(times)),
        delta=pick(schedule.delta(times)), stderr=torch.full((x.shape[0],), math.nan),
        trace=kwargs["trace"], n_probes=kwargs["n_probes"], mode=kwargs["mode"],
    )
