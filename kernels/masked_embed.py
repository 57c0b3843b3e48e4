"""The masked input batch built from mask bits, and its backward, as Triton kernels.

Forward:  out[b, m, t] = embeds[b, t] if token t is kept under mask m, else baseline[b, t]
          kept = player[b, t] < 0 (not a player) or bit player[b, t] of masks[b, m] is set.
Backward: grad_embeds[b, t]   = sum_m kept[b, m, t] grad[b, m, t]
          grad_baseline[b, t] = sum_m (1 - kept[b, m, t]) grad[b, m, t]   (fp32 accumulation; fp64 for fp64)

One program handles a tile [BLOCK_M masks, BLOCK_T tokens, BLOCK_H hidden]: the forward loads the embeds and
baseline tile once and writes it for all of its masks; the backward walks a range of masks, accumulating both
sums for its [BLOCK_T, BLOCK_H] tile, and writes one partial sum per range (summed in torch: no atomics, so
results are deterministic). Twin: kdi_fast.reference.masked_embeddings (and its autograd).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import check_device, interpreting


@triton.jit
def _kept(masks_ptr, player_ptr, m, t, M, T):
    """[BLOCK_M, BLOCK_T] bool: token t kept under mask m (out-of-range masks and tokens count as kept)."""
    bits = tl.load(masks_ptr + m, mask=m < M, other=-1)  # -1: every bit set
    player = tl.load(player_ptr + t, mask=t < T, other=-1)
    shift = tl.where(player < 0, 0, player)
    return (player[None, :] < 0) | (((bits[:, None] >> shift[None, :]) & 1) != 0)


@triton.jit
def _forward_kernel(out_ptr, embeds_ptr, baseline_ptr, player_ptr, masks_ptr, M, T, H,
                    baseline_batch_stride, baseline_token_stride, masks_batch_stride,
                    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    tiles_h = tl.cdiv(H, BLOCK_H)
    t = (tl.program_id(0) // tiles_h) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = (tl.program_id(0) % tiles_h) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.program_id(2).to(tl.int64)
    th_in = (t[:, None] < T) & (h[None, :] < H)
    th = t[:, None].to(tl.int64) * H + h[None, :]
    emb = tl.load(embeds_ptr + b * T * H + th, mask=th_in)
    base = tl.load(baseline_ptr + b * baseline_batch_stride + t[:, None].to(tl.int64) * baseline_token_stride
                   + h[None, :], mask=th_in)
    kept = _kept(masks_ptr + b * masks_batch_stride, player_ptr + b * T, m, t, M, T)
    tile = tl.where(kept[:, :, None], emb[None, :, :], base[None, :, :])
    offsets = (b * M + m[:, None, None].to(tl.int64)) * T * H + th[None, :, :]
    tl.store(out_ptr + offsets, tile, mask=(m[:, None, None] < M) & th_in[None, :, :])


@triton.jit
def _backward_kernel(grad_embeds_ptr, grad_baseline_ptr, grad_ptr, player_ptr, masks_ptr, M, T, H, B,
                     masks_batch_stride, MASKS_PER_SPLIT,
                     BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    """Partial sums over masks [split * MASKS_PER_SPLIT, (split + 1) * MASKS_PER_SPLIT) into [split, b, t, h]."""
    tiles_h = tl.cdiv(H, BLOCK_H)
    t = (tl.program_id(0) // tiles_h) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = (tl.program_id(0) % tiles_h) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    th_in = (t[:, None] < T) & (h[None, :] < H)
    th = t[:, None].to(tl.int64) * H + h[None, :]
    keep_sum = tl.zeros((BLOCK_T, BLOCK_H), dtype=ACC)
    drop_sum = tl.zeros((BLOCK_T, BLOCK_H), dtype=ACC)
    start = split * MASKS_PER_SPLIT
    for m0 in range(0, MASKS_PER_SPLIT, BLOCK_M):
        m = start + m0 + tl.arange(0, BLOCK_M)
        offsets = (b * M + m[:, None, None]) * T * H + th[None, :, :]
        g = tl.load(grad_ptr + offsets, mask=(m[:, None, None] < M) & th_in[None, :, :], other=0.0)
        g = g.to(ACC)
        kept = _kept(masks_ptr + b * masks_batch_stride, player_ptr + b * T, m, t, M, T)[:, :, None]
        keep_sum += tl.sum(tl.where(kept, g, 0.0), axis=0)
        drop_sum += tl.sum(tl.where(kept, 0.0, g), axis=0)
    out = (split * B + b) * T * H + th
    tl.store(grad_embeds_ptr + out, keep_sum, mask=th_in)
    tl.store(grad_baseline_ptr + out, drop_sum, mask=th_in)


def _blocks(M: int, T: int, H: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_T, BLOCK_H): 4096-value tiles on a GPU; tiles up to 2^18 values in the interpreter."""
    block_h = triton.next_power_of_2(H)
    if interpreting():
        block_h = min(block_h, 1024)
        block_t = min(triton.next_power_of_2(T), max(1, (1 << 14) // block_h))
        block_m = min(triton.next_power_of_2(M), max(1, (1 << 18) // (block_t * block_h)))
        return block_m, block_t, block_h
    block_h = min(block_h, 128)
    block_t = min(triton.next_power_of_2(T), 4)
    return max(1, 4096 // (block_t * block_h)), block_t, block_h


def _device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def forward(embeds: torch.Tensor, player_of_token: torch.Tensor, masks: torch.Tensor,
            baseline: torch.Tensor) -> torch.Tensor:
    """embeds [B, T, H]; player_of_token [B, T] int64; masks [B, M] or [1, M] int64 (shared);
    baseline [B|1, T|1, H] in embeds' dtype. All contiguous, checked by the caller. Returns [B, M, T, H]."""
    check_device(embeds, player_of_token, masks, baseline)
    B, T, H = embeds.shape
    M = masks.shape[-1]
    out = torch.empty(B, M, T, H, dtype=embeds.dtype, device=embeds.device)
    if out.numel() == 0:
        return out
    block_m, block_t, block_h = _blocks(M, T, H)
    grid = (triton.cdiv(T, block_t) * triton.cdiv(H, block_h), triton.cdiv(M, block_m), B)
    with _device(embeds):
        _forward_kernel[grid](out, embeds, baseline, player_of_token, masks, M, T, H,
                              baseline.stride(0) if baseline.shape[0] > 1 else 0,
                              baseline.stride(1) if baseline.shape[1] > 1 else 0,
                              masks.stride(0) if masks.shape[0] > 1 else 0,
                              BLOCK_M=block_m, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
    return out


def backward(grad: torch.Tensor, player_of_token: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grad [B, M, T, H] (contiguous). Returns (grad_embeds, grad_baseline), both [B, T, H] in float32
    (float64 for a float64 grad): the sums of grad over the masks that keep, and that replace, each token."""
    check_device(grad, player_of_token, masks)
    B, M, T, H = grad.shape
    block_m, block_t, block_h = _blocks(M, T, H)
    # On a GPU, split the masks over programs when the [T, H] tiles alone would leave it idle.
    tiles = triton.cdiv(T, block_t) * triton.cdiv(H, block_h) * B
    splits = 1 if interpreting() else max(1, min(triton.cdiv(M, block_m), 1024 // max(tiles, 1)))
    per_split = triton.cdiv(triton.cdiv(M, splits), block_m) * block_m
    splits = triton.cdiv(M, per_split) if M else 1
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    partial = torch.zeros(2, splits, B, T, H, dtype=acc, device=grad.device)
    if grad.numel():
        grid = (triton.cdiv(T, block_t) * triton.cdiv(H, block_h), splits, B)
        with _device(grad):
            _backward_kernel[grid](partial[0], partial[1], grad, player_of_token, masks, M, T, H, B,
                                   masks.stride(0) if masks.shape[0] > 1 else 0, per_split,
                                   BLOCK_M=block_m, BLOCK_T=block_t, BLOCK_H=block_h,
                                   ACC=tl.float64 if acc == torch.float64 else tl.float32, num_warps=4)
    sums = partial.sum(1) if splits > 1 else partial[:, 0]
    return sums[0], sums[1]
