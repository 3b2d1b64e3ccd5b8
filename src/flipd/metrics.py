"""Scores that compare estimated LID with the ground truth (method notes, §7 "Metrics").

All functions take 1-D array-likes of equal length N (anything ``numpy.asarray`` accepts) and
return a Python ``float`` (or a dict of floats). LID is in units of dimensions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

__all__ = ["mae", "mae_per_component", "concordance_index", "spearman"]

ConcordanceVariant = Literal["harrell", "all_pairs"]


def _paired_vectors(a: object, b: object, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must be 1-D of equal length, "
            f"got shapes {a_arr.shape} and {b_arr.shape}"
        )
    if a_arr.size == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    return a_arr, b_arr


def mae(true: object, est: object) -> float:
    """Mean absolute error ``mean |true - est|``.

    Args:
        true: ``[N]`` ground-truth LID.
        est: ``[N]`` estimated LID.

    Returns:
        The MAE in dimensions (NaN if ``est`` contains NaN).
    """
    t, e = _paired_vectors(true, est, ("true", "est"))
    return float(np.mean(np.abs(t - e)))


def mae_per_component(true: object, est: object, component: object) -> dict[int, float]:
    """MAE computed separately on each component (submanifold).

    Args:
        true: ``[N]`` ground-truth LID.
        est: ``[N]`` estimated LID.
        component: ``[N]`` integer component label of each point.

    Returns:
        ``{label: MAE over the points with that label}`` for every label present, in increasing
        label order.
    """
    t, e = _paired_vectors(true, est, ("true", "est"))
    labels = np.asarray(component)
    if labels.shape != t.shape:
        raise ValueError(f"component must have shape {t.shape}, got {labels.shape}")
    error = np.abs(t - e)
    return {int(label): float(error[labels == label].mean()) for label in np.unique(labels)}


def _tied_pairs(*columns: np.ndarray) -> int:
    """Number of unordered pairs of rows that agree in every given column."""
    _, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    counts = counts.astype(np.int64)
    return int(np.sum(counts * (counts - 1) // 2))


def _pair_counts(t: np.ndarray, e: np.ndarray) -> tuple[int, int, int, int]:
    """Pair counts over all n(n-1)/2 unordered pairs, in O(n log n).

    Returns:
        ``(total, comparable, discordant, prediction_ties)``: all pairs; pairs whose truths differ;
        comparable pairs ordered oppositely by ``e``; comparable pairs tied in ``e``.
    """
    n = t.size
    total = n * (n - 1) // 2
    ties_true = _tied_pairs(t)
    ties_est = _tied_pairs(e)
    ties_both = _tied_pairs(t, e)
    comparable = total - ties_true
    prediction_ties = ties_est - ties_both
    if comparable == 0 or ties_est == total:
        return total, comparable, 0, prediction_ties
    # Kendall's S = concordant - discordant, recovered from scipy's O(n log n) tau-b:
    # tau_b = S / sqrt((total - ties_true) * (total - ties_est)). S is an integer.
    tau_b = stats.kendalltau(t, e, variant="b").statistic
    s_statistic = int(round(tau_b * np.sqrt(float(total - ties_true) * float(total - ties_est))))
    untied = comparable - prediction_ties  # concordant + discordant
    discordant = (untied - s_statistic) // 2
    return total, comparable, discordant, prediction_ties


def concordance_index(
    true: object, est: object, variant: ConcordanceVariant = "harrell"
) -> float:
    """Concordance between true and estimated LID over pairs of points.

    Variants:
        ``"harrell"`` (Harrell's C, the one to report): over pairs with different truth, the share
        that ``est`` orders the same way, a tie in ``est`` counting 1/2. A constant predictor
        scores 0.5, a perfect one 1.0. NaN when all truths are equal (no comparable pair).
        ``"all_pairs"`` (the original FLIPD authors' variant): share of all n(n-1)/2 pairs that are
        not discordant, i.e. with ``(true_i - true_j) * (est_i - est_j) >= 0``; pairs tied in
        truth or in ``est`` count as concordant, so a constant predictor scores 1.0.

    Runs in O(n log n) time (4096 points take milliseconds).

    Args:
        true: ``[N]`` ground-truth LID, N >= 2.
        est: ``[N]`` estimated LID (finite).
        variant: ``"harrell"`` or ``"all_pairs"``.

    Returns:
        The concordance index in [0, 1].
    """
    if variant not in ("harrell", "all_pairs"):
        raise ValueError(f"unknown variant {variant!r}; valid: 'harrell', 'all_pairs'")
    t, e = _paired_vectors(true, est, ("true", "est"))
    if t.size < 2:
        raise ValueError("concordance needs at least 2 points")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(e))):
        raise ValueError("true and est must be finite")
    total, comparable, discordant, prediction_ties = _pair_counts(t, e)
    if variant == "all_pairs":
        return (total - discordant) / total
    if comparable == 0:
        return float("nan")
    concordant = comparable - prediction_ties - discordant
    return (concordant + 0.5 * prediction_ties) / comparable


def spearman(a: object, b: object) -> float:
    """Spearman rank correlation of ``a`` and ``b`` (``scipy.stats.spearmanr``; ties get mean ranks).

    Args:
        a: ``[N]`` values, e.g. per-image LID estimates.
        b: ``[N]`` values, e.g. PNG sizes in bytes.

    Returns:
        The correlation in [-1, 1]; NaN if either input is constant.
    """
    x, y = _paired_vectors(a, b, ("a", "b"))
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)
