"""kdi_fast.ops.masked_embeddings on every backend (Triton under the interpreter) against its torch twin,
kdi_fast.reference.masked_embeddings, and against the definition; gradients by gradcheck in float64."""

from __future__ import annotations

import pytest
import torch

from kdi_fast import _backend, reference
from kdi_fast.kernels import masked_embed as kernel
from kdi_fast.ops import masked_embeddings
from conftest import available_backends

BACKENDS = available_backends("masked_embeddings")


def _case(T: int, H: int, M: int, players: int, dtype=torch.float32, baseline="H", seed=0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(T, H, generator=g).to(dtype)
    player = torch.randint(-1, players, (T,), generator=g)
    masks = torch.randint(0, 1 << players, (M,), generator=g)
    baseline = torch.randn(H if baseline == "H" else (T, H), generator=g).to(dtype)
    return embeds, player, masks, baseline


def test_triton_and_torch_are_both_there():
    assert BACKENDS == ["triton", "torch"]  # conftest switched the interpreter on
    assert _backend.choose("masked_embeddings", torch.device("cpu")) == "torch"
    assert _backend.choose("masked_embeddings", torch.device("cuda")) in ("triton", "torch")


def test_definition_by_hand():
    """Tokens: player 0, not a player, player 1, player 0. Masks {}, {0}, {1}, {0, 1}."""
    embeds = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    baseline = torch.tensor([-1.0, -2.0])
    player = torch.tensor([0, -1, 1, 0])
    masks = torch.tensor([0b00, 0b01, 0b10, 0b11])
    kept = [[0, 1, 0, 0], [1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]]
    expected = torch.stack([torch.stack([embeds[t] if kept[m][t] else baseline for t in range(4)]) for m in range(4)])
    for backend in BACKENDS:
        torch.testing.assert_close(masked_embeddings(embeds, player, masks, baseline, backend=backend), expected,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,H,M,players,baseline", [(1, 1, 1, 1, "H"), (7, 5, 16, 4, "H"), (13, 33, 40, 6, "TH"),
                                                    (33, 100, 9, 3, "TH")])
def test_forward_matches_reference(backend, dtype, T, H, M, players, baseline):
    args = _case(T, H, M, players, dtype, baseline)
    out = masked_embeddings(*args, backend=backend)
    assert out.shape == (M, T, H) and out.dtype == dtype
    torch.testing.assert_close(out, reference.masked_embeddings(*args), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared_masks", [True, False])
@pytest.mark.parametrize("baseline_shape", ["H", "TH", "BTH"])
def test_batched_equals_one_prompt_at_a_time(backend, shared_masks, baseline_shape):
    B, T, H, M = 3, 6, 10, 8
    embeds = torch.randn(B, T, H)
    player = torch.randint(-1, 5, (B, T))
    masks = torch.randint(0, 32, (M,) if shared_masks else (B, M))
    baseline = torch.randn({"H": (H,), "TH": (T, H), "BTH": (B, T, H)}[baseline_shape])
    out = masked_embeddings(embeds, player, masks, baseline, backend=backend)
    assert out.shape == (B, M, T, H)
    for b in range(B):
        one = masked_embeddings(embeds[b], player[b], masks if shared_masks else masks[b],
                                baseline[b] if baseline_shape == "BTH" else baseline, backend=backend)
        torch.testing.assert_close(out[b], one, rtol=0, atol=0)
    torch.testing.assert_close(out, reference.masked_embeddings(embeds, player, masks, baseline), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("baseline", ["H", "TH"])
def test_gradcheck_float64(backend, baseline):
    """(Triton: fast mode, one random projection, as each interpreted call costs milliseconds.)"""
    embeds, player, masks, base = _case(5, 3, 6, 3, torch.float64, baseline, seed=1)
    embeds.requires_grad_(True)
    base.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e, b: masked_embeddings(e, player, masks, b, backend=backend),
                                    (embeds, base), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64_batched(backend):
    B, T, H, M = 2, 4, 3, 5
    embeds = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    base = torch.randn(T, H, dtype=torch.float64, requires_grad=True)
    player = torch.tensor([[0, -1, 1, 2], [2, 2, -1, 0]])
    masks = torch.randint(0, 8, (B, M))
    assert torch.autograd.gradcheck(lambda e, b: masked_embeddings(e, player, masks, b, backend=backend),
                                    (embeds, base), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gradients_match_autograd_through_reference(backend, dtype, tol):
    embeds, player, masks, base = _case(11, 70, 33, 5, dtype, "H", seed=2)
    grad = torch.randn(33, 11, 70).to(dtype)
    e, b = embeds.clone().requires_grad_(True), base.clone().requires_grad_(True)
    masked_embeddings(e, player, masks, b, backend=backend).backward(grad)
    e64, b64 = embeds.double().requires_grad_(True), base.double().requires_grad_(True)
    reference.masked_embeddings(e64, player, masks, b64).backward(grad.double())
    assert e.grad.dtype == dtype and b.grad.dtype == dtype
    torch.testing.assert_close(e.grad.double(), e64.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=tol, atol=tol)


def test_triton_gpu_block_sizes(monkeypatch):
    """The GPU tiling (small tiles, masks split over programs in the backward) under the interpreter."""
    monkeypatch.setattr(kernel, "interpreting", lambda: False)
    B, T, H, M = 2, 9, 130, 70
    assert kernel._blocks(M, T, H) == (8, 4, 128)  # 3 token tiles, 2 hidden tiles, 9 mask blocks: edges everywhere
    embeds = torch.randn(B, T, H, requires_grad=True)
    base = torch.randn(H, requires_grad=True)
    player = torch.randint(-1, 7, (B, T))
    masks = torch.randint(0, 128, (M,))
    grad = torch.randn(B, M, T, H)
    out = masked_embeddings(embeds, player, masks, base, backend="triton")
    out.backward(grad)
    e64, b64 = embeds.detach().double().requires_grad_(True), base.detach().double().requires_grad_(True)
    ref = reference.masked_embeddings(e64, player, masks, b64)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=0)
    torch.testing.assert_close(embeds.grad.double(), e64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base.grad.double(), b64.grad, rtol=1e-5, atol=1e-4)


def test_forced_backend(monkeypatch):
    monkeypatch.setenv("KDI_FAST_BACKEND", "triton")
    assert _backend.choose("masked_embeddings", torch.device("cpu")) == "triton"
    args = _case(4, 3, 5, 2)
    torch.testing.assert_close(masked_embeddings(*args), reference.masked_embeddings(*args))
    monkeypatch.setenv("KDI_FAST_BACKEND", "cpp")  # an op without that backend keeps its automatic choice
    assert _backend.choose("masked_embeddings", torch.device("cpu")) == "torch"


def test_bad_input():
    embeds, player, masks, base = _case(4, 3, 5, 2)
    with pytest.raises(ValueError, match="player_of_token must have shape"):
        masked_embeddings(embeds, player[:3], masks, base)
    with pytest.raises(ValueError, match="baseline must have shape"):
        masked_embeddings(embeds, player, masks, torch.zeros(4))
    with pytest.raises(ValueError, match="embeds must be"):
        masked_embeddings(embeds[0], player, masks, base)
    with pytest.raises(ValueError, match="masks must be"):
        masked_embeddings(embeds, player, masks[None], base)
    with pytest.raises(TypeError, match="integer"):
        masked_embeddings(embeds, player, masks.float(), base)
    with pytest.raises(TypeError, match="floating point"):
        masked_embeddings(embeds.long(), player, masks, base)
    with pytest.raises(ValueError, match="-1 for tokens that are not players"):
        masked_embeddings(embeds, torch.tensor([0, 1, 63, -1]), masks, base)
    with pytest.raises(ValueError, match="different devices"):
        masked_embeddings(embeds, player, masks, base.to("meta"))
