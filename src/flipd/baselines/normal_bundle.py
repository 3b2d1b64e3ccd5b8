"""The normal-bundle (NB) estimator of local intrinsic dimension (Stanczuk et al., ICML 2024).

Near a data manifold, the score of slightly noised data points back towards the manifold, so
the scores of many noisy copies of one point span its normal space. For a point x in R^D:

1. draw K noisy copies y_k = psi·x + sigma·eps_k at a small noise level (reference: t = 0.01
   of the VP schedule with beta 0.1 → 20, i.e. sigma ≈ 0.045);
2. stack sigma·s(y_k) (the score in noise units, ≈ −eps_k's normal part) into a K×D matrix;
3. take its singular values s_1 ≥ … ≥ s_m (m = min(K, D)) and find the largest drop
   s_i − s_{i+1}; the i singular values before it count the normal directions, so
   LID = D − i.

The default K = 4·D. The estimate is an integer in [D − m + 1, D − 1]: NB cannot report
LID = 0 (an isolated point) or LID = D (full-dimensional data), where there is no drop.

Cost per point: K network forward passes (no Jacobians) and the singular values of a K×D
matrix, O(K·D²) = O(4·D³). They are computed as square roots of the eigenvalues of the D×D
Gram matrix, accumulated over forward passes: the same values (up to rounding of ones far below
the largest, which do not decide the drop) at about a third of the cost of an SVD and without
storing the K×D matrix. Memory: the noisy copies of one group of points (max(rows_per_forward,
K)·D values in x's dtype), a D×D float64 Gram matrix per point of the group, and the network's
activations for ``rows_per_forward`` inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..estimator import ModelLike, NonFiniteOutputError, _as_batch, _as_indices, resolve_model
from ..noise import REFERENCE_SCHEDULE, resolve_time
from ..parameterization import score_coefficients
from ..schedules import Schedule
from ._common import as_numpy

__all__ = [
    "DEFAULT_COPIES_PER_DIM",
    "DEFAULT_ROWS_PER_FORWARD",
    "NB_REFERENCE_DELTA",
    "NB_REFERENCE_T",
    "estimate_nb",
    "lid_from_spectrum",
    "normal_bundle_spectrum",
]

#: Noisy copies per ambient dimension: K = 4·D.
DEFAULT_COPIES_PER_DIM = 4
#: Default number of noisy inputs per network forward pass.
DEFAULT_ROWS_PER_FORWARD = 4096
#: Reference noise level: t = 0.01 of the reference VP schedule (sigma ≈ 0.045).
NB_REFERENCE_T = 0.01
#: The same noise level named schedule-free, as delta = log(sigma/psi); the default under any schedule.
NB_REFERENCE_DELTA = float(REFERENCE_SCHEDULE.delta(NB_REFERENCE_T))


def _copy_generator(seed: int, point: int, device: torch.device) -> torch.Generator:
    """Generator of the noise for the copies of the point of global index ``point``; independent
    of the batching and of which other points are estimated."""
    return torch.Generator(device=device).manual_seed((seed * 0x9E3779B97F4A7C15 + point) % 2**63)


def _check_output(output: Tensor, inputs: Tensor, first_row: int, group: Tensor, n_copies: int, n_points: int,
                  time: float) -> None:
    """Refuse a model output that is not a tensor shaped like ``inputs``, or that has NaN or inf.

    ``inputs`` are rows ``first_row..`` of a group's noisy copies (``n_copies`` per point, point
    by point; ``group`` [g] holds the points' global indices); a non-finite output raises
    :class:`~flipd.checks.NonFiniteOutputError` naming every point with such a copy."""
    if not isinstance(output, Tensor):
        raise TypeError(f"The model returned {type(output).__name__}, not a tensor; wrap it with flipd.ModelAdapter.")
    if output.shape != inputs.shape:
        raise ValueError(
            f"The model returned shape {tuple(output.shape)} for input of shape {tuple(inputs.shape)}; "
            "it must return a tensor shaped like its input."
        )
    finite = torch.isfinite(output.detach().reshape(output.shape[0], -1)).all(dim=1)
    if not finite.all():
        rows = first_row + torch.nonzero(~finite).flatten().cpu()
        bad = torch.unique(torch.div(rows, n_copies, rounding_mode="floor"))
        raise NonFiniteOutputError(group[bad].tolist(), n_points, time)


def normal_bundle_spectrum(
    model: ModelLike,
    x,
    *,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    t: float | None = None,
    sigma: float | None = None,
    delta: float | None = None,
    n_copies: int | None = None,
    rows_per_forward: int = DEFAULT_ROWS_PER_FORWARD,
    seed: int = 0,
    indices=None,
    center: bool = False,
    encoded: bool = False,
) -> np.ndarray:
    """Singular values of each point's matrix of noisy-copy scores, [N, min(K, D)], descending.

    Args:
        model: a :class:`flipd.Model`, or a callable ``model(y, t)`` (see :func:`flipd.flipd`).
        x: clean data points, tensor or array [N, ...]; D is the number of features per point.
        schedule: the model's noise schedule (default the reference ``VP()``).
        prediction: what the network outputs ("score", "epsilon", "sample", "v_prediction",
            "flow_velocity"); converted to the score with
            :func:`flipd.parameterization.score_coefficients`.
        t, sigma, delta: the noise level, at most one of: a time of ``schedule``, the noise
            standard deviation sigma(t), or delta = log(sigma/psi). Default: delta of the
            reference VP schedule at t = 0.01 (:data:`NB_REFERENCE_DELTA`), i.e. t = 0.01
            under ``VP()``.
        n_copies: noisy copies K per point (default 4·D).
        rows_per_forward: noisy inputs per forward pass; bounds the network's memory. All K
            copies of a point are kept until its SVD, so a group holds
            max(1, rows_per_forward // K) points.
        seed: seed of the noise. Each point's copies come from their own generator, seeded by
            ``seed`` and the point's global index, so the result does not depend on
            ``rows_per_forward`` (up to rounding) or on the other points; no global random
            state is touched.
        indices: the points' global indices, [N] integers (default 0..N-1).
        center: subtract the mean of the K score rows before taking singular values (not in
            the reference). The part of the score shared by all copies (the pull along the
            manifold, and any bias of the model at x) is one direction of rank one; when it is
            large, the largest drop falls after the first singular value and the reference
            rule returns D − 1 whatever the point. Centring leaves only the spread of the
            copies, which is what spans the normal space.
        encoded: ``x`` is already in a :class:`flipd.Model`'s coordinates.

    Returns:
        float64 array [N, min(K, D)]: singular values of the K×D matrix of sigma·score (score
        in noise units; centred with ``center``), from the eigenvalues of its Gram matrix.
    """
    x = _as_batch(x)
    # Options first: a flipd.Model's encode may be costly.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer; got {seed!r}.")
    if n_copies is not None and (not isinstance(n_copies, int) or n_copies < 2):
        raise ValueError(f"n_copies must be an integer of at least 2; got {n_copies!r}.")
    if not isinstance(rows_per_forward, int) or rows_per_forward < 1:
        raise ValueError(f"rows_per_forward must be a positive integer; got {rows_per_forward!r}.")
    indices = _as_indices(indices, x.shape[0])
    model, x, schedule, prediction = resolve_model(model, x, schedule=schedule, prediction=prediction, encoded=encoded)
    n, dim = x.shape[0], x[0].numel()
    if n_copies is None:
        n_copies = DEFAULT_COPIES_PER_DIM * dim
    time = resolve_time(schedule, t0=t, sigma=sigma, delta=delta, default_delta=NB_REFERENCE_DELTA)
    time64 = torch.tensor(time, dtype=torch.float64)
    psi, noise_std = float(schedule.psi(time64)), float(schedule.sigma(time64))
    a, b = (float(c) for c in score_coefficients(prediction, schedule, time64))

    points_per_group = max(1, rows_per_forward // n_copies)
    spectra = np.empty((n, min(n_copies, dim)), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, n, points_per_group):
            stop = min(n, start + points_per_group)
            group = x[start:stop]
            noise = torch.stack([
                torch.randn(
                    (n_copies, *group.shape[1:]), generator=_copy_generator(seed, int(indices[point]), x.device),
                    dtype=x.dtype, device=x.device,
                )
                for point in range(start, stop)
            ])
            noisy = (psi * group.unsqueeze(1) + noise_std * noise).flatten(0, 1)  # [g·K, ...]
            # Gram matrices SᵀS [g, D, D] of the stacked scores S [K, D]; their eigenvalues are the
            # squared singular values of S. Accumulated over forward passes, so no K×D matrix is kept.
            gram = torch.zeros(stop - start, dim, dim, dtype=torch.float64, device=x.device)
            row_sum = torch.zeros(stop - start, dim, dtype=torch.float64, device=x.device)
            for row in range(0, noisy.shape[0], rows_per_forward):
                inputs = noisy[row : row + rows_per_forward]
                times = torch.full((inputs.shape[0],), time, dtype=x.dtype, device=x.device)
                output = model(inputs, times)
                _check_output(output, inputs, row, indices[start:stop], n_copies, n, time)
                score = a * output.to(torch.float64) + b * inputs.to(torch.float64)
                scaled = noise_std * score.flatten(1)
                if stop - start == 1:  # one point, possibly over several forward passes
                    gram[0] += scaled.T @ scaled
                    if center:
                        row_sum[0] += scaled.sum(0)
                else:  # several whole points in this single forward pass
                    scaled = scaled.reshape(stop - start, n_copies, dim)
                    gram += scaled.mT @ scaled
                    if center:
                        row_sum += scaled.sum(1)
            if center:  # Gram matrix of the centred rows: SᵀS − K·m mᵀ, m the mean row
                mean = row_sum / n_copies
                gram -= n_copies * mean.unsqueeze(2) * mean.unsqueeze(1)
            eigenvalues = torch.linalg.eigvalsh(gram).flip(-1)[:, : spectra.shape[1]]
            spectra[start:stop] = as_numpy(eigenvalues.clamp_min(0).sqrt())
    return spectra


def lid_from_spectrum(singular_values, ambient_dim: int) -> np.ndarray:
    """NB's rule: LID = D − (1 + index of the largest drop between consecutive singular values).

    Args:
        singular_values: array [N, m] (m ≥ 2) of each point's singular values (any order;
            they are sorted descending here).
        ambient_dim: D.

    Returns:
        float64 array [N] of integer-valued estimates.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"singular_values must have shape [N, m] with m >= 2; got {values.shape}.")
    if values.shape[1] > ambient_dim:
        raise ValueError(f"{values.shape[1]} singular values per point exceed the ambient dimension {ambient_dim}.")
    values = -np.sort(-values, axis=1)
    drops = values[:, :-1] - values[:, 1:]
    normal_directions = np.argmax(drops, axis=1) + 1
    return (ambient_dim - normal_directions).astype(np.float64)


def estimate_nb(
    model: ModelLike,
    x,
    *,
    schedule: Schedule | None = None,
    prediction: str | None = None,
    t: float | None = None,
    sigma: float | None = None,
    delta: float | None = None,
    n_copies: int | None = None,
    rows_per_forward: int = DEFAULT_ROWS_PER_FORWARD,
    seed: int = 0,
    indices=None,
    center: bool = False,
    encoded: bool = False,
) -> np.ndarray:
    """Local intrinsic dimension of each point of ``x`` by the normal-bundle estimator.

    Arguments are those of :func:`normal_bundle_spectrum`. Cost per point: K = 4·D forward
    passes and an SVD of a K×D matrix.

    Returns:
        float64 array [N] of integer-valued estimates in [D − min(K, D) + 1, D − 1].
    """
    x = _as_batch(x)
    spectra = normal_bundle_spectrum(
        model, x, schedule=schedule, prediction=prediction, t=t, sigma=sigma, delta=delta,
        n_copies=n_copies, rows_per_forward=rows_per_forward, seed=seed, indices=indices, center=center,
        encoded=encoded,
    )
    return lid_from_spectrum(spectra, x[0].numel())
