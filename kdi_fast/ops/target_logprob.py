"""log p(target) from hidden states and the LM head, fused: log_softmax(h W^T + b)[target], computed in chunks
of rows so that no [rows, vocab] tensor larger than one chunk is ever held, in the forward or the backward.

Per chunk of rows: logits = h W^T by a torch matmul (in the compute dtype: the weight's, or the autocast dtype
when autocast is on), then
  triton (automatic on CUDA): a kernel computes each row's log-sum-exp online over the vocabulary and gathers
                              the target logit (kernels/target_logprob.py);
  torch  (automatic on CPU):  logsumexp and gather (the twin, kdi_fast.reference.target_logprobs).
Accumulation is in float32 (float64 for float64 hidden) whatever the input dtype; the bias is added in it.

Backward: recomputed per chunk. The forward keeps only the per-row log-sum-exp ([N] values); the backward
recomputes the chunk's logits, turns them in place into grad_logits = g * (onehot - softmax) (a kernel on
Triton), and accumulates grad_hidden = grad_logits W and grad_W += grad_logits^T h (in fp32 for half
precision weights). Computing the gradients in the forward instead (as fused cross-entropy kernels do for a
scalar loss) is not possible here: the output is one value per row, so grad_W depends on the upstream
gradient g, which the forward does not know; and the engine calls this op without gradients, where the
forward must not pay for them. The cost of the choice: one extra matmul per chunk in the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend

_backend.register_op("target_logprobs", ("triton", "torch"))


def target_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, *,
                    chunk_size: int = 1024, backend: str | None = None) -> Tensor:
    """log_softmax(hidden @ weight.T + bias)[targets], chunk_size rows at a time.

    hidden [N, H]; weight [V, H] (the LM head); targets [N] int (0 <= target < V); bias [V] or None.
    Returns [N] float32 (float64 for float64 hidden). Differentiable w.r.t. hidden, weight and bias (first
    order); neither direction holds more than chunk_size x V logits. If hidden's dtype differs from weight's,
    hidden is cast to the compute dtype per chunk. backend: "triton" or "torch" (default: automatic).
    """
    _check(hidden, weight, targets, bias, chunk_size)
    out, _ = _forward_op(hidden, weight, targets, bias, chunk_size, _compute_dtype(hidden, weight), backend)
    return out


# The forward and backward as torch.library custom ops (kdi_fast::target_logprobs, ::target_logprobs_backward),
# so that torch.compile keeps them in the graph as single nodes (their fake impls give shapes and dtypes).
# The forward also returns the per-row log-sum-exp, which the backward reads (no gradient flows through it).


def _acc_dtype(hidden: Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


@torch.library.custom_op("kdi_fast::target_logprobs", mutates_args=())
def _forward_op(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, chunk_size: int,
                compute: torch.dtype, backend: str | None) -> tuple[Tensor, Tensor]:
    _check_targets(targets, weight)
    name = _backend.choose("target_logprobs", hidden.device, backend)
    acc = _acc_dtype(hidden)
    targets = targets.to(torch.int64).contiguous()
    w = weight.to(compute)
    b = None if bias is None else bias.to(acc).contiguous()
    out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
    lse = torch.empty_like(out)
    with _no_autocast(hidden):
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = hidden[rows].to(compute) @ w.T
            out[rows], lse[rows] = _lse_and_target(logits, targets[rows], b, acc, name)
    return out, lse


@_forward_op.register_fake
def _(hidden, weight, targets, bias, chunk_size, compute, backend):
    out = hidden.new_empty(hidden.shape[:1], dtype=_acc_dtype(hidden))
    return out, torch.empty_like(out)


@torch.library.custom_op("kdi_fast::target_logprobs_backward", mutates_args=())
def _backward_op(grad: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, lse: Tensor,
                 chunk_size: int, compute: torch.dtype, backend: str | None, need_h: bool, need_w: bool,
                 need_b: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_hidden, grad_weight, grad_bias) in the inputs' dtypes; an empty [0] tensor for each one not needed."""
    name = _backend.choose("target_logprobs", hidden.device, backend)
    acc = _acc_dtype(hidden)
    targets = targets.to(torch.int64)
    grad = grad.to(acc).contiguous()  # e.g. out.sum().backward() hands in an expanded (stride 0) tensor
    w = weight.to(compute)
    b = None if bias is None else bias.to(acc).contiguous()
    grad_h = torch.empty(hidden.shape, dtype=compute, device=hidden.device) if need_h else None
    # the weight's gradient is a sum over all rows: accumulate it in fp32 (fp64) even for half weights
    grad_w = torch.zeros(weight.shape, dtype=torch.promote_types(compute, acc), device=weight.device) \
        if need_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
    with _no_autocast(hidden):
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows].to(compute)
            grad_logits = _grad_logits(h @ w.T, targets[rows], lse[rows], grad[rows], b, acc, name)
            if need_h:
                torch.mm(grad_logits, w, out=grad_h[rows])
            if need_w:
                if grad_w.dtype == grad_logits.dtype:
                    grad_w.addmm_(grad_logits.T, h)  # no [V, H] temporary
                else:
                    grad_w += (grad_logits.T @ h).to(grad_w.dtype)
            if need_b:
                grad_b += grad_logits.sum(0, dtype=acc)
    empty = hidden.new_empty(0)
    return (grad_h.to(hidden.dtype) if need_h else empty, grad_w.to(weight.dtype) if need_w else empty.clone(),
            grad_b.to(bias.dtype) if need_b else empty.clone())


@_backward_op.register_fake
def _(grad, hidden, weight, bias, targets, lse, chunk_size, compute, backend, need_h, need_w, need_b):
    empty = hidden.new_empty(0)
    return (torch.empty_like(hidden) if need_h else empty, torch.empty_like(weight) if need_w else empty.clone(),
            torch.empty_like(bias) if need_b else empty.clone())


def _setup_context(ctx, inputs, output):
    hidden, weight, targets, bias, chunk_size, compute, backend = inputs
    ctx.save_for_backward(hidden, weight, bias, targets, output[1])
    ctx.settings = (chunk_size, compute, backend)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad: Tensor, _grad_lse: Tensor | None):
    hidden, weight, bias, targets, lse = ctx.saved_tensors
    chunk_size, compute, backend = ctx.settings
    need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
    grad_h, grad_w, grad_b = _backward_op(grad, hidden, weight, bias, targets, lse, chunk_size, compute, backend,
                                          need_h, need_w, need_b)
    return (grad_h if need_h else None, grad_w if need_w else None, None, grad_b if need_b else None,
            None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _lse_and_target(logits: Tensor, targets: Tensor, bias: Tensor | None, acc: torch.dtype,
                    name: str) -> tuple[Tensor, Tensor]:
    """(log p(target), log-sum-exp) per row of one chunk of logits [C, V]."""
    if name == "triton":
        from ..kernels import target_logprob as kernel

        return kernel.lse_and_target(logits.contiguous(), targets, bias)
    z = logits.to(acc)
    if bias is not None:
        z = z + bias
    lse = torch.logsumexp(z, dim=-1)
    return z.gather(-1, targets[:, None]).squeeze(-1) - lse, lse


def _grad_logits(logits: Tensor, targets: Tensor, lse: Tensor, grad: Tensor, bias: Tensor | None,
                 acc: torch.dtype, name: str) -> Tensor:
    """d (sum_r grad[r] log p(target_r)) / d logits for one chunk, [C, V] in the logits' dtype (in place if it can)."""
    if name == "triton":
        from ..kernels import target_logprob as kernel

        return kernel.grad_logits_(logits.contiguous(), targets, lse, grad, bias)
    z = logits.to(acc)  # a new tensor for half logits; then worked on in place
    if bias is not None:
        z += bias
    softmax = z.sub_(lse[:, None]).exp_()
    grad_z = softmax.mul_(-grad[:, None])
    grad_z.scatter_add_(1, targets[:, None], grad[:, None])
    return grad_z.to(logits.dtype)


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _no_autocast(hidden: Tensor):
    """Casts are explicit (the compute dtype), so that the backward recomputes exactly the forward's logits."""
    return torch.autocast(hidden.device.type, enabled=False)


def _check(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, chunk_size: int) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f"hidden and weight must be floating point, got {hidden.dtype} and {weight.dtype}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer token ids (int64), got {targets.dtype}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H] with the same H, got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}; flatten leading dimensions with hidden.reshape(-1, H)")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N] = [{hidden.shape[0]}] (one token id per row of hidden), got "
                         f"{tuple(targets.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per chunk), got {chunk_size!r}")
    tensors = [hidden, weight, targets] + ([bias] if bias is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"hidden, weight, targets and bias are on different devices "
                         f"({', '.join(sorted(map(str, devices)))}); move them to one device")


def _check_targets(targets: Tensor, weight: Tensor) -> None:
    """The target ids' range (reads the data: run inside the op, never in traced code)."""
    if targets.numel():
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(f"target id {low if low < 0 else high} is outside the vocabulary of the LM head "
                             f"(0..{weight.shape[0] - 1})")
