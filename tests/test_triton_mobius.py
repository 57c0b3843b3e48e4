"""The Triton butterfly (kernels/mobius.py) against its torch twin, kdi_fast.reference.butterfly_.

Runs under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1). The kernel only adds and
subtracts, in the same bit order as the reference, so results must be equal bit for bit.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from kdi_fast import reference
from kdi_fast.kernels import mobius as triton_mobius

DTYPES = [torch.float32, torch.float64]
DIRECTIONS = list(itertools.product((-1, 1), (False, True)))  # (sign, superset)
SMALL_BLOCKS = dict(low_bits=3, tile_bits=4, width_bits=1)  # forces several high passes from n = 4 on


def _check(x: torch.Tensor, n: int, sign: int, superset: bool, **sizes) -> None:
    expected = reference.butterfly_(x.clone(), n, sign, superset)
    got = x.clone()
    assert triton_mobius.butterfly_(got, n, sign, superset, **sizes) is got
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", range(0, 15))
def test_default_blocks_match_reference(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, 1 << n, dtype=dtype, generator=g)
    for sign, superset in DIRECTIONS:
        _check(x, n, sign, superset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_small_blocks_cross_block_boundaries(n, dtype):
    """Blocks of 8 values and tiles of 16: bits beyond 3 go through the strided high passes."""
    x = torch.randn(2, 1 << n, dtype=dtype)
    for sign, superset in DIRECTIONS:
        _check(x, n, sign, superset, **SMALL_BLOCKS)


@pytest.mark.parametrize("superset", [False, True])
def test_n14_with_gpu_like_blocks(superset):
    """n=14 with 2^10-value blocks: one low pass of 16 programs and one high pass, as on a GPU but smaller."""
    x = torch.randn(1, 1 << 14, dtype=torch.float64)
    _check(x, 14, -1, superset, low_bits=10, tile_bits=10, width_bits=5)


@pytest.mark.parametrize("rows", [1, 3, 5, 17])
@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_several_rows_per_block_and_partial_last_block(rows, n):
    """n < block bits: a block holds several whole rows; with an odd row count the last block is partial."""
    x = torch.randn(rows, 1 << n)
    _check(x, n, -1, False, low_bits=4, tile_bits=4, width_bits=1)
    _check(x, n, 1, True)


def test_batched_leading_dimensions():
    x = torch.randn(2, 3, 2, 1 << 6, dtype=torch.float64)
    _check(x, 6, -1, False, **SMALL_BLOCKS)
    _check(x, 6, 1, True)


def test_moebius_definition_and_inverse():
    """Independent of the reference: the kernel's Moebius equals the definition, and zeta undoes it."""
    n = 5
    v = torch.randn(1 << n, dtype=torch.float64)
    interactions = triton_mobius.butterfly_(v.clone(), n, -1, False, **SMALL_BLOCKS)
    for s in range(1 << n):
        subsets = [t for t in range(1 << n) if t & ~s == 0]
        expected = sum((-1) ** (bin(s).count("1") - bin(t).count("1")) * v[t].item() for t in subsets)
        assert interactions[s].item() == pytest.approx(expected, abs=1e-12)
    back = triton_mobius.butterfly_(interactions.clone(), n, 1, False, **SMALL_BLOCKS)
    torch.testing.assert_close(back, v)


def test_nan_propagates_to_supersets_only():
    n = 6
    v = torch.zeros(1 << n)
    v[0b000101] = float("nan")
    out = triton_mobius.butterfly_(v, n, -1, False, **SMALL_BLOCKS)
    for s in range(1 << n):
        assert torch.isnan(out[s]) == (s & 0b000101 == 0b000101), s


def test_plan_covers_every_bit_once():
    for n, low, tile, width in [(24, 12, 12, 5), (30, 12, 12, 5), (13, 3, 4, 1), (9, 2, 2, 0), (5, 16, 16, 5)]:
        block, passes = triton_mobius.plan(n, 4 << n, low_bits=low, tile_bits=tile, width_bits=width)
        bits = list(range(min(n, block)))
        for p, r, w in passes:
            assert p == len(bits) and w <= p and r + w <= tile and r >= 1
            bits += range(p, p + r)
        assert bits == list(range(n))
    # the GPU plan at n=24: one low pass and two high passes
    assert triton_mobius.plan(24, 1 << 24, low_bits=12, tile_bits=12, width_bits=5) == (12, [(12, 7, 5), (19, 5, 7)])


def test_bad_input():
    with pytest.raises(TypeError, match="float32 or float64"):
        triton_mobius.butterfly_(torch.zeros(8, dtype=torch.float16), 3, -1, False)
    with pytest.raises(ValueError, match="contiguous"):
        triton_mobius.butterfly_(torch.zeros(8, 4).T, 3, -1, False)
    with pytest.raises(ValueError, match="2\\^n"):
        triton_mobius.butterfly_(torch.zeros(12), 3, -1, False)
    with pytest.raises(ValueError, match="sign"):
        triton_mobius.butterfly_(torch.zeros(8), 3, 2, False)
