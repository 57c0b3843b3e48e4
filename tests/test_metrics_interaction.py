"""Interaction metrics against hand-computed examples, their definitions and the documented edge cases."""

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdi_fast.metrics import (
    by_order,
    entropy,
    gini,
    normalise,
    overlap_at_k,
    simple_complex,
    split_orders,
    subset_orders,
    top_interactions,
    top_k_count,
)


@dataclass
class FakeResult:
    """Stands in for engine.InteractionResult: the metrics only read `.interactions`."""

    interactions: torch.Tensor


# n = 2, masks 0..3 = {}, {0}, {1}, {0,1}. The empty set (5.0) is excluded; the largest |I| is 4.
EXAMPLE = torch.tensor([5.0, 1.0, -2.0, 4.0], dtype=torch.float64)


def _gini_pairwise(u: torch.Tensor) -> float:
    """The textbook Gini: sum_ij |u_i - u_j| / (2 M^2 mean u) (the same quantity as the sorted formula)."""
    m = len(u)
    return float((u[:, None] - u[None, :]).abs().sum() / (2 * m * m * u.mean()))


# ------------------------------------------------------------------------------------------- normalise


def test_normalise_hand_example():
    assert normalise(EXAMPLE).tolist() == [0.0, 0.25, -0.5, 1.0]


def test_normalise_all_zero_stays_zero():
    assert normalise(torch.tensor([3.0, 0.0, 0.0, 0.0])).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_subset_orders_is_popcount():
    assert subset_orders(3).tolist() == [0, 1, 1, 2, 1, 2, 2, 3]


# ------------------------------------------------------------------------------------------- sparsity


def test_gini_and_entropy_hand_example():
    # |I~| over S != {} = 0.25, 0.5, 1 -> sorted u = (1/4, 1/2, 1), sum = 7/4, sum i*u_i = 17/4.
    # G = 2 (17/4) / (3 * 7/4) - 4/3 = 34/21 - 28/21 = 2/7.
    assert gini(EXAMPLE).item() == pytest.approx(2 / 7, abs=1e-15)
    p = [1 / 7, 2 / 7, 4 / 7]
    assert entropy(EXAMPLE).item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-15)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_gini_entropy_extremes(n):
    m = (1 << n) - 1
    one = torch.zeros(1 << n, dtype=torch.float64)
    one[-1] = -3.0
    assert gini(one).item() == pytest.approx((m - 1) / m, abs=1e-14)
    assert entropy(one).item() == pytest.approx(0.0, abs=1e-14)
    flat = torch.full((1 << n,), 0.7, dtype=torch.float64)
    flat[1::2] *= -1  # signs do not matter, only |I_S|
    assert gini(flat).item() == pytest.approx(0.0, abs=1e-14)
    assert entropy(flat).item() == pytest.approx(math.log(m), abs=1e-14)


def test_single_interaction_n1():
    x = torch.tensor([2.0, -0.3], dtype=torch.float64)  # M = 1
    assert gini(x).item() == 0.0
    assert entropy(x).item() == 0.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_gini_matches_pairwise_definition_and_is_scale_free(n, seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1 << n, generator=g, dtype=torch.float64)
    expected = _gini_pairwise(x[1:].abs())
    assert gini(x).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert gini(scale * x).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    p = x[1:].abs() / x[1:].abs().sum()
    assert entropy(scale * x).item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-10, abs=1e-12)


def test_all_zero_sparsity_is_nan():
    z = torch.zeros(2, 8, dtype=torch.float64)
    z[:, 0] = 1.0  # only the (excluded) empty set
    assert torch.isnan(gini(z)).all() and torch.isnan(entropy(z)).all()


def test_batched_equals_per_row_and_ignores_empty_set():
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    g, h = gini(x), entropy(x)
    assert g.shape == h.shape == (2, 3)
    for i, j in itertools.product(range(2), range(3)):
        row = x[i, j].clone()
        row[0] = 1e6
        assert gini(row).item() == pytest.approx(g[i, j].item(), abs=1e-14)
        assert entropy(row).item() == pytest.approx(h[i, j].item(), abs=1e-14)


def test_gini_with_orders_uses_only_those_subsets():
    # orders [1] over n = 2: |I| of {0}, {1} = 1, 2 -> G = 2 (1 + 4) / (2 * 3) - 3/2 = 1/6.
    assert gini(EXAMPLE, orders=[1]).item() == pytest.approx(1 / 6, abs=1e-15)
    assert torch.isnan(gini(EXAMPLE, orders=[])).item()
    with pytest.raises(ValueError, match="orders"):
        gini(EXAMPLE, orders=[3])


# ------------------------------------------------------------------------------------------- alignment


def test_top_k_count_floor_is_exact_at_j_over_m():
    for n in range(1, 12):
        m = (1 << n) - 1
        assert [top_k_count(j / m, m) for j in range(1, m + 1)] == list(range(1, m + 1))
    assert top_k_count(0.1, 255) == 25
    for bad in (0, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="k must be"):
            top_k_count(bad, 7)


def test_overlap_hand_example():
    # non-empty masks 1, 2, 3; K = floor(2/3 * 3) = 2.
    teacher = torch.tensor([100.0, 3.0, 1.0, -2.0])  # top-2 = {1, 3}
    student = torch.tensor([-50.0, 1.0, -3.0, 2.0])  # top-2 = {2, 3}
    assert overlap_at_k(teacher, student, 2 / 3).item() == 0.5
    assert overlap_at_k(teacher, student, 1.0).item() == 1.0
    assert overlap_at_k(teacher, teacher, 1 / 3).item() == 1.0
    assert overlap_at_k(teacher, student, 1 / 3).item() == 0.0  # {1} vs {2}
    both = overlap_at_k(teacher, student, [1 / 3, 2 / 3, 1.0])
    assert both.tolist() == [0.0, 0.5, 1.0]


def test_overlap_ties_go_to_smaller_mask():
    teacher = torch.tensor([0.0, 1.0, 1.0, 1.0])  # all tied: top-2 = {1, 2}
    student = torch.tensor([0.0, 0.0, 1.0, 1.0])  # top-2 = {2, 3}
    assert overlap_at_k(teacher, student, 2 / 3).item() == 0.5
    masks, values = top_interactions(teacher, 2)
    assert masks.tolist() == [1, 2] and values.tolist() == [1.0, 1.0]
    # all-zero rows are ranked by the same rule: both top sets are the smallest masks.
    zero = torch.zeros(4)
    assert overlap_at_k(zero, zero, 2 / 3).item() == 1.0


def test_overlap_k_zero_is_nan_and_m1():
    a = torch.tensor([0.0, 0.4])
    b = torch.tensor([1.0, -2.0])
    assert overlap_at_k(a, b, 1.0).item() == 1.0  # M = 1, K = 1
    assert math.isnan(overlap_at_k(a, b, 0.5).item())  # K = floor(0.5) = 0
    x = torch.randn(3, 8)
    out = overlap_at_k(x, x, [0.1, 0.5])
    assert torch.isnan(out[:, 0]).all() and (out[:, 1] == 1).all()  # M = 7: K = 0 and 3


def test_overlap_batched_and_orders():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(4, 32, generator=g), torch.randn(4, 32, generator=g)
    out = overlap_at_k(t, s, [0.1, 0.3])
    assert out.shape == (4, 2)
    for i in range(4):
        for j, k in enumerate([0.1, 0.3]):
            big_k = math.floor(k * 31)
            top_t = set(torch.argsort(t[i, 1:].abs(), descending=True)[:big_k].tolist())
            top_s = set(torch.argsort(s[i, 1:].abs(), descending=True)[:big_k].tolist())
            assert out[i, j].item() == pytest.approx(len(top_t & top_s) / big_k)
    # within order 1 of n = 2: masks 1, 2. Teacher |I| = 3, 1 -> {1}; student 1, 3 -> {2}.
    teacher = torch.tensor([0.0, 3.0, 1.0, -2.0])
    student = torch.tensor([0.0, 1.0, -3.0, 2.0])
    assert overlap_at_k(teacher, student, 0.5, orders=[1]).item() == 0.0
    assert overlap_at_k(teacher, student, 1.0, orders=[1]).item() == 1.0
    assert math.isnan(overlap_at_k(teacher, student, 1.0, orders=[]).item())


def test_overlap_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        overlap_at_k(torch.zeros(8), torch.zeros(16))


# ------------------------------------------------------------------------------------------- orders


def test_by_order_hand_example():
    prof = by_order(EXAMPLE, threshold=0.3)  # I~ = 0.25 ({0}), -0.5 ({1}), 1 ({0,1}); sum |I~| = 7/4
    assert prof.orders == [1, 2] and prof.count == [2, 1]
    assert prof.strength.tolist() == [0.375, 1.0]
    assert prof.strength_pos.tolist() == [0.125, 1.0]
    assert prof.strength_neg.tolist() == [0.25, 0.0]
    torch.testing.assert_close(prof.share, torch.tensor([3 / 7, 4 / 7], dtype=torch.float64))
    torch.testing.assert_close(prof.share_pos, torch.tensor([1 / 7, 4 / 7], dtype=torch.float64))
    torch.testing.assert_close(prof.share_neg, torch.tensor([2 / 7, 0.0], dtype=torch.float64))
    assert prof.salient.tolist() == [1.0, 1.0]
    assert prof.salient_pos.tolist() == [0.0, 1.0]
    assert prof.salient_neg.tolist() == [1.0, 0.0]


def test_by_order_batched_sums_and_zero():
    x = torch.randn(3, 64, dtype=torch.float64)
    prof = by_order(x)
    assert prof.strength.shape == (3, 6) and prof.count == [6, 15, 20, 15, 6, 1]
    torch.testing.assert_close(prof.share.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(prof.share, prof.share_pos + prof.share_neg)
    assert (prof.salient == prof.salient_pos + prof.salient_neg).all()
    assert prof.salient.sum(-1).min() >= 1  # the largest effect is 1 > threshold
    zero = by_order(torch.zeros(8))
    assert torch.isnan(zero.share).all() and (zero.strength == 0).all() and (zero.salient == 0).all()
    with pytest.raises(ValueError, match="threshold"):
        by_order(x, threshold=1.5)


# ------------------------------------------------------------------------------------------- simple vs complex


def test_split_orders_default_is_half():
    assert split_orders(8) == ([1, 2, 3, 4], [5, 6, 7, 8])
    assert split_orders(9) == ([1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert split_orders(1) == ([], [1])
    assert split_orders(5, 2) == ([1, 2], [3, 4, 5])
    assert split_orders(3, 7) == ([1, 2, 3], [])


def test_simple_complex_hand_example():
    # n = 3, max_simple_order = 1: simple = {0}, {1}, {2} (masks 1, 2, 4); complex = masks 3, 5, 6, 7.
    x = torch.tensor([9.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, -2.0], dtype=torch.float64)
    teacher = torch.tensor([0.0, 0.0, 1.0, 0.0, 3.0, 0.0, 5.0, 4.0], dtype=torch.float64)
    out = simple_complex(x, teacher, max_simple_order=1, k=0.5)
    assert out["share_simple"].item() == pytest.approx(3 / 5)
    assert out["share_complex"].item() == pytest.approx(2 / 5)
    assert out["gini_simple"].item() == pytest.approx(0.0, abs=1e-15)
    assert out["gini_complex"].item() == pytest.approx(0.75)  # one non-zero of 4: (M - 1) / M
    assert out["entropy_complex"].item() == pytest.approx(0.0, abs=1e-15)
    # simple K = floor(1.5) = 1: student top {mask 1} (tie to smaller), teacher top {mask 4} -> 0
    # complex K = 2: student {7, 3} (tie among zeros to the smaller), teacher {6, 7} -> 1/2
    assert out["overlap_simple"].item() == 0.0
    assert out["overlap_complex"].item() == 0.5
    assert gini(x, orders=[2, 3]).item() == out["gini_complex"].item()


def test_simple_complex_empty_part_n1():
    out = simple_complex(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0]), k=1.0)
    assert out["share_simple"].item() == 0.0 and out["share_complex"].item() == 1.0
    assert math.isnan(out["gini_simple"].item()) and math.isnan(out["overlap_simple"].item())
    assert out["overlap_complex"].item() == 1.0


# ------------------------------------------------------------------------------------------- input handling


def test_results_and_lists_of_results():
    r1, r2 = FakeResult(EXAMPLE), FakeResult(-2 * EXAMPLE)
    assert gini(r1).item() == pytest.approx(2 / 7)
    assert gini([r1, r2]).tolist() == pytest.approx([2 / 7, 2 / 7])
    assert overlap_at_k([r1, r2], [r2, r1], 1 / 3).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="different numbers of players"):
        gini([r1, FakeResult(torch.zeros(8))])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_a_clear_error(bad):
    x = torch.randn(2, 8)
    x[1, 5] = bad
    for fn in (gini, entropy, normalise, by_order, lambda v: overlap_at_k(v, v)):
        with pytest.raises(ValueError, match="NaN/inf"):
            fn(x)


@pytest.mark.parametrize("size", [1, 3, 12])
def test_last_dim_must_be_power_of_two(size):
    with pytest.raises(ValueError, match="2\\^n"):
        gini(torch.ones(size))


def test_wrong_types():
    with pytest.raises(TypeError, match="Tensor"):
        gini([0.1, 0.2])
    with pytest.raises(ValueError, match="real Tensor"):
        gini(torch.tensor(1.0))
    with pytest.raises(ValueError, match="count"):
        top_interactions(EXAMPLE, 0.5)


def test_lazy_exports_from_the_package():
    import kdi_fast
    import kdi_fast.metrics

    assert kdi_fast.gini is kdi_fast.metrics.gini and kdi_fast.overlap_at_k is kdi_fast.metrics.overlap_at_k
    assert "gini" in kdi_fast.__all__ and "compare_models" in kdi_fast.__all__
