"""How well a model denoises a point at a noise level: a label-free check of the score.

For data x, noise eps and y = psi·x + sigma·eps, a model's noise prediction is
eps_hat(y) = -sigma·s(y) (s the model's score). The ideal predictor E[eps | y] leaves a residual
orthogonal to every function of y, in particular to itself:

    E[eps_hat · (eps_hat - eps)] = 0.

The *calibration* of a model at a point and level is that inner product relative to the
prediction's size, ``c = Σ_k eps_hat_k · (eps_hat_k - eps_k) / Σ_k ‖eps_hat_k‖²`` over noisy
copies k of the point: 0 for the ideal denoiser (and near a manifold, where eps_hat is the
normal part of eps, exactly 0 for every draw), ``a / (1 + a)`` for a prediction ``1 + a`` times
too large, and strongly negative for a model that predicts too little of the noise (one whose
FLIPD reads near D because its score ignores the manifold). No labels and no true LID are needed;
it is measured on the points themselves (held-out points when they were not trained on).

Where the model predicts almost no noise (``‖eps_hat‖²`` per copy below
:data:`flipd.noise.MIN_PREDICTED_NOISE`: a full-dimensional part of the data, such as a disk in
R^2, where the ideal eps_hat is about -sigma·∇log p, of size O(sigma)), the ratio has nothing to
measure: its numerator is dominated by ``eps_hat · eps``, a draw of standard deviation
``‖eps_hat‖``, so the ratio's spread grows like 1 / ‖eps_hat‖. The calibration is NaN there
(not measured); it is +inf where the model's output is not finite. A model that predicts only a
fraction f of the normal noise at codimension k has ‖eps_hat‖² ≈ f²·k per copy, so below the
threshold only for f < 0.22 / sqrt(k): such points are left unmeasured (and so not shown reliable).

The identity holds on average over the points; for one point it holds exactly at small noise
(where eps_hat is the normal part of eps) and only approximately at large noise, where a point's
calibration drifts by up to about 0.2 even for a perfect model (``tests/test_plateau.py``).
:func:`reliable_levels` marks the levels where a point's calibration is within the tolerance;
the plateau rule reads only stretches made of such levels. It catches a model that predicts
too much or too little of the noise at small noise; it cannot see a model that is calibrated
but wrong about the manifold (e.g. one that has smoothed a tightly wound curve into a tube).
The noise draws are counter-based (:func:`flipd.trace.indexed_probes`, Gaussian), a fixed
function of ``(seed, point index, draw)``, so a point's calibration does not depend on the
batch it is in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .noise import MIN_PREDICTED_NOISE, RELIABILITY_TOLERANCE
from .parameterization import score_coefficients
from .schedules import Schedule
from .trace import indexed_probes

__all__ = ["RELIABILITY_DRAWS", "calibration_of", "denoising_calibration", "denoising_terms", "reliable_levels"]

#: Noisy copies per point and level.
RELIABILITY_DRAWS = 4
#: Keeps the noise draws apart from the Hutchinson probes of the same seed.
_NOISE_STREAM = 0x7E11AB1E


def denoising_calibration(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, times: Tensor, **options) -> Tensor:
    """Calibration of the model's noise prediction per point and level (see the module notes).

    Args:
        fn, x, times and the keyword ``options``: as for :func:`denoising_terms` (the network, the
        points [N, ...] in model coordinates, the T levels, and ``schedule``, ``prediction``,
        ``seed``, ``indices``, ``n_draws``, ``batch_size``).

    Returns:
        [N, T] float64: 0 for the ideal denoiser; its magnitude is the relative miscalibration;
        NaN where it is not measured, +inf where the model's output is not finite
        (:func:`calibration_of`).
    """
    inner, size = denoising_terms(fn, x, times, **options)
    return calibration_of(inner, size, options.get("n_draws", RELIABILITY_DRAWS))


def calibration_of(inner: Tensor, size: Tensor, n_draws: int = RELIABILITY_DRAWS) -> Tensor:
    """The calibration ``inner / size`` from the sums of :func:`denoising_terms` [N, T]: NaN
    where the model predicts less than :data:`flipd.noise.MIN_PREDICTED_NOISE` of noise per
    copy (``size / n_draws``; nothing to measure there), +inf where either sum is not finite."""
    inner, size = torch.as_tensor(inner), torch.as_tensor(size)
    calibration = inner / size.clamp_min(1e-300)
    calibration = torch.where(size / n_draws < MIN_PREDICTED_NOISE, torch.nan, calibration)
    return torch.where(torch.isfinite(inner) & torch.isfinite(size), calibration, torch.inf)


def denoising_terms(
    fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    times: Tensor,
    *,
    schedule: Schedule,
    prediction: str,
    seed: int,
    indices: Tensor,
    n_draws: int = RELIABILITY_DRAWS,
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The two sums the calibration is the ratio of, per point and level.

    Args:
        fn: the network ``fn(y, t)``; its output is turned into a score by ``prediction``.
        x: points in model coordinates, [N, ...].
        times: the T levels, times of ``schedule`` [T].
        seed, indices: the noise draw of point n is a function of ``(seed, indices[n], draw)``.
        n_draws: noisy copies per point and level.
        batch_size: points per forward pass.

    Returns:
        ``(inner, size)``, each [N, T] float64: ``inner = Σ_k eps_hat_k · (eps_hat_k - eps_k)``
        and ``size = Σ_k ‖eps_hat_k‖²`` over the ``n_draws`` noisy copies k (``size / n_draws``
        tends to the codimension D - LID at small noise for the ideal denoiser).
    """
    n = x.shape[0]
    inner_out = torch.empty(n, times.numel(), dtype=torch.float64)
    size_out = torch.empty(n, times.numel(), dtype=torch.float64)
    with torch.no_grad():
        for j, t in enumerate(times.to(torch.float64)):
            t1 = t.reshape(1)
            psi, sigma = schedule.psi(t1), schedule.sigma(t1)
            a, b = score_coefficients(prediction, schedule, t1, psi=psi, sigma=sigma)
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                batch = x[start:stop]
                (noise,) = indexed_probes(
                    batch.shape, n_draws, n_draws, distribution="gaussian", seed=int(seed) ^ _NOISE_STREAM,
                    indices=indices[start:stop], dtype=batch.dtype, device=batch.device,
                )  # [k, n, ...]
                y = (float(psi) * batch).unsqueeze(0) + float(sigma) * noise
                flat_y = y.reshape(n_draws * (stop - start), *batch.shape[1:])
                output = fn(flat_y, torch.full((flat_y.shape[0],), float(t), dtype=batch.dtype, device=batch.device))
                score = float(a) * output.to(torch.float64) + float(b) * flat_y.to(torch.float64)
                predicted = (-float(sigma) * score).reshape(n_draws, stop - start, -1)
                drawn = noise.to(torch.float64).reshape(n_draws, stop - start, -1)
                inner_out[start:stop, j] = torch.linalg.vecdot(predicted, predicted - drawn).sum(0).cpu()
                size_out[start:stop, j] = torch.linalg.vecdot(predicted, predicted).sum(0).cpu()
    return inner_out, size_out


def reliable_levels(calibration: Tensor, *, tolerance: float = RELIABILITY_TOLERANCE) -> Tensor:
    """Whether the model denoises each point reliably at each level: |calibration| ≤
    ``tolerance``, [N, T] bool (``calibration`` from :func:`denoising_calibration`; a level
    where it is not measured, NaN, is not shown reliable)."""
    return calibration.abs() <= tolerance
