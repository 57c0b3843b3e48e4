"""Aggregation: mean with a t-interval and Spearman correlations, against hand-computed values."""

import math

import pytest

from kdi_fast.metrics import mean_ci, spearman, spearman_table


def test_mean_ci_hand_example():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), t_{0.975, 3} = 3.182446305284263
    r = mean_ci([1, 2, 3, 4])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert r.mean == 2.5 and r.n == 4
    assert r.low == pytest.approx(2.5 - half, abs=1e-12) and r.high == pytest.approx(2.5 + half, abs=1e-12)
    assert r.half_width == pytest.approx(half)


def test_mean_ci_small_and_constant():
    one = mean_ci([0.3])
    assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    empty = mean_ci([])
    assert math.isnan(empty.mean) and empty.n == 0
    flat = mean_ci([2.0, 2.0, 2.0])
    assert (flat.low, flat.mean, flat.high) == (2.0, 2.0, 2.0)


def test_mean_ci_nan_policy():
    assert math.isnan(mean_ci([1.0, float("nan"), 3.0]).mean)
    r = mean_ci([1.0, float("nan"), 3.0], nan_policy="omit")
    assert r.mean == 2.0 and r.n == 2
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")], nan_policy="raise")
    with pytest.raises(ValueError, match="nan_policy"):
        mean_ci([1.0], nan_policy="skip")
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)


def test_spearman_hand_example():
    # ranks x = 1..5, y = 2,1,4,3,5: d = -1,1,-1,1,0, sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    r = spearman([10, 20, 30, 40, 50], [0.2, 0.1, 0.4, 0.3, 0.5])
    assert r.rho == pytest.approx(0.8)
    # p from the t approximation: t = rho sqrt((n-2)/(1-rho^2)) = 0.8 * sqrt(3/0.36) = 2.3094, 3 df
    from scipy import stats

    assert r.pvalue == pytest.approx(2 * stats.t.sf(0.8 * math.sqrt(3 / 0.36), 3))
    assert spearman([1, 2, 3], [3, 2, 1]).rho == pytest.approx(-1.0)


def test_spearman_undefined_cases():
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]).rho)  # constant measure
    assert math.isnan(spearman([1, 2], [2, 1]).pvalue)  # fewer than 3 pairs
    r = spearman([1, 2, float("nan"), 4], [1, 2, 3, 4], nan_policy="omit")
    assert r.rho == pytest.approx(1.0) and r.n == 3
    with pytest.raises(ValueError, match="pair up"):
        spearman([1, 2, 3], [1, 2])


def test_spearman_table_all_pairs():
    table = spearman_table({"a": [1, 2, 3, 4], "b": [2, 4, 6, 8], "c": [4, 3, 2, 1]})
    assert [(c.x, c.y) for c in table] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [c.rho for c in table] == pytest.approx([1.0, -1.0, -1.0])
