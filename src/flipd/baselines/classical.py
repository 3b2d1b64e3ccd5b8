"""Classical, model-free LID estimators from scikit-dimension (skdim), made pointwise.

Every estimator here works on neighbourhoods: for each query point, its ``n_neighbors`` nearest
neighbours (Euclidean) among the points the estimator is fitted on.

- ``"mle"``: Levina-Bickel maximum likelihood from the distances to the k neighbours
  (``skdim.id.MLE``, a local estimator; reference k = 1000).
- ``"lpca"``: local PCA (``skdim.id.lPCA``, default version "FO": eigenvalues above 5% of the
  largest) fitted on the k neighbours (reference k = 1000).
- ``"ess"``: expected simplex skewness (``skdim.id.ESS``, version "a", d = 1) of the k
  neighbours (reference k = 100).
- ``"twonn"``: TwoNN (``skdim.id.TwoNN``, linear fit, 10% of the largest ratios discarded) is a
  global estimator; it is made pointwise the way skdim's ``fit_pw`` does it, by fitting it on
  each point's k neighbours (default k = 100).

Which points are fitted on, and unseen queries:

- ``reference=None`` (the benchmark setting): the estimators are fitted on ``x`` itself, e.g. the
  4096 evaluation points; each point's neighbourhood is its k nearest *other* points of ``x``
  (as in skdim's ``fit``/``fit_pw``; exact duplicates of a point still count as neighbours).
- ``reference`` given: neighbourhoods come from ``reference`` (e.g. a larger training sample),
  and ``x`` holds the query points, which may be unseen. If a query coincides with a reference
  point (distance 0), that one reference point is left out of its neighbourhood, so a query that
  is part of the reference is treated exactly as in the first mode.

In both modes k is clipped, with a warning, to the number of available neighbours.

Cost, and parallelism. Neighbour search is by scikit-learn's ``NearestNeighbors``. MLE then
costs O(k) per point. lPCA, TwoNN and ESS call skdim once per neighbourhood, in chunks spread
over ``n_jobs`` worker processes (joblib); each worker's BLAS is limited to one thread, also for
``n_jobs=1``, because multithreaded BLAS on small matrices is many times slower on a loaded
machine. ESS is by far the slowest: with k = 100, skdim evaluates all 4950 pairs of
neighbours in Python, about 0.08 s CPU per point (about 3 minutes for 4096 points on two idle
cores, whatever D).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["CLASSICAL_METHODS", "DEFAULT_NEIGHBORS", "MIN_NEIGHBORS", "estimate_classical"]

ClassicalMethod = Literal["lpca", "mle", "ess", "twonn"]
#: Names of the classical estimators.
CLASSICAL_METHODS: tuple[str, ...] = ("lpca", "mle", "ess", "twonn")
#: Default neighbourhood size k per method (the reference settings; TwoNN has none, 100 is ours).
DEFAULT_NEIGHBORS: Mapping[str, int] = {"lpca": 1000, "mle": 1000, "ess": 100, "twonn": 100}
#: Smallest neighbourhood any of the estimators can work with.
MIN_NEIGHBORS = 3
#: Default skdim constructor options per method (others are skdim's own defaults).
DEFAULT_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "lpca": {},
    "mle": {},
    "ess": {"random_state": 0},
    "twonn": {},
}


def _as_matrix(values, name: str) -> np.ndarray:
    """``values`` as a float64 array [N, D] (trailing dimensions flattened), checked."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}.")
    if array.ndim < 2:
        raise ValueError(f"{name} must have shape [N, D] (or [N, ...]); got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0); pass at least one point.")
    array = array.reshape(array.shape[0], -1).astype(np.float64, copy=False)
    if array.shape[1] < 2:
        raise ValueError(f"{name} has {array.shape[1]} feature(s) per point; the skdim estimators need D >= 2.")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in bad[:10])
        raise ValueError(f"{name} has non-finite values (NaN or inf) at points [{shown}{', ...' if bad.size > 10 else ''}].")
    return array


def _neighbourhood_size(method: str, n_neighbors: int | None, available: int) -> int:
    k = DEFAULT_NEIGHBORS[method] if n_neighbors is None else n_neighbors
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < MIN_NEIGHBORS:
        raise ValueError(f"n_neighbors must be an integer of at least {MIN_NEIGHBORS}; got {k!r}.")
    if available < MIN_NEIGHBORS:
        raise ValueError(
            f"{method} needs at least {MIN_NEIGHBORS} neighbours per point, but only {available} "
            f"other point(s) are available; pass at least {MIN_NEIGHBORS + 1} points."
        )
    if k > available:
        warnings.warn(
            f"n_neighbors={k} exceeds the {available} available neighbours; using n_neighbors={available}.",
            stacklevel=3,
        )
        k = available
    return int(k)


def _neighbours(
    queries: np.ndarray, base: np.ndarray, k: int, *, same: bool, n_jobs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices [N, k] of each query's k nearest points of ``base``, sorted."""
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_jobs=n_jobs).fit(base)
    if same:  # every point of base is a query; kneighbors() leaves each point itself out
        return search.kneighbors(n_neighbors=k)
    distances, indices = search.kneighbors(queries, n_neighbors=min(k + 1, base.shape[0]))
    if distances.shape[1] == k:
        return distances, indices
    # Leave out one reference point at distance 0 (the query itself), else the (k+1)-th.
    start = (distances[:, 0] == 0).astype(np.intp)
    columns = start[:, None] + np.arange(k)[None, :]
    return np.take_along_axis(distances, columns, axis=1), np.take_along_axis(indices, columns, axis=1)


def _import_skdim():
    """scikit-dimension, imported so that it leaves the warning filters alone: one of its modules
    runs ``warnings.filterwarnings("ignore")`` at import, which would silence every warning of
    the process (flipd's own about results included)."""
    with warnings.catch_warnings():
        import skdim
    return skdim


def _make_estimator(method: str, options: Mapping[str, Any]):
    skdim = _import_skdim()

    constructors = {"lpca": skdim.id.lPCA, "mle": skdim.id.MLE, "ess": skdim.id.ESS, "twonn": skdim.id.TwoNN}
    return constructors[method](**options)


def _fit_neighbourhoods(method: str, options: Mapping[str, Any], base: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One skdim fit per neighbourhood (rows of ``indices`` into ``base``); NaN where TwoNN fails."""
    from threadpoolctl import threadpool_limits

    estimator = _make_estimator(method, options)
    values = np.empty(indices.shape[0], dtype=np.float64)
    with threadpool_limits(limits=1), np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # TwoNN warns once per neighbourhood holding duplicate points; reported once by the caller.
        warnings.simplefilter("ignore", UserWarning)
        for row, neighbourhood in enumerate(indices):
            patch = base[neighbourhood]
            if method == "ess":
                values[row] = estimator.fit_once(patch).dimension_
                continue
            try:
                values[row] = estimator.fit(patch).dimension_
            except ValueError:
                if method != "twonn":
                    raise
                values[row] = np.nan  # fewer than two distinct ratios: a neighbourhood of duplicates
    return values


def _run_chunks(method: str, options: Mapping[str, Any], base: np.ndarray, indices: np.ndarray, n_jobs: int) -> np.ndarray:
    from joblib import Parallel, delayed, effective_n_jobs

    workers = effective_n_jobs(n_jobs)
    if workers == 1 or indices.shape[0] < 2:
        return _fit_neighbourhoods(method, options, base, indices)
    chunks = np.array_split(indices, min(indices.shape[0], 8 * workers))
    parts = Parallel(n_jobs=workers)(delayed(_fit_neighbourhoods)(method, options, base, chunk) for chunk in chunks)
    return np.concatenate(parts)


def estimate_classical(
    x,
    method: ClassicalMethod,
    n_neighbors: int | None = None,
    *,
    reference=None,
    n_jobs: int = 1,
    **options: Any,
) -> np.ndarray:
    """Pointwise LID of each point of ``x`` by a classical estimator from scikit-dimension.

    Args:
        x: points, array or tensor [N, D] (or [N, ...], flattened), D >= 2.
        method: "lpca", "mle", "ess" or "twonn" (see the module notes).
        n_neighbors: neighbourhood size k; default :data:`DEFAULT_NEIGHBORS` (1000 for lpca and
            mle, 100 for ess and twonn). Clipped with a warning to the available neighbours.
        reference: optional points [M, D] to take the neighbourhoods from; ``x`` are then
            queries (possibly unseen). Default: fitted on ``x`` itself.
        n_jobs: worker processes for the neighbour search and the per-neighbourhood fits
            (joblib convention: -1 for all cores).
        **options: constructor arguments of the skdim estimator, e.g. ``ver="maxgap"`` for
            lPCA or ``discard_fraction=0.0`` for TwoNN; they replace :data:`DEFAULT_OPTIONS`.

    Returns:
        float64 array [N]. NaN where the estimator is undefined (e.g. a TwoNN or ESS
        neighbourhood made only of duplicates of one point); a warning counts them.
    """
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {', '.join(CLASSICAL_METHODS)}.")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"n_jobs must be a nonzero integer (-1 for all cores); got {n_jobs!r}.")
    queries = _as_matrix(x, "x")
    if reference is None:
        base, same = queries, True
        available = base.shape[0] - 1
    else:
        base, same = _as_matrix(reference, "reference"), False
        if base.shape[1] != queries.shape[1]:
            raise ValueError(f"reference has {base.shape[1]} features per point but x has {queries.shape[1]}.")
        available = base.shape[0] - 1
    k = _neighbourhood_size(method, n_neighbors, available)
    settings = {**DEFAULT_OPTIONS[method], **options}
    try:
        _make_estimator(method, settings)
    except TypeError as error:
        raise TypeError(f"Invalid option for {method}: {error}") from None
    distances, indices = _neighbours(queries, base, k, same=same, n_jobs=n_jobs)

    if method == "mle":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1), np.errstate(divide="ignore", invalid="ignore"):
            fitted = _make_estimator(method, settings).fit(
                base, precomputed_knn_arrays=(distances, indices), n_neighbors=k
            )
        values = np.asarray(fitted.dimension_pw_, dtype=np.float64)
    else:
        values = _run_chunks(method, settings, base, indices, n_jobs)

    undefined = int(np.sum(~np.isfinite(values)))
    if undefined:
        warnings.warn(
            f"{method} is undefined at {undefined} of {values.size} points (NaN returned), "
            "typically neighbourhoods made of duplicate points.",
            stacklevel=2,
        )
    return values
