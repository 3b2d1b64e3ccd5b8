import math

import numpy as np
import pytest

from flipd.metrics import concordance_index, mae, mae_per_component, spearman


def brute_force_concordance(true: np.ndarray, est: np.ndarray, variant: str) -> float:
    """Direct O(n^2) count over unordered pairs, as the definitions read."""
    i, j = np.triu_indices(len(true), k=1)
    dt = np.sign(true[i] - true[j])
    de = np.sign(est[i] - est[j])
    if variant == "all_pairs":
        return float(np.mean(dt * de >= 0))
    comparable = dt != 0
    if not comparable.any():
        return float("nan")
    scores = np.where(de[comparable] == 0, 0.5, (dt[comparable] * de[comparable] > 0) * 1.0)
    return float(scores.mean())


def test_mae_hand_computed():
    assert mae([1, 2, 3], [1, 4, 0]) == pytest.approx((0 + 2 + 3) / 3)
    assert isinstance(mae([1], [1]), float)


def test_mae_per_component_hand_computed():
    out = mae_per_component([2, 2, 1, 0], [2.5, 1.0, 1.0, 3.0], [0, 0, 1, 2])
    assert out == {0: pytest.approx(0.75), 1: 0.0, 2: 3.0}
    assert list(out) == [0, 1, 2]


def test_concordance_hand_computed_without_ties():
    # pairs (0,1) and (0,2) concordant, (1,2) discordant
    assert concordance_index([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)
    assert concordance_index([1, 2, 3], [1, 3, 2], "all_pairs") == pytest.approx(2 / 3)
    assert concordance_index([1, 2, 3], [3, 2, 1]) == 0.0
    assert concordance_index([1, 2, 3], [0.1, 0.2, 0.3]) == 1.0


def test_concordance_hand_computed_with_ties():
    true = [0, 0, 1, 2]
    est = [5, 1, 1, 1]
    # pair (0,1): tied truth -> not comparable for Harrell, concordant for all_pairs
    # pairs (0,2), (0,3): discordant; pairs (1,2), (1,3), (2,3): tied prediction
    assert concordance_index(true, est, "harrell") == pytest.approx((0 + 0.5 * 3) / 5)
    assert concordance_index(true, est, "all_pairs") == pytest.approx(4 / 6)


def test_constant_predictor():
    true = np.array([0, 1, 1, 2, 5, 3])
    constant = np.full(true.shape, 7.0)
    assert concordance_index(true, constant, "harrell") == 0.5
    assert concordance_index(true, constant, "all_pairs") == 1.0


def test_constant_truth():
    assert math.isnan(concordance_index([3, 3, 3], [1, 2, 3], "harrell"))
    assert concordance_index([3, 3, 3], [1, 2, 3], "all_pairs") == 1.0


@pytest.mark.parametrize("variant", ["harrell", "all_pairs"])
def test_concordance_matches_brute_force(variant):
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 80))
        true = rng.integers(0, int(rng.integers(1, 6)), n).astype(float)
        if rng.uniform() < 0.5:
            est = rng.integers(0, int(rng.integers(1, 8)), n).astype(float)
        else:
            est = true + rng.normal(0, 1.5, n)
        expected = brute_force_concordance(true, est, variant)
        got = concordance_index(true, est, variant)
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_concordance_large_input_matches_brute_force():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 10, 2000).astype(float)
    est = np.round(true + rng.normal(0, 2, 2000))  # many ties in the prediction
    for variant in ("harrell", "all_pairs"):
        expected = brute_force_concordance(true, est, variant)
        assert concordance_index(true, est, variant) == pytest.approx(expected, abs=1e-12)


def test_concordance_rejects_bad_input():
    with pytest.raises(ValueError, match="variant"):
        concordance_index([1, 2], [1, 2], "kendall")
    with pytest.raises(ValueError, match="equal length"):
        concordance_index([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        concordance_index([1], [1])
    with pytest.raises(ValueError, match="finite"):
        concordance_index([1, 2], [1, np.nan])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks a = (1, 2, 3), b = (1, 3, 2): rho = 1 - 6 * 2 / (3 * 8)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_shape_checks():
    with pytest.raises(ValueError, match="1-D"):
        mae(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        mae([], [])
    with pytest.raises(ValueError, match="component"):
        mae_per_component([1, 2], [1, 2], [0])
