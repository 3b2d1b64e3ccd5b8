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
import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .checks import (
    AUTO_EXACT_MAX_DIM, TRACES, EstimateWarning, ModelLike, NonFiniteOutputError, ScaleNotFoundWarning, Trace, _as_batch,
    _as_indices, _non_finite_rows, _output_checker, out_of_range, resolve_model, resolve_trace,
    warn_about_results,
)
from .calibrated import CALIBRATION_POINTS, CalibratedLevel, band_reading, calibrated_band, calibrated_level, check_ratio
from .knee import knee
from .models.base import Model
from .noise import AUTO_RULES, CALIBRATED_RATIO, DATA_SET_RULES, knee_grid, plateau_grid, resolve_times, rule_named
from .parameterization import score_coefficients
from .plateau import plateau
from .reliability import denoising_calibration, reliable_levels
from .progress import Progress, progress_callback
from .results import SCALE_FLAGS, FLIPDResult, LIDResult
from .schedules import Schedule
from .trace import MODES, basis_probes, indexed_probes, quadratic_forms


#: Default number of points per forward pass when ``batch_size`` is None.
DEFAULT_BATCH_SIZE = 1024
#: Default cap on (point, probe) pairs differentiated in one vectorised call.
DEFAULT_CHUNK_ROWS = 4096

__all__ = [
    "AUTO_EXACT_MAX_DIM", "TRACES", "EstimateWarning", "FLIPDResult", "LIDResult", "ModelLike", "NonFiniteOutputError",
    "ScaleNotFoundWarning", "estimate", "flipd",
    "calibrated_t0", "flipd_curve", "is_point_stream", "non_finite_outputs", "out_of_range", "resolve_model", "resolve_trace",
]


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


def _score_norm_sq(output: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """‖a·output + b·y‖² per row of [n, D] tensors, in float64 (a, b: [1] or [n] float64).

    For score and epsilon outputs b is 0 and the norm is a²·‖output‖², with no [n, D]
    temporary; otherwise the score is formed first (a·f and b·y nearly cancel at small noise).
    """
    if not bool((b == 0).all()):
        score = torch.addcmul(b.to(output)[:, None] * y, a.to(output)[:, None], output)
        return _float64(torch.linalg.vecdot(score, score))
    return a**2 * _float64(torch.linalg.vecdot(output, output))


def _float64(values: Tensor) -> Tensor:
    """``values`` in float64 for the sums: on their device, or on the CPU for MPS (which has no
    float64)."""
    return (values.cpu() if values.device.type == "mps" else values).to(torch.float64)


def _flipd_batch(
    model: Model,
    x: Tensor,
    times: Tensor,
    *,
    indices: Tensor,
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
        distribution = "gaussian" if trace == "gaussian" else "rademacher"
        return indexed_probes(
            y.shape, n_probes, probes_per_call, distribution=distribution,
            seed=seed, indices=indices, dtype=y.dtype, device=y.device,
        )

    output, forms, mode_used = quadratic_forms(
        lambda inputs: model(inputs, t_model), y, probes, mode=mode,
        check_output=_output_checker(y.shape, indices),
    )
    forms = _float64(forms)
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


def check_options(seed, batch_size, chunk_rows, mode) -> None:
    """Raise a ValueError or TypeError naming the first invalid common option."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer; got {seed!r}.")
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}.")
    if chunk_rows is not None and (not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive integer or None; got {chunk_rows!r}.")


def estimate(
    model: ModelLike,
    x,
    *,
    t0: float | Tensor | Literal["auto"] | None = None,
    sigma: float | Tensor | None = None,
    delta: float | Tensor | None = None,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    trace: Trace = "auto",
    n_probes: int = 1,
    seed: int = 0,
    indices=None,
    batch_size: int | None = None,
    chunk_rows: int | None = None,
    mode: str = "auto",
    differentiable: bool = False,
    encoded: bool = False,
    progress: Progress = None,
    calibrated_ratio: float = CALIBRATED_RATIO,
) -> FLIPDResult:
    """FLIPD estimates with their noise levels and standard errors (see :func:`flipd`).

    Extra arguments beyond :func:`flipd`:
        calibrated_ratio: with ``t0="calibrated"``, ``"band"`` or ``"auto"``, the rule's
            tolerance (>= 1; default :data:`flipd.noise.CALIBRATED_RATIO`): its level is the
            smallest whose median calibration is within this ratio of the model's best, and the
            band the levels within it (as ``calibrated_t0(ratio=)``). The chosen level is the
            result's ``level``.
        chunk_rows: cap on (point, probe) pairs differentiated in one vectorised call; bounds
            memory. Default ``max(4096, points per batch)``.
        mode: "auto" (reverse mode; forward mode where reverse mode is unsupported; plain
            autograd for a model that differentiates by itself), "reverse", "forward" or
            "autograd" (plain ``torch.autograd``: for models that compute their output with
            ``torch.autograd.grad(..., create_graph=True)``, e.g. an energy-based model's
            score ``-∇E(y)``; see :mod:`flipd.trace`).
        progress: True for a progress bar (terminal or notebook), or a callable called with
            the number of points finished after each batch.

    Warns:
        EstimateWarning: some estimates are not finite, or lie outside [0, D] by more than
            their standard error (see :func:`out_of_range`); the points are named.
    """
    t0 = rule_named(t0)  # "auto": the band rule
    check_ratio(calibrated_ratio)
    if calibrated_ratio != CALIBRATED_RATIO and not (isinstance(t0, str) and t0 in DATA_SET_RULES):
        raise ValueError(f"calibrated_ratio is the calibrated rule's tolerance; pass it with t0='calibrated', 'band' or "
                         f"'auto' (got t0={t0!r}).")
    if is_point_stream(x):
        return _estimate_stream(
            model, x, t0=t0, sigma=sigma, delta=delta, schedule=schedule, prediction=prediction, trace=trace,
            n_probes=n_probes, seed=seed, indices=indices, batch_size=batch_size, chunk_rows=chunk_rows, mode=mode,
            differentiable=differentiable, encoded=encoded, progress=progress, calibrated_ratio=calibrated_ratio,
        )
    # Every option is checked before the model runs (a flipd.Model's encode may be costly).
    x = _as_batch(x)
    n = x.shape[0]
    check_options(seed, batch_size, chunk_rows, mode)
    resolve_trace(trace, 1, n_probes)  # the name and the probe count
    indices = _as_indices(indices, n)
    times = None
    if isinstance(t0, CalibratedLevel):
        if sigma is not None or delta is not None:
            raise ValueError("t0= is a level the calibrated rule chose; do not also pass sigma= or delta=.")
        if isinstance(model, Model):
            _check_level_schedule(t0, model.schedule)
    elif isinstance(t0, str):
        if t0 not in AUTO_RULES:
            raise ValueError(
                f"t0 must be a number, a tensor of shape [N], or one of {', '.join(map(repr, AUTO_RULES))}; got {t0!r}."
            )
        if sigma is not None or delta is not None:
            raise ValueError(f"t0={t0!r} chooses the noise level itself; do not also pass sigma= or delta=.")
    elif isinstance(model, Model):
        times = resolve_times(n, model.schedule, t0=t0, sigma=sigma, delta=delta)
    fn, x, schedule, prediction = resolve_model(model, x, schedule=schedule, prediction=prediction, encoded=encoded)
    dim = x[0].numel()
    trace, n_probes = resolve_trace(trace, x.shape[1:], n_probes)
    options = dict(
        schedule=schedule, prediction=prediction, trace=trace, n_probes=n_probes, seed=int(seed), indices=indices,
        batch_size=batch_size, chunk_rows=chunk_rows, mode=mode, differentiable=differentiable, progress=progress,
    )
    if isinstance(t0, (str, CalibratedLevel)):
        rule, label = {"plateau": (_estimate_plateau, "FLIPD (plateau)"),
                       "calibrated": (functools.partial(_estimate_calibrated, ratio=calibrated_ratio),
                                      "FLIPD (calibrated)"),
                       "band": (functools.partial(_estimate_calibrated, band=True, ratio=calibrated_ratio),
                                "FLIPD (band)")}.get(
            ("calibrated" if t0.read_times is None else "band") if isinstance(t0, CalibratedLevel) else t0,
            (_estimate_auto, "FLIPD (knee)"))
        if isinstance(t0, CalibratedLevel):
            options["level"] = t0
        with progress_callback(progress, n, label) as options["progress"]:
            result = rule(fn, x, **options)
    else:
        if times is None:
            times = resolve_times(n, schedule, t0=t0, sigma=sigma, delta=delta)
        with progress_callback(progress, n, "FLIPD") as options["progress"]:
            result = _estimate_fixed(fn, x, times, **options)
    warn_about_results(result.lid, result.stderr, dim, indices, "the estimates of points")
    return result


def _estimate_fixed(
    fn, x: Tensor, times: Tensor, *, schedule: Schedule, prediction: str, trace: str, n_probes: int, seed: int,
    indices: Tensor, batch_size: int | None, chunk_rows: int | None, mode: str, differentiable: bool, progress,
) -> FLIPDResult:
    """FLIPD at the times [N] (float64) of ``schedule``; ``x`` in model coordinates."""
    n = x.shape[0]
    asked = batch_size or DEFAULT_BATCH_SIZE  # what later calls start from (halved on running out of memory)
    batch_size = min(n, asked)
    rows = chunk_rows or max(DEFAULT_CHUNK_ROWS, batch_size)
    grad_context = contextlib.nullcontext() if differentiable else torch.no_grad()
    distinct = _distinct_times(times)  # [1] when all points share a time, else [n]
    terms = _noise_terms(schedule, prediction, distinct)
    lids, stderrs, mode_used = [], [], mode
    start = 0
    with grad_context:
        while start < n:
            stop = min(n, start + batch_size)
            batch_terms = terms if len(distinct) == 1 else tuple(value[start:stop] for value in terms)
            try:
                lid, stderr, mode_used = _flipd_batch(
                    fn, x[start:stop], times[start:stop], indices=indices[start:stop], terms=batch_terms,
                    trace=trace, n_probes=n_probes, seed=seed, chunk_rows=rows, mode=mode,
                )
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1 and rows == 1:
                    raise
                batch_size, rows = _halved(batch_size, rows)
                asked = batch_size
                continue
            except NonFiniteOutputError as error:  # find every such point, not only this batch's
                psi = terms[0] if len(distinct) == 1 else terms[0][stop:]
                later = _non_finite_outputs(fn, x[stop:], times[stop:], indices[stop:], psi, batch_size)
                time = float(distinct[0]) if len(distinct) == 1 else None
                raise NonFiniteOutputError(error.indices + later, n, time) from None
            lids.append(lid if differentiable else lid.detach())
            stderrs.append(stderr)
            if progress is not None:
                progress(stop - start)
            start = stop
    return FLIPDResult(
        lid=torch.cat(lids), t0=times,
        sigma=terms[1].expand(n).clone(),
        delta=schedule.delta(distinct).expand(n).clone(),
        stderr=torch.cat(stderrs).cpu(), trace=trace, n_probes=n_probes, mode=mode_used,
        ambient_dim=x[0].numel(), settings=_settings(trace, n_probes, seed, mode_used),
        batch_size=asked, chunk_rows=rows,
    )


def _halved(batch_size: int, rows: int) -> tuple[int, int]:
    """Batch size and (point, probe) rows per call after a batch ran out of GPU memory: both
    halved (the rows bound the vectorised products, so halving the batch alone would not
    shrink them), the cached blocks freed, and the new size reported as a warning."""
    smaller = max(1, batch_size // 2), max(1, rows // 2)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    warnings.warn(
        f"ran out of GPU memory with batches of {batch_size} points ({rows} point-probe rows per call); "
        f"continuing with batches of {smaller[0]} points ({smaller[1]} rows per call)", RuntimeWarning, stacklevel=3,
    )
    return smaller


def _settings(trace: str, n_probes: int, seed: int, mode: str) -> dict:
    return {"trace": trace, "n_probes": n_probes, "seed": seed, "mode": mode}


def _non_finite_outputs(fn, x: Tensor, times: Tensor, indices: Tensor, psi: Tensor, batch_size: int) -> list[int]:
    """Global indices of the points of ``x`` [n, ...] (model coordinates) whose model output at
    ``times`` [n] is not finite: forward passes only, no gradients. ``psi`` is psi(times), [1]
    (one time for all points) or [n]."""
    bad: list[int] = []
    broadcast = (-1,) + (1,) * (x.ndim - 1)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            stop = min(x.shape[0], start + batch_size)
            scale = psi if psi.numel() == 1 else psi[start:stop]
            output = fn(scale.to(x).reshape(broadcast) * x[start:stop], times[start:stop].to(x))
            bad += indices[start:stop][_non_finite_rows(output)].tolist()
    return bad


def non_finite_outputs(
    model: ModelLike,
    x,
    t: float,
    *,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    indices=None,
    batch_size: int | None = None,
    encoded: bool = False,
) -> list[int]:
    """Indices of the points of ``x`` [N, ...] for which the model's output at time ``t`` (in
    the schedule's units) has a NaN or inf: one forward pass per batch, no gradients. The
    indices are ``indices`` (default 0..N-1) of those points, in order."""
    x = _as_batch(x)
    fn, x, schedule, _ = resolve_model(model, x, schedule=schedule, prediction=prediction, encoded=encoded)
    check_options(0, batch_size, None, "auto")
    times = torch.full((x.shape[0],), float(t), dtype=torch.float64)
    schedule.check_t(times[:1], "t")
    return _non_finite_outputs(fn, x, times, _as_indices(indices, x.shape[0]), schedule.psi(times[:1]),
                               batch_size or DEFAULT_BATCH_SIZE)


def _curve(fn, x: Tensor, times: Tensor, **options) -> tuple[Tensor, str]:
    """FLIPD [N, T] at each of the times [T] for every point, and the differentiation mode used."""
    results = _at_levels(fn, x, times, options)
    return torch.stack([result.lid for result in results], dim=1), results[-1].mode


def flipd(
    model: ModelLike,
    x,
    *,
    t0: float | Tensor | Literal["auto"] | None = None,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    trace: Trace = "auto",
    n_probes: int = 1,
    seed: int = 0,
    indices=None,
    batch_size: int | None = None,
    sigma: float | Tensor | None = None,
    delta: float | Tensor | None = None,
    differentiable: bool = False,
    return_stderr: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Tensor]:
    """Local intrinsic dimension of each point of ``x`` by FLIPD.

    Args:
        model: a :class:`flipd.Model` (from :func:`flipd.load`, :func:`flipd.from_diffusers`,
            :func:`flipd.train_diffusion` or :func:`flipd.as_model`), which brings its schedule,
            prediction type and coordinate map; or a plain callable ``model(y, t) -> tensor
            shaped like y`` with ``y`` [N, ...] the noised input and ``t`` a float tensor [N] in
            the schedule's time units (wrap other signatures with :class:`flipd.ModelAdapter`).
        x: data points, tensor or array of shape [N, ...] (vectors or images), clean (not
            noised): in the user's units for a :class:`flipd.Model`, in the units the network
            was trained on for a plain callable. PIL images (one, or a list) become [N, C, H, W]
            in [-1, 1], the convention of diffusers image models (:mod:`flipd.pil_images`).
            Or points read batch by batch: a torch ``DataLoader``, ``Dataset`` or
            ``IterableDataset`` yielding tensors (or tuples whose first entry is the points),
            or a :class:`flipd.datasets.streaming.PointStream`; an ``IterableDataset`` is read to
            its end (its length need not be known), point ``i`` in the order they come gets
            index ``i``, and a model's ``encode`` runs per batch (with the calibrated and
            band rules, the first batches that hold 2048 points run as one, the rule's sample).
        t0: noise level as a time of the schedule (float, or tensor [N] for one per point), or
            a rule that chooses it: "knee" (per point, the reference knee rule,
            :func:`flipd.knee`), "plateau" (per point, the flattest stretch of the FLIPD curve
            in log sigma above the levels where the model denoises reliably,
            :func:`flipd.plateau`), "calibrated" (one level for all the points: the smallest at
            which the model denoises within 1.5x of its best, :mod:`flipd.calibrated`; or a
            level from :func:`calibrated_t0`), "band" (each point's FLIPD averaged over every
            level within that ratio, or only over its first levels where the points differ in
            dimension: :func:`flipd.calibrated.band_reading`; the result's t0 is the
            calibrated level, ``settings["read_t0"]`` the levels read), or "auto" (the band
            rule; the reference knee rule is "knee"). Alternatively
            ``sigma=`` (the noise
            standard deviation) or ``delta=`` (log sigma/psi): at most one of the three. With
            none, the default: t0 = 0.05 of the reference VP schedule, carried to other
            schedules through delta (:func:`flipd.default_noise_level`).
        schedule: the noise schedule of a plain callable; default the reference ``VP()``.
        prediction: what a plain callable outputs: "score", "epsilon" (default), "sample",
            "v_prediction" or "flow_velocity".
        trace: "exact" (D basis probes), "hutchinson" (Rademacher probes), "gaussian"
            (Gaussian probes), or "auto": exact for vectors [N, D] with D ≤ 256, Hutchinson
            for images and larger D (:func:`resolve_trace` says why).
        n_probes: Hutchinson probes per point (ignored by the exact trace).
        seed: seed of the probes. A point's probes depend only on ``seed`` and its index, never
            on the batch size or on which other points are estimated. No global random state
            is touched.
        indices: the points' global indices, [N] integers (default 0..N-1): ``flipd(model,
            x[10:20], indices=range(10, 20))`` equals rows 10..19 of ``flipd(model, x)``.
        batch_size: points per forward pass (default up to 1024).
        differentiable: keep the graph so gradients flow to ``x`` (FLIPD as a loss term).
        return_stderr: also return the per-point standard error of the Hutchinson estimate.
        **options: passed to :func:`estimate` (``chunk_rows``, ``mode``, ``progress``,
            ``encoded=True`` when ``x`` is already in a :class:`flipd.Model`'s coordinates).

    Returns:
        LID estimates, tensor [N] in the model-coordinate dtype and device; with
        ``return_stderr`` a pair ``(lid, stderr)``.

    Example:
        >>> lid = flipd.flipd(flipd.load("models/lollipop"), x)  # doctest: +SKIP
    """
    result = estimate(
        model, x, t0=t0, sigma=sigma, delta=delta, schedule=schedule, prediction=prediction,
        trace=trace, n_probes=n_probes, seed=seed, indices=indices, batch_size=batch_size,
        differentiable=differentiable, **options,
    )
    return (result.lid, result.stderr) if return_stderr else result.lid


def flipd_curve(
    model: ModelLike,
    x,
    t_grid: Sequence[float] | Tensor,
    **kwargs,
) -> Tensor:
    """FLIPD at every time of ``t_grid`` for every point: a tensor of shape [N, T].

    Column j equals ``flipd(model, x, t0=t_grid[j], **kwargs)`` exactly (same probes), so
    curves are smooth in t for Hutchinson estimates too. ``kwargs`` are those of :func:`flipd`
    except the noise level. The knee rule's grid is :func:`flipd.knee_grid` (schedule).
    Points with a non-finite value, or one outside [0, D], are named in an
    :class:`EstimateWarning`.
    """
    for name in ("t0", "sigma", "delta", "return_stderr"):
        if name in kwargs:
            raise ValueError(f"flipd_curve takes the noise levels from t_grid; do not pass {name}=.")
    grid = torch.as_tensor(t_grid, dtype=torch.float64).flatten()
    if grid.numel() == 0:
        raise ValueError("t_grid is empty; pass at least one time.")
    if is_point_stream(x):
        indices = kwargs.pop("indices", None)
        parts = [flipd_curve(model, batch, grid, indices=batch_indices, **kwargs)
                 for batch, batch_indices in _stream_batches(x, indices, kwargs.get("batch_size"))]
        if not parts:
            raise ValueError("x yielded no points; pass at least one point.")
        return torch.cat(parts)
    # Every option is checked before the model runs (a flipd.Model's encode may be costly).
    x = _as_batch(x)
    seed, batch_size = kwargs.pop("seed", 0), kwargs.pop("batch_size", None)
    chunk_rows, mode = kwargs.pop("chunk_rows", None), kwargs.pop("mode", "auto")
    check_options(seed, batch_size, chunk_rows, mode)
    trace, n_probes = kwargs.pop("trace", "auto"), kwargs.pop("n_probes", 1)
    resolve_trace(trace, 1, n_probes)  # the name and the probe count
    indices = _as_indices(kwargs.pop("indices", None), x.shape[0])
    schedule, prediction, encoded = kwargs.pop("schedule", None), kwargs.pop("prediction", None), kwargs.pop("encoded", False)
    differentiable, progress = kwargs.pop("differentiable", False), kwargs.pop("progress", None)
    if kwargs:
        raise TypeError(f"flipd_curve got unexpected arguments: {', '.join(sorted(kwargs))}.")
    if isinstance(model, Model):
        model.schedule.check_t(grid, "t_grid")
    fn, x, schedule, prediction = resolve_model(model, x, schedule=schedule, prediction=prediction, encoded=encoded)
    trace, n_probes = resolve_trace(trace, x.shape[1:], n_probes)
    options = dict(
        schedule=schedule, prediction=prediction, trace=trace, n_probes=n_probes, seed=int(seed), indices=indices,
        batch_size=batch_size, chunk_rows=chunk_rows, mode=mode, differentiable=differentiable, progress=progress,
    )
    schedule.check_t(grid, "t_grid")
    with progress_callback(options["progress"], x.shape[0] * grid.numel(), "FLIPD curve") as options["progress"]:
        curves = _curve(fn, x, grid, **options)[0]
    warn_about_results(curves, None, x[0].numel(), options["indices"], "the curves of points")
    return curves


# --------------------------------------------------------------------------- streams of points


def is_point_stream(x: object) -> bool:
    """Whether ``x`` is points read batch by batch rather than one tensor: a torch
    ``DataLoader``, ``Dataset`` or ``IterableDataset``, or a lazy stream with a
    ``batches(start, stop)`` method (:class:`flipd.datasets.streaming.PointStream`)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(x, (Tensor, np.ndarray)):
        return False
    return isinstance(x, (DataLoader, Dataset, IterableDataset)) or callable(getattr(x, "batches", None))


def _points_of(item: object) -> Tensor:
    """The points [b, ...] of one batch: a tensor or array, or the first entry of a tuple or
    list (``(images, labels)``, as DataLoaders collate ``(image, label)`` items)."""
    while isinstance(item, (tuple, list)) and item:
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, Tensor):
        raise TypeError(
            f"a batch of the data is a {type(item).__name__}; the data must yield tensors (or tuples whose "
            "first entry is the points), e.g. a Dataset whose items are tensors or (tensor, label) pairs."
        )
    return item


def _stream_batches(x, indices, batch_size: int | None):
    """``(points [b, ...], their global indices)`` for consecutive batches of a point stream.

    A map-style ``Dataset`` or an ``IterableDataset`` is read by a DataLoader in this process
    (``batch_size`` items at a time; pass your own DataLoader for worker processes); an
    IterableDataset's length need not be known: it is read to its end. Indices count the
    points in the order they come, unless ``indices`` (one per point) are given.
    """
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if callable(getattr(x, "batches", None)):
        batches = x.batches(0, len(x))
    elif isinstance(x, DataLoader):
        batches = (_points_of(item) for item in x)
    else:
        assert isinstance(x, (Dataset, IterableDataset))
        loader = DataLoader(x, batch_size=batch_size or DEFAULT_BATCH_SIZE, num_workers=0)
        batches = (_points_of(item) for item in loader)
    given = None if indices is None else np.asarray(list(indices) if isinstance(indices, range) else indices)
    offset = 0
    for batch in batches:
        n = int(batch.shape[0])
        if n == 0:
            continue
        chosen = range(offset, offset + n) if given is None else given[offset:offset + n]
        if given is not None and len(chosen) != n:
            raise ValueError(f"indices has {len(given)} entries, fewer than the points the data yield.")
        yield batch, chosen
        offset += n
    if given is not None and offset != len(given):
        raise ValueError(f"indices has {len(given)} entries but the data yield {offset} points.")


def _per_point(value, start: int, stop: int):
    """A per-point noise level [N] sliced to ``start:stop`` (a scalar level as it is)."""
    if isinstance(value, (Tensor, np.ndarray)) and np.ndim(value) > 0 and np.size(value) > 1:
        return value[start:stop]
    return value


def _stream_length(x) -> int | None:
    """The number of points a stream will yield, where it says (None: an IterableDataset)."""
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(x, DataLoader):
        x = x.dataset
    if isinstance(x, IterableDataset) and not callable(getattr(type(x), "__len__", None)):
        return None
    try:
        return len(x)
    except TypeError:
        return None


def _estimate_stream(model, x, *, t0, sigma, delta, indices, progress, batch_size, chunk_rows, calibrated_ratio,
                     **options) -> FLIPDResult:
    """:func:`estimate` batch by batch over a point stream; a halved batch size stays halved.

    With the calibrated or band rule, the stream's first batches (at least
    :data:`~flipd.calibrated.CALIBRATION_POINTS` points) are read together, as a tensor: the
    rule chooses its level from them and keeps their FLIPD; later batches are read at the
    chosen level (the result's ``level``). Its warnings (estimates outside [0, D], points
    without a scale) are given once, over the whole stream."""
    results: list[FLIPDResult] = []
    read_indices: list[Tensor] = []
    offset = 0
    rule = t0 if isinstance(t0, str) and t0 in DATA_SET_RULES else None
    if rule is not None:  # one choice for the whole stream, from its first points
        if sigma is not None or delta is not None:
            raise ValueError(f"t0={t0!r} chooses the noise level itself; do not also pass sigma= or delta=.")
        check_options(options.get("seed", 0), batch_size, chunk_rows, options.get("mode", "auto"))
        resolve_trace(options.get("trace", "auto"), 1, options.get("n_probes", 1))  # before the model runs
    head: list[tuple[Tensor, Any]] = []  # the rule's first batches, until they hold enough points

    def read(batch, batch_indices) -> None:
        nonlocal t0, offset, batch_size, chunk_rows
        stop = offset + batch.shape[0]
        ratio = {"calibrated_ratio": calibrated_ratio} if isinstance(t0, str) and t0 in DATA_SET_RULES else {}
        result = estimate(
            model, batch, t0=_per_point(t0, offset, stop), sigma=_per_point(sigma, offset, stop),
            delta=_per_point(delta, offset, stop), indices=batch_indices, progress=report,
            batch_size=batch_size, chunk_rows=chunk_rows, **ratio, **options,
        )
        if ratio:  # the level chosen: every later batch is read at it
            t0 = result.level
        batch_size = result.batch_size or batch_size
        chunk_rows = result.chunk_rows or chunk_rows
        results.append(result)
        read_indices.append(_as_indices(batch_indices, batch.shape[0]))
        offset = stop

    with progress_callback(progress, _stream_length(x) or 0, "FLIPD") as report, warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimateWarning)  # said once below, over all batches
        for batch, batch_indices in _stream_batches(x, indices, batch_size):
            if rule is not None and not results:
                head.append((torch.as_tensor(batch), batch_indices))
                if sum(part.shape[0] for part, _ in head) < CALIBRATION_POINTS:
                    continue
                batch, batch_indices = _gathered(head)
            read(batch, batch_indices)
        if head and not results:  # the stream ended before the rule had all its points
            read(*_gathered(head))
    if not results:
        raise ValueError("x yielded no points; pass at least one point.")
    first, last = results[0], results[-1]
    optional = {name: torch.cat([getattr(r, name) for r in results])
                for name in ("knee_found", "plateau_found", "flatness", "reliable") if getattr(first, name) is not None}
    result = FLIPDResult(
        **{name: torch.cat([getattr(r, name) for r in results]) for name in ("lid", "t0", "sigma", "delta", "stderr")},
        trace=first.trace, n_probes=first.n_probes, mode=last.mode, method=first.method,
        ambient_dim=first.ambient_dim, settings=last.settings, batch_size=batch_size, chunk_rows=chunk_rows,
        level=first.level, **optional,
    )
    for name, rule in SCALE_FLAGS.items():
        if name in optional:
            _warn_unfound(optional[name], rule, scale_not_found_consequence(rule, result.level))
    warn_about_results(result.lid, result.stderr, result.ambient_dim, torch.cat(read_indices), "the estimates of points")
    return result


def _gathered(batches: list[tuple[Tensor, Any]]) -> tuple[Tensor, np.ndarray]:
    """Consecutive batches of a stream (points, their indices) as one batch."""
    points = torch.cat([part for part, _ in batches])
    numbers = np.concatenate([np.asarray(list(part) if isinstance(part, range) else part) for _, part in batches])
    return points, numbers


def scale_not_found_consequence(rule: str, level: CalibratedLevel | None = None) -> str:
    """What the ``rule``'s result holds for a point where it found no scale."""
    if rule == "knee":
        return "their LID is the ambient dimension D, the reference rule's fallback"
    if rule == "plateau":
        return "their LID is FLIPD on the flattest stretch found, which is not flat"
    return (f"the model is not shown to denoise them reliably at the data set's level t0 = {level.t0:.4g} (it "
            "denoises them badly there, or predicts almost no noise for them, as on a full-dimensional part of "
            "the data, where its denoising cannot be measured)")


def _warn_unfound(found: Tensor, rule: str, consequence: str) -> None:
    missing = int((~found).sum())
    if missing:
        warnings.warn(
            f"The {rule} rule found no scale for {missing} of {found.numel()} points; {consequence} "
            "(the result's found is False there).",
            ScaleNotFoundWarning,
            stacklevel=4,
        )


def _chosen_levels(schedule: Schedule, t0: Tensor) -> tuple[Tensor, Tensor]:
    """sigma and delta [N] at the chosen times, NaN where no time was chosen."""
    sigma, delta = torch.full_like(t0, math.nan), torch.full_like(t0, math.nan)
    chosen = ~torch.isnan(t0)
    if bool(chosen.any()):
        sigma[chosen], delta[chosen] = schedule.sigma(t0[chosen]), schedule.delta(t0[chosen])
    return sigma, delta


def _estimate_auto(fn, x: Tensor, *, schedule: Schedule, progress, **options) -> FLIPDResult:
    """t0 chosen per point by the knee rule on :func:`flipd.knee_grid` (method notes §5)."""
    grid = knee_grid(schedule)
    curve, mode_used = _curve(fn, x, grid, schedule=schedule, progress=None, **options)
    if progress is not None:
        progress(x.shape[0])
    found = knee(curve.detach(), grid, schedule=schedule, ambient_dim=x[0].numel())
    _warn_unfound(found.found, "knee", scale_not_found_consequence("knee"))
    return _rule_result(x, found.lid, found.t0, schedule, mode_used, options, knee_found=found.found.clone())


def _estimate_plateau(fn, x: Tensor, *, schedule: Schedule, progress, **options) -> FLIPDResult:
    """t0 chosen per point by the plateau rule on :func:`flipd.plateau_grid`, on levels where
    the model denoises the point reliably (:mod:`flipd.reliability`)."""
    grid = plateau_grid(schedule)
    curve, mode_used = _curve(fn, x, grid, schedule=schedule, progress=None, **options)
    calibration = denoising_calibration(
        fn, x.detach(), grid, schedule=schedule, prediction=options["prediction"], seed=options["seed"],
        indices=options["indices"], batch_size=min(x.shape[0], options["batch_size"] or DEFAULT_BATCH_SIZE),
    )
    if progress is not None:
        progress(x.shape[0])
    found = plateau(curve.detach(), grid, schedule=schedule, reliable=reliable_levels(calibration))
    _warn_unfound(found.found, "plateau", scale_not_found_consequence("plateau"))
    return _rule_result(x, found.lid, found.t0, schedule, mode_used, options,
                        plateau_found=found.found.clone(), flatness=found.flatness)


def calibrated_t0(
    model: ModelLike,
    x,
    *,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    seed: int = 0,
    indices=None,
    batch_size: int | None = None,
    encoded: bool = False,
    n_points: int | None = None,
    ratio: float = CALIBRATED_RATIO,
    band: bool = False,
    trace: Trace = "auto",
    n_probes: int = 1,
) -> CalibratedLevel:
    """The level the calibrated rule (:mod:`flipd.calibrated`) chooses for the data ``x``.

    The model's calibration is measured on the first ``n_points`` points of ``x`` (default
    :data:`flipd.calibrated.CALIBRATION_POINTS`, 2048; a tensor,
    array or stream, as for :func:`flipd`) at every level of :func:`flipd.plateau_grid`
    (4 noisy copies per point and level: forward passes only). ``estimate(model, x,
    t0="calibrated")`` makes this choice itself; pass the returned level as ``t0=`` to read
    other points (another chunk, a later batch) at the same level, with their reliability.
    ``seed`` and ``indices`` (the points' global indices, default 0..N-1) fix the noisy copies,
    as in :func:`estimate`. ``ratio`` (>= 1; default :data:`flipd.noise.CALIBRATED_RATIO`) is
    the rule's tolerance: the level is the smallest whose median calibration is within ``ratio``
    times the model's best; ``ratio=1.0`` takes the level where the model denoises best.

    With ``band=True`` it is the band rule's choice (``estimate(model, x, t0="band")``): the
    same points' FLIPD is also computed at every level of the band (``trace`` and ``n_probes``
    as in :func:`estimate`), and :func:`flipd.calibrated.band_reading` decides which of the
    band's levels each point's FLIPD is averaged over (``read_times``: the whole band, or its
    first levels where the points differ in dimension). To read the same points afterwards,
    ``estimate(model, x, t0="band")`` is cheaper: it keeps the FLIPD the choice computed, and
    its result's ``level`` is this one (for a tensor and a stream alike).

    Returns:
        :class:`flipd.calibrated.CalibratedLevel` (``t0`` in the schedule's units).
    """
    check_ratio(ratio)
    resolve_trace(trace, 1, n_probes)
    n_points = CALIBRATION_POINTS if n_points is None else n_points
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
        raise ValueError(f"n_points must be a positive integer; got {n_points!r}.")
    check_options(seed, batch_size, None, "auto")
    if is_point_stream(x):
        parts, numbers, count = [], [], 0
        for batch, batch_indices in _stream_batches(x, indices, batch_size):
            parts.append(torch.as_tensor(batch[: n_points - count]))
            numbers.append(torch.as_tensor(batch_indices[: n_points - count]))
            count += parts[-1].shape[0]
            if count >= n_points:
                break
        if not parts:
            raise ValueError("x yielded no points; pass at least one point.")
        sample, sample_indices = torch.cat(parts), torch.cat(numbers)
    else:
        sample = _as_batch(x)
        sample_indices = _as_indices(indices, sample.shape[0])[:n_points]
        sample = sample[:n_points]
    fn, sample, schedule, prediction = resolve_model(model, sample, schedule=schedule, prediction=prediction,
                                                    encoded=encoded)
    level = _choose_level(fn, sample, sample_indices, schedule=schedule, prediction=prediction, seed=seed,
                          batch_size=batch_size, ratio=ratio)[0]
    if not band:
        return level
    trace, n_probes = resolve_trace(trace, sample.shape[1:], n_probes)
    options = dict(schedule=schedule, prediction=prediction, trace=trace, n_probes=n_probes, seed=int(seed),
                   indices=sample_indices, batch_size=batch_size, chunk_rows=None, mode="auto", differentiable=False,
                   progress=None)
    return _band_choice(fn, sample, level, options)[0]


def _band_choice(fn, sample: Tensor, level: CalibratedLevel,
                 options: dict) -> tuple[CalibratedLevel, list[FLIPDResult]]:
    """The band rule's choice from ``sample`` [n, ...] (model coordinates; ``options`` as for
    :func:`_estimate_fixed`, with the sample's indices), and the sample's FLIPD at each level of
    the band (B results, in the band's order; its first ones are the levels read)."""
    with torch.no_grad():
        results = _at_levels(fn, sample, calibrated_band(level), options)
    curves = torch.stack([result.lid.detach().cpu().to(torch.float64) for result in results], dim=1)
    return band_reading(level, curves), results


def _choose_level(fn, sample: Tensor, indices: Tensor, *, schedule: Schedule, prediction: str, seed: int,
                  batch_size: int | None, ratio: float = CALIBRATED_RATIO) -> tuple[CalibratedLevel, Tensor]:
    """The calibrated rule's level from the points ``sample`` [n, ...] (model coordinates), and
    their calibration at that level [n] float64."""
    grid = plateau_grid(schedule)
    calibration = denoising_calibration(
        fn, sample.detach(), grid, schedule=schedule, prediction=prediction, seed=int(seed), indices=indices,
        batch_size=min(sample.shape[0], batch_size or DEFAULT_BATCH_SIZE),
    )
    level = calibrated_level(calibration, grid, ratio=ratio)
    return level, calibration[:, level.index]


def _check_level_schedule(level: CalibratedLevel, schedule: Schedule) -> None:
    """Refuse a level chosen on another schedule's grid (its t0 would mean another noise)."""
    grid = plateau_grid(schedule)
    if grid.shape != level.times.shape or not torch.allclose(grid, level.times.to(grid), rtol=1e-9, atol=0.0):
        raise ValueError(
            f"t0= is a level the calibrated rule chose on another schedule's levels; {schedule!r} has "
            "other times. Choose it for this model: flipd.calibrated_t0(model, x)."
        )


def _estimate_calibrated(fn, x: Tensor, *, schedule: Schedule, progress, level: CalibratedLevel | None = None,
                         band: bool = False, ratio: float = CALIBRATED_RATIO, **options) -> FLIPDResult:
    """Every point read at one level (or averaged over the band rule's levels): ``level``, or the
    calibrated (``band``: band) rule's choice from the first
    :data:`~flipd.calibrated.CALIBRATION_POINTS` points of ``x`` (model coordinates); each
    point flagged by whether the model denoises it reliably at the level."""
    n = x.shape[0]
    batch = min(n, options["batch_size"] or DEFAULT_BATCH_SIZE)
    measured = None
    if level is None:
        sample = min(n, CALIBRATION_POINTS)
        level, measured = _choose_level(fn, x[:sample], options["indices"][:sample], schedule=schedule,
                                        prediction=options["prediction"], seed=options["seed"], batch_size=batch,
                                        ratio=ratio)
    else:  # a level given: chosen on this schedule's grid? (a flipd.Model's was checked before encoding)
        _check_level_schedule(level, schedule)
    times = torch.full((n,), level.t0, dtype=torch.float64)
    if band and measured is not None:  # choose the band's levels; the sample's FLIPD there is kept
        sample = measured.shape[0]
        sample_options = {**options, "schedule": schedule, "indices": options["indices"][:sample], "progress": None}
        level, at_band = _band_choice(fn, x[:sample], level, sample_options)
        read = level.times_read()
        per_level = at_band[: read.numel()]
        if options["differentiable"]:  # the choice ran without gradients: read every point again
            per_level = _at_levels(fn, x, read, {**options, "schedule": schedule})
        elif sample < n:  # the other points at the levels read
            rest_options = {**options, "schedule": schedule, "indices": options["indices"][sample:]}
            rest = _at_levels(fn, x[sample:], read, rest_options)
            per_level = [_joined(first, second) for first, second in zip(per_level, rest)]
        if progress is not None:
            progress(n)
        result = _mean_over_levels(per_level)
    else:
        read = level.times_read()
        if read.numel() == 1:
            result = _estimate_fixed(fn, x, times, schedule=schedule, progress=progress, **options)
        else:
            result = _band_mean(fn, x, read, schedule=schedule, progress=progress, **options)
    done = 0 if measured is None else measured.shape[0]
    rest = denoising_calibration(
        fn, x[done:].detach(), times[:1], schedule=schedule, prediction=options["prediction"], seed=options["seed"],
        indices=options["indices"][done:], batch_size=batch,
    )[:, 0] if done < n else torch.empty(0, dtype=torch.float64)
    calibration = rest if measured is None else torch.cat([measured, rest])
    result.reliable = reliable_levels(calibration)
    _warn_unfound(result.reliable, "calibrated", scale_not_found_consequence("calibrated", level))
    result.settings = {**result.settings, "rule": "calibrated" if level.contrast is None else "band",
                       "rule_t0": level.t0, "best_t0": level.best_t0,
                       "median_calibration": float(level.median_calibration[level.index]),
                       "rule_points": level.n_points}
    if level.contrast is not None:
        result.settings.update(read_t0=[float(t) for t in read], band_contrast=level.contrast)
    result.level = level
    return result


def _band_mean(fn, x: Tensor, read: Tensor, *, schedule: Schedule, progress, **options) -> FLIPDResult:
    """Each point's FLIPD averaged over the times ``read`` [B] (:func:`_mean_over_levels`)."""
    results = _at_levels(fn, x, read, {**options, "schedule": schedule})
    if progress is not None:
        progress(x.shape[0])
    return _mean_over_levels(results)


def _at_levels(fn, x: Tensor, times: Tensor, options: dict) -> list[FLIPDResult]:
    """FLIPD of every point of ``x`` at each of the times [B], one result per time; ``options``
    as for :func:`_estimate_fixed` (``progress``, if given, is called after every batch of every
    time: N·B in all). A batch size halved on running out of memory stays halved."""
    n = x.shape[0]
    options = {"progress": None, **options}
    results = []
    for t in times:
        results.append(_estimate_fixed(fn, x, torch.full((n,), float(t), dtype=torch.float64), **options))
        options.update(batch_size=results[-1].batch_size, chunk_rows=results[-1].chunk_rows)
    return results


def _joined(first: FLIPDResult, second: FLIPDResult) -> FLIPDResult:
    """The results of two sets of points at one level, the first's points first."""
    joined = dataclasses.replace(second)
    for name in ("lid", "t0", "sigma", "delta", "stderr"):
        setattr(joined, name, torch.cat([getattr(first, name).to(getattr(second, name)), getattr(second, name)]))
    return joined


def _mean_over_levels(results: list[FLIPDResult]) -> FLIPDResult:
    """Each point's FLIPD averaged over the levels of ``results`` (the same points at B levels);
    the levels reported are the first's, the standard error the mean of the B levels' (an upper
    bound: the levels share probes)."""
    mean = dataclasses.replace(results[0])
    mean.lid = torch.stack([r.lid for r in results]).mean(dim=0)
    mean.stderr = torch.stack([r.stderr for r in results]).mean(dim=0)
    mean.mode = results[-1].mode
    mean.batch_size, mean.chunk_rows = results[-1].batch_size, results[-1].chunk_rows
    return mean


def _rule_result(x: Tensor, lid: Tensor, t0: Tensor, schedule: Schedule, mode_used: str, options: dict,
                 **found) -> FLIPDResult:
    """The result of a rule that chose t0 [N] per point (NaN where it chose none): the levels
    at the chosen times, no standard error, and what the rule found (``found``)."""
    t0 = t0.clone()
    sigma, delta = _chosen_levels(schedule, t0)
    return FLIPDResult(
        lid=lid.to(x), t0=t0, sigma=sigma, delta=delta, stderr=torch.full((x.shape[0],), math.nan),
        trace=options["trace"], n_probes=options["n_probes"], mode=mode_used, ambient_dim=x[0].numel(),
        settings=_settings(options["trace"], options["n_probes"], options["seed"], mode_used), **found,
    )
