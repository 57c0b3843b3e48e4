"""The masked input batch built from mask bits: out[m, t] = embeds[t] if token t is kept by mask m, else baseline.

Differentiable w.r.t. embeds and baseline (the CIP loss trains through it):
  grad_embeds[t] = sum_m kept[m, t] grad[m, t],   grad_baseline = sum_m (1 - kept[m, t]) grad[m, t]
(summed over t as well for a shared [H] baseline). Batched form for B prompts at once: embeds [B, T, H],
player_of_token [B, T], masks [M] (the same masks for every prompt) or [B, M], baseline [H], [T, H] or
[B, T, H] -> [B, M, T, H]; prompts of different lengths are padded (pad tokens with player -1 are kept,
and whatever they hold is left to the attention mask).

Backends: triton (kernels/masked_embed.py; automatic on CUDA tensors) and torch (kdi_fast.reference, automatic
on CPU). Both run behind one torch.library custom op (kdi_fast::masked_embeddings, compiled as one node by
torch.compile); its backward accumulates in float32 (float64 for float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend, reference

_backend.register_op("masked_embeddings", ("triton", "torch"))

_MAX_PLAYERS = 63  # bit i of an int64 mask; bit 63 is the sign bit


def masked_embeddings(embeds: Tensor, player_of_token: Tensor, masks: Tensor, baseline: Tensor, *,
                      backend: str | None = None) -> Tensor:
    """The masked input batch, positions unchanged.

    embeds [T, H] (float); player_of_token [T] int (-1: not a player, always kept; else 0..62); masks [M] int64
    (bit i set = player i present); baseline [H] or [T, H]. Returns [M, T, H] in embeds' dtype.
    Batched: embeds [B, T, H], player_of_token [B, T], masks [M] or [B, M], baseline [H], [T, H] or [B, T, H]
    -> [B, M, T, H]. Differentiable w.r.t. embeds and baseline (first order). backend: "triton" or "torch"
    (default: automatic, see kdi_fast._backend).
    """
    _check(embeds, player_of_token, masks, baseline)
    return _forward_op(embeds, baseline, player_of_token, masks, backend)


# The forward and backward as torch.library custom ops (kdi_fast::masked_embeddings, ::masked_embeddings_backward)
# so that torch.compile keeps them in the graph as single nodes. Inside, the inputs are brought to the batched
# form [B, T, H]; the output is [B, M, T, H], or [M, T, H] for one prompt.


def _batched(player_of_token: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    player = (player_of_token if player_of_token.dim() == 2 else player_of_token[None]).to(torch.int64)
    bits = (masks if masks.dim() == 2 else masks[None]).to(torch.int64)
    return player, bits


@torch.library.custom_op("kdi_fast::masked_embeddings", mutates_args=())
def _forward_op(embeds: Tensor, baseline: Tensor, player_of_token: Tensor, masks: Tensor,
                backend: str | None) -> Tensor:
    _check_players(player_of_token)
    name = _backend.choose("masked_embeddings", embeds.device, backend)
    e = embeds if embeds.dim() == 3 else embeds[None]
    player, bits = _batched(player_of_token, masks)
    base = baseline.to(embeds.dtype)
    base = base.reshape((1,) * (3 - base.dim()) + tuple(base.shape))  # [B|1, T|1, H]
    if name == "triton":
        from ..kernels import masked_embed as kernel

        out = kernel.forward(e.contiguous(), player.contiguous(), bits.contiguous(), base.contiguous())
    else:
        out = reference.masked_embeddings(e, player, bits if bits.shape[0] > 1 else bits[0], base)
    return out if embeds.dim() == 3 else out[0].contiguous()


@_forward_op.register_fake
def _(embeds, baseline, player_of_token, masks, backend):
    return embeds.new_empty((*embeds.shape[:-2], masks.shape[-1], *embeds.shape[-2:]))


@torch.library.custom_op("kdi_fast::masked_embeddings_backward", mutates_args=())
def _backward_op(grad: Tensor, player_of_token: Tensor, masks: Tensor, backend: str | None) -> tuple[Tensor, Tensor]:
    """grad [B, M, T, H] (or [M, T, H]) -> the sums over kept and over dropped masks, two [B, T, H] tensors
    in float32 (float64 for a float64 grad)."""
    name = _backend.choose("masked_embeddings", grad.device, backend)
    grad = grad if grad.dim() == 4 else grad[None]
    player, bits = _batched(player_of_token, masks)
    if name == "triton":
        from ..kernels import masked_embed as kernel

        kept, dropped = kernel.backward(grad.contiguous(), player.contiguous(), bits.contiguous())
        return kept, dropped.clone()  # two views of one buffer: an op's outputs may not alias each other
    return _torch_backward(grad, player, bits)


@_backward_op.register_fake
def _(grad, player_of_token, masks, backend):
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    shape = (*grad.shape[:-3], *grad.shape[-2:]) if grad.dim() == 4 else (1, *grad.shape[-2:])
    return grad.new_empty(shape, dtype=acc), grad.new_empty(shape, dtype=acc)


def _setup_context(ctx, inputs, output):
    embeds, baseline, player_of_token, masks, backend = inputs
    ctx.save_for_backward(player_of_token, masks)
    ctx.backend = backend
    ctx.shapes = (embeds.shape, baseline.shape)
    ctx.dtypes = (embeds.dtype, baseline.dtype)


def _backward(ctx, grad: Tensor):
    player_of_token, masks = ctx.saved_tensors
    (embeds_shape, baseline_shape), (embeds_dtype, baseline_dtype) = ctx.shapes, ctx.dtypes
    grad_kept, grad_dropped = _backward_op(grad, player_of_token, masks, ctx.backend)
    grad_embeds = grad_baseline = None
    if ctx.needs_input_grad[0]:
        grad_embeds = grad_kept.reshape(embeds_shape).to(embeds_dtype)
    if ctx.needs_input_grad[1]:
        # [B, T, H] per position -> the baseline's own shape: sum over prompts, and over tokens for [H]
        reduce = {1: (0, 1), 2: (0,), 3: ()}[len(baseline_shape)]
        grad_baseline = grad_dropped.sum(reduce) if reduce else grad_dropped
        grad_baseline = grad_baseline.reshape(baseline_shape).to(baseline_dtype)
    return grad_embeds, grad_baseline, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _torch_backward(grad: Tensor, player: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """The torch twin of kernels.masked_embed.backward: grad [B, M, T, H] -> two [B, T, H] sums (fp32/fp64)."""
    kept = reference.tokens_present(player, bits)  # [B, M, T]
    g = grad.double() if grad.dtype == torch.float64 else grad.float()
    return torch.einsum("bmt,bmth->bth", kept.to(g.dtype), g), torch.einsum("bmt,bmth->bth", (~kept).to(g.dtype), g)


def _check(embeds: Tensor, player_of_token: Tensor, masks: Tensor, baseline: Tensor) -> None:
    """Validate the arguments at the public boundary (a clear error that says what to do)."""
    for name, t in (("embeds", embeds), ("player_of_token", player_of_token), ("masks", masks),
                    ("baseline", baseline)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not embeds.is_floating_point() or not baseline.is_floating_point():
        raise TypeError(f"embeds and baseline must be floating point, got {embeds.dtype} and {baseline.dtype}")
    for name, t in (("player_of_token", player_of_token), ("masks", masks)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor (int64), got {t.dtype}")
    if embeds.dim() not in (2, 3):
        raise ValueError(f"embeds must be [T, H] (or [B, T, H] for several prompts), got shape {tuple(embeds.shape)}")
    batched = embeds.dim() == 3
    if player_of_token.shape != embeds.shape[:-1]:
        raise ValueError(f"player_of_token must have shape {tuple(embeds.shape[:-1])} (one entry per token of "
                         f"embeds {tuple(embeds.shape)}), got {tuple(player_of_token.shape)}")
    if not (masks.dim() == 1 or (batched and masks.dim() == 2 and masks.shape[0] == embeds.shape[0])):
        want = f"[M] or [{embeds.shape[0]}, M]" if batched else "[M]"
        raise ValueError(f"masks must be {want} (one int64 bit mask per masked input), got {tuple(masks.shape)}")
    T, H = embeds.shape[-2:]
    shapes = [(H,), (T, H)] + ([tuple(embeds.shape)] if batched else [])
    if tuple(baseline.shape) not in shapes:
        raise ValueError(f"baseline must have shape {' or '.join(map(str, shapes))} (one vector, one per "
                         f"position{', or one per prompt and position' if batched else ''}), got {tuple(baseline.shape)}")
    devices = {t.device for t in (embeds, player_of_token, masks, baseline)}
    if len(devices) > 1:
        raise ValueError(f"embeds, player_of_token, masks and baseline are on different devices "
                         f"({', '.join(sorted(map(str, devices)))}); move them to one device")


def _check_players(player_of_token: Tensor) -> None:
    """The player ids' range (reads the data: run inside the op, never in traced code)."""
    if player_of_token.numel():
        low, high = int(player_of_token.min()), int(player_of_token.max())
        if low < -1 or high >= _MAX_PLAYERS:
            raise ValueError(f"player_of_token holds {low if low < -1 else high}; use -1 for tokens that are not "
                             f"players and 0..{_MAX_PLAYERS - 1} for players (bit i of an int64 mask)")
