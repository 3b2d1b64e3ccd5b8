"""What the image study measures: FLIPD over a t0 grid and its t0 choice, NB, the classical
estimators, and Spearman correlations with PNG size."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["choose_t0", "flipd_over_grid", "run_classical", "run_nb"]


def choose_t0(curves: np.ndarray, t0_grid: Sequence[float]) -> tuple[float, str]:
    """The headline t0 of a model, chosen without PNG sizes.

    Applies the knee rule (:func:`flipd.knee`, reference window 0.05 < t < 0.5) to the median
    FLIPD curve over the evaluated images (``curves`` [N, T] on ``t0_grid``). If the window
    holds fewer than 3 grid times or no knee is found, falls back to the grid time closest to
    0.05 (the authors' default small noise level).

    Returns:
        ``(t0, rule)`` with ``rule`` a short description of how t0 was obtained.
    """
    from flipd import knee

    grid = np.asarray(t0_grid, dtype=np.float64)
    median = np.median(np.asarray(curves, dtype=np.float64), axis=0)
    fallback = float(grid[np.argmin(np.abs(grid - 0.05))])
    try:
        found = knee(median[None], grid)
    except ValueError:
        return fallback, "grid time closest to 0.05 (fewer than 3 grid times in the knee window)"
    if bool(found.found[0]):
        return float(found.t0[0]), "knee of the median FLIPD curve (kneed, window 0.05 < t0 < 0.5)"
    return fallback, "grid time closest to 0.05 (no knee in the median FLIPD curve)"


def spearman_or_none(a, b) -> float | None:
    """Spearman correlation of two [n] arrays; None where undefined (a constant input, n < 2)."""
    from flipd.metrics import spearman

    value = spearman(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return value if math.isfinite(value) else None


def flipd_over_grid(
    model,
    x: torch.Tensor,
    t0_grid: Sequence[float],
    *,
    n_probes: int | Literal["exact"],
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """FLIPD of points ``x`` (in the model's input shape) at every t0 of the grid.

    ``model`` is a :class:`flipd.train.DiffusionModel` (``x`` in data units: it standardises
    them itself) or a bare network ``network(y, t)`` (epsilon prediction, reference VP
    schedule; ``x`` in its coordinates). Returns ``(lid [N, T], stderr [N, T],
    seconds [T])``; the same probes are used at every t0.
    """
    from flipd import estimate

    trace_options: dict[str, Any] = (
        {"trace": "exact"} if n_probes == "exact" else {"trace": "hutchinson", "n_probes": int(n_probes)}
    )
    lids, errors, seconds = [], [], []
    for t0 in t0_grid:
        start = time.perf_counter()
        if hasattr(model, "estimate"):
            result = model.estimate(x, t0=float(t0), seed=seed, batch_size=batch_size, **trace_options)
        else:
            result = estimate(model, x, t0=float(t0), seed=seed, batch_size=batch_size, **trace_options)
        seconds.append(time.perf_counter() - start)
        lids.append(result.lid.detach().double().numpy())
        errors.append(result.stderr.detach().double().numpy())
    return np.stack(lids, axis=1), np.stack(errors, axis=1), seconds


def run_nb(
    model, x: torch.Tensor, *, copies_per_dim: int, seed: int, center: bool = False
) -> tuple[np.ndarray, float, int]:
    """NB estimates [n] of points ``x`` with ``model`` at its reference noise level (t = 0.01);
    ``center`` centres the score rows first (see :func:`flipd.baselines.estimate_nb`).

    Returns ``(lid, seconds, K)``.
    """
    from flipd.baselines import estimate_nb

    dim = int(x[0].numel())
    n_copies = max(2, copies_per_dim * dim)
    start = time.perf_counter()
    lid = estimate_nb(
        model, x, n_copies=n_copies, rows_per_forward=max(n_copies, 1024), seed=seed, center=center,
    )
    return np.asarray(lid, dtype=np.float64), time.perf_counter() - start, n_copies


def run_classical(method: str, queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, float, int]:
    """A scikit-dimension estimator at ``queries`` [n, D], neighbourhoods among ``pool`` [M, D].

    Returns ``(lid, seconds, k used)``.
    """
    from flipd.baselines import estimate_classical

    k_used = min(k, pool.shape[0] - 1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lid = estimate_classical(queries, method, n_neighbors=k_used, reference=pool, n_jobs=1)
    return np.asarray(lid, dtype=np.float64), time.perf_counter() - start, k_used
