"""The Moebius/zeta transforms on every available backend against the definition."""

from __future__ import annotations

import pytest
import torch

import kdi_fast
from kdi_fast.ops import transform as T
from conftest import available_backends

BACKENDS = available_backends("mobius")
COMPACT_BACKENDS = available_backends("mobius_compact")


def brute_mobius(v: torch.Tensor) -> torch.Tensor:
    """I_S = sum_{S' subset of S} (-1)^{|S|-|S'|} v(S'), straight from the definition, in float64."""
    size = v.shape[-1]
    out = torch.zeros_like(v, dtype=torch.float64)
    for s in range(size):
        sub = s
        while True:  # every subset of s
            sign = -1.0 if (bin(s).count("1") - bin(sub).count("1")) % 2 else 1.0
            out[..., s] += sign * v[..., sub].double()
            if sub == 0:
                break
            sub = (sub - 1) & s
    return out


def test_backends_present():
    # CI builds the extension: the C++ backend must be there, and must be what CPU tensors get.
    assert "cpp" in BACKENDS
    assert kdi_fast._backend.choose("mobius", torch.device("cpu")) == "cpp"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", range(0, 11))
def test_mobius_matches_definition(backend, n):
    g = torch.Generator().manual_seed(n)
    v = torch.randn(3, 1 << n, dtype=torch.float64, generator=g)
    expected = brute_mobius(v) if n <= 8 else T.reference.mobius(v)
    got = kdi_fast.mobius(v, backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3)])
def test_round_trip_and_universal_matching(backend, dtype, shape):
    n = 7
    v = torch.randn(*shape, 1 << n, dtype=dtype)
    interactions = kdi_fast.mobius(v, backend=backend)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kdi_fast.zeta(interactions, backend=backend), v, **tol)
    # v(x_T) = sum over S subset of T of I_S, for every T
    masks = torch.arange(1 << n)
    contained = (masks[None, :] & ~masks[:, None]) == 0  # [T, S]: S subset of T
    torch.testing.assert_close(interactions.double() @ contained.double().T, v.double(), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposes(backend):
    n = 6
    masks = torch.arange(1 << n)
    contained = ((masks[None, :] & ~masks[:, None]) == 0).double()  # Z[T, S] = [S subset of T]
    M = torch.linalg.inv(contained)
    g = torch.randn(4, 1 << n, dtype=torch.float64)
    torch.testing.assert_close(T.mobius_transpose(g, backend=backend), g @ M)
    torch.testing.assert_close(T.zeta_transpose(g, backend=backend), g @ contained)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    v = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kdi_fast.mobius(x, backend=backend), (v,))
    assert torch.autograd.gradcheck(lambda x: kdi_fast.zeta(x, backend=backend), (v,))
    assert torch.autograd.gradgradcheck(lambda x: kdi_fast.mobius(x, backend=backend), (v,))


@pytest.mark.parametrize("backend", COMPACT_BACKENDS)
@pytest.mark.parametrize("n,k", [(1, 0), (4, 2), (6, 3), (9, 2), (7, 7), (5, 0)])
def test_compact_layout_matches_dense(backend, n, k):
    v = torch.randn(3, 1 << n, dtype=torch.float64)
    masks = kdi_fast.subsets(n, k)
    assert len(masks) == kdi_fast.num_subsets(n, k)
    assert all(bin(m).count("1") <= k for m in masks.tolist())
    dense_I = kdi_fast.mobius(v)
    got = kdi_fast.mobius(v[:, masks], max_order=k, backend=backend)
    torch.testing.assert_close(got, dense_I[:, masks])
    torch.testing.assert_close(kdi_fast.zeta(got, max_order=k, backend=backend), v[:, masks])
    x = v[:, masks].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: kdi_fast.mobius(t, max_order=k, backend=backend), (x,))


def test_compact_order_documented():
    assert kdi_fast.subsets(3, 2).tolist() == [0, 1, 2, 4, 3, 5, 6]
    assert kdi_fast.num_subsets(30, 2) == 1 + 30 + 435


def test_half_inputs_computed_in_float32():
    v = torch.randn(2, 32).to(torch.bfloat16).requires_grad_(True)
    out = kdi_fast.mobius(v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, brute_mobius(v.detach().float()).float())
    out.sum().backward()
    assert v.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input_and_out(backend):
    base = torch.randn(64, 6, dtype=torch.float64)
    v = base.T  # [6, 64], non-contiguous
    expected = brute_mobius(v)
    torch.testing.assert_close(kdi_fast.mobius(v, backend=backend), expected)
    out = torch.empty(64, 6, dtype=torch.float64).T
    kdi_fast.mobius(v, out=out, backend=backend)  # out is non-contiguous: written for real, not into a copy
    torch.testing.assert_close(out, expected)
    before = base.clone()
    kdi_fast.mobius(v, out=v, backend=backend)  # in place through a non-contiguous view
    torch.testing.assert_close(v, brute_mobius(before.T))


def test_in_place_contiguous():
    v = torch.randn(4, 128)
    expected = kdi_fast.mobius(v)
    ptr = v.data_ptr()
    assert kdi_fast.mobius(v, out=v) is v and v.data_ptr() == ptr
    torch.testing.assert_close(v, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate_to_supersets(backend):
    n = 4
    v = torch.zeros(1 << n, dtype=torch.float64)
    v[0b0101] = float("nan")
    v[0b0010] = float("inf")
    out = kdi_fast.mobius(v, backend=backend)
    for s in range(1 << n):
        if s & 0b0101 == 0b0101:
            assert torch.isnan(out[s]), s
        elif s & 0b0010:
            assert not torch.isfinite(out[s]), s
        else:
            assert out[s] == 0, s


# ------------------------------------------------------------------------------------------- bad input


def test_error_not_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        kdi_fast.mobius(torch.zeros(3, 12))


def test_error_too_many_players():
    with pytest.raises(ValueError, match=r"n=40 players need 2\^40 values .*GiB.*max_order"):
        kdi_fast.subsets(40)
    with pytest.raises(ValueError, match="max_order"):
        kdi_fast.num_subsets(31)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_error_integer_dtype(dtype):
    with pytest.raises(TypeError, match="floating-point"):
        kdi_fast.mobius(torch.zeros(8, dtype=dtype))


def test_error_devices_differ():
    v = torch.zeros(8)
    out = torch.empty(8, device="meta")
    with pytest.raises(ValueError, match="one device"):
        kdi_fast.mobius(v, out=out)


def test_error_compact_length():
    with pytest.raises(ValueError, match="matches no n"):
        kdi_fast.mobius(torch.zeros(6), max_order=2)


def test_forced_backend_missing(monkeypatch):
    monkeypatch.setenv("KDI_FAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="cuda.*not usable"):
        kdi_fast.mobius(torch.zeros(8))
    monkeypatch.setenv("KDI_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="not a backend"):
        kdi_fast.mobius(torch.zeros(8))


@pytest.mark.parametrize("n", [12, 16, 20])
def test_float32_error_bound(n):
    """float32 error bound: |I32 - I64| <= n * 2^-23 * sum_{S' subset S}|v(S')| entrywise (each of the n
    butterfly steps adds one rounding of at most 2^-24 relative to a partial sum bounded by that sum)."""
    v = torch.randn(2, 1 << n, dtype=torch.float64)
    exact = kdi_fast.mobius(v)
    approx = kdi_fast.mobius(v.float()).double()
    bound = n * 2.0**-23 * kdi_fast.zeta(v.abs())  # zeta(|v|)[S] = sum over subsets of S of |v|
    assert ((approx - exact).abs() <= bound).all()
