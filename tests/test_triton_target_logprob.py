"""kdi_fast.ops.target_logprobs on every backend (Triton under the interpreter) against log_softmax and its torch
twin kdi_fast.reference.target_logprobs; gradients by gradcheck in float64 and against autograd through the
reference; and the memory promise: no [N, V] tensor in the forward or the backward."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from kdi_fast import _backend, reference
from kdi_fast.ops import target_logprobs
from conftest import available_backends

BACKENDS = available_backends("target_logprobs")


def _case(N: int, H: int, V: int, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    return hidden, weight, torch.randint(0, V, (N,), generator=g), b


def test_triton_and_torch_are_both_there():
    assert BACKENDS == ["triton", "torch"]
    assert _backend.choose("target_logprobs", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_definition(backend):
    """Straight from the definition: the full log_softmax over the vocabulary, in float64."""
    hidden, weight, targets, bias = _case(9, 6, 11, torch.float64)
    expected = torch.log_softmax(hidden @ weight.T + bias, dim=-1)[torch.arange(9), targets]
    torch.testing.assert_close(target_logprobs(hidden, weight, targets, bias, chunk_size=4, backend=backend),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("N,H,V,chunk,bias", [(1, 1, 1, 1, False), (7, 5, 13, 3, True), (37, 20, 1000, 16, True),
                                              (70, 16, 5003, 64, False)])
def test_forward_matches_reference(backend, dtype, N, H, V, chunk, bias):
    hidden, weight, targets, b = _case(N, H, V, dtype, bias)
    got = target_logprobs(hidden, weight, targets, b, chunk_size=chunk, backend=backend)
    assert got.shape == (N,) and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, reference.target_logprobs(hidden, weight, targets, b, chunk), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    """(Triton: fast mode, one random projection, as each interpreted call costs milliseconds.)"""
    hidden, weight, targets, bias = _case(5, 3, 7, torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (hidden, weight, bias))
    assert torch.autograd.gradcheck(
        lambda h, w, b: target_logprobs(h, w, targets, b, chunk_size=2, backend=backend), inputs,
        fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,V,chunk", [(37, 1000, 16), (64, 3001, 64)])
def test_gradients_float32_match_autograd_through_reference(backend, N, V, chunk):
    hidden, weight, targets, bias = _case(N, 24, V)
    grad = torch.randn(N)
    ours = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    target_logprobs(ours[0], ours[1], targets, ours[2], chunk_size=chunk, backend=backend).backward(grad)
    ref = [t.double().requires_grad_(True) for t in (hidden, weight, bias)]
    reference.target_logprobs(ref[0], ref[1], targets, ref[2], chunk).backward(grad.double())
    for mine, theirs in zip(ours, ref):
        assert mine.grad.dtype == torch.float32
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_error_within_a_bfloat16_reference_run(backend):
    """bf16 inputs: our error against a float64 run is at most 2x (+ a small floor) that of plain torch autograd
    through the reference in bf16 (the flash-attention style bound)."""
    hidden, weight, targets, bias = _case(48, 32, 2000, torch.bfloat16)
    grad = torch.randn(48, generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, dtype in (("ours", torch.bfloat16), ("bf16 reference", torch.bfloat16), ("fp64", torch.float64)):
        leaves = [t.detach().clone().to(dtype).requires_grad_(True) for t in (hidden, weight, bias)]
        if name == "ours":
            out = target_logprobs(*leaves[:2], targets, leaves[2], chunk_size=16, backend=backend)
            assert out.dtype == torch.float32
        else:
            out = reference.target_logprobs(*leaves[:2], targets, leaves[2], 16)
        out.backward(grad.to(out.dtype))
        assert all(t.grad.dtype == dtype for t in leaves)
        runs[name] = [out.double()] + [t.grad.double() for t in leaves]
    for ours, plain, exact in zip(runs["ours"], runs["bf16 reference"], runs["fp64"]):
        assert (ours - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_bfloat16(backend):
    """Under autocast the logits are computed in bf16, in the forward and in the recomputing backward alike."""
    hidden, weight, targets, bias = _case(20, 16, 300)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = target_logprobs(h, w, targets, bias, chunk_size=8, backend=backend)
    assert got.dtype == torch.float32
    expected = reference.target_logprobs(hidden.bfloat16(), weight.bfloat16(), targets, bias.float(), 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.sum().backward()  # an expanded (stride 0) upstream gradient
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    h64, w64 = hidden.double().requires_grad_(True), weight.double().requires_grad_(True)
    reference.target_logprobs(h64, w64, targets, bias.double(), 8).sum().backward()
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_infinity_bias_bans_tokens(backend):
    hidden, weight, targets, bias = _case(6, 4, 50, torch.float64)
    bias[:10] = float("-inf")
    targets = targets.clamp(min=10)
    got = target_logprobs(hidden, weight, targets, bias, chunk_size=4, backend=backend)
    expected = torch.log_softmax(hidden @ weight.T + bias, dim=-1)[torch.arange(6), targets]
    torch.testing.assert_close(got, expected)


def test_only_requested_gradients_and_no_grad_mode():
    hidden, weight, targets, bias = _case(8, 4, 20)
    h = hidden.clone().requires_grad_(True)
    target_logprobs(h, weight, targets, bias, chunk_size=3).sum().backward()
    assert h.grad is not None and weight.grad is None and bias.grad is None
    with torch.no_grad():
        assert not target_logprobs(h, weight, targets, bias).requires_grad


def _peak_bytes(fn) -> tuple[int, int]:
    """(peak live bytes, largest single allocation) of CPU memory allocated by torch while fn runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = largest = 0
    for e in events:
        live += e.nbytes()
        peak, largest = max(peak, live), max(largest, e.nbytes())
    return peak, largest


@pytest.mark.parametrize("backend,N", [("torch", 4096), ("triton", 512)])  # the interpreter is slow: fewer rows
def test_forward_and_backward_never_hold_n_by_v(backend, N):
    V, H, chunk = 32000, 8, N // 16
    hidden, weight, targets, _ = _case(N, H, V)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    full = N * V * 4  # one [N, V] float32 tensor
    peak, largest = _peak_bytes(
        lambda: target_logprobs(hidden, weight, targets, chunk_size=chunk, backend=backend).sum().backward())
    assert largest <= chunk * V * 4
    assert peak <= full / 4, f"peak {peak / 2**20:.0f} MiB vs [N, V] = {full / 2**20:.0f} MiB"
    # the measurement can fail: autograd through the chunked reference keeps every chunk's logits alive
    if backend == "torch":
        hidden.grad = weight.grad = None
        ref_peak, _ = _peak_bytes(lambda: reference.target_logprobs(hidden, weight, targets, chunk_size=chunk).sum().backward())
        assert ref_peak >= full


def test_bad_input():
    hidden, weight, targets, bias = _case(4, 3, 10)
    with pytest.raises(ValueError, match="same H"):
        target_logprobs(hidden, weight[:, :2], targets)
    with pytest.raises(ValueError, match="targets must be"):
        target_logprobs(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        target_logprobs(hidden, weight, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="bias must be"):
        target_logprobs(hidden, weight, targets, bias[:5])
    with pytest.raises(TypeError, match="integer token ids"):
        target_logprobs(hidden, weight, targets.float())
    with pytest.raises(ValueError, match="chunk_size"):
        target_logprobs(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="different devices"):
        target_logprobs(hidden, weight.to("meta"), targets)


def test_info_reports_the_kernel_ops(monkeypatch):
    """`python -m kdi_fast info` lists each op with its choice for CPU tensors and what it implements."""
    from kdi_fast.cli.info import report

    rows = {line.split()[0]: line.split() for line in report().splitlines() if line.strip()}
    assert rows["target_logprobs"][1:] == ["torch", "triton,", "torch"]
    assert rows["masked_embeddings"][1:] == ["torch", "triton,", "torch"]
    monkeypatch.setenv("KDI_FAST_BACKEND", "triton")  # forced; CPU tensors run it under TRITON_INTERPRET=1
    rows = {line.split()[0]: line.split() for line in report().splitlines() if line.strip()}
    assert rows["target_logprobs"][1] == rows["masked_embeddings"][1] == rows["mobius"][1] == "triton"
