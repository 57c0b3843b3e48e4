"""The subset/superset butterfly (Moebius, zeta and their transposes) as Triton kernels, in place.

A row holds 2^n values indexed by subset bit mask. The butterfly applies, for each bit i,
  subset   (superset=False): a[m] += sign * a[m ^ 2^i]  for every m with bit i set,
  superset (superset=True):  a[m] += sign * a[m | 2^i]  for every m with bit i clear,
and the bits commute, so they can be applied in any grouping. Plan (all passes read and write the buffer once):

  low pass    one program loads 2^B contiguous values (one row, or several whole rows when n < B) and applies
              bits 0..min(n, B)-1 in registers;
  high passes bits B..n-1, r bits per pass: one program loads a tile [2^r rows strided by 2^p, W contiguous]
              (W values of the low p bits, so the loads stay coalesced) and applies bits p..p+r-1 to it.

Inside a program, one bit at flattened stride s of a block of N values is: view the block as
[N / 2s, 2, s], move the pair axis last, split into (a0, a1) = (bit clear, bit set), add, join, move back.
Exact: additions only, in the buffer's dtype (float32 or float64); no tl.dot.
Twin: kdi_fast.reference.butterfly_.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import check_device, interpreting

# Block sizes as log2. On a GPU 2^12 values per program fit in registers (fp64: 16 per thread at 8 warps), and
# W >= 32 values keeps each strided row of a tile a full 128-byte transaction. The interpreter pays ~1.5 ms per
# program instance, so it gets blocks as large as numpy handles comfortably.
_GPU = dict(low_bits=12, tile_bits=12, width_bits=5)
_INTERPRETER = dict(low_bits=16, tile_bits=16, width_bits=5)


@triton.jit
def _butterfly_bit(x, N: tl.constexpr, STRIDE: tl.constexpr, SIGN: tl.constexpr, SUPERSET: tl.constexpr):
    """Apply one bit, at flattened stride STRIDE, to a block x of N values (N, STRIDE powers of two)."""
    pairs = tl.permute(tl.reshape(x, (N // (2 * STRIDE), 2, STRIDE)), (0, 2, 1))
    a0, a1 = tl.split(pairs)  # a0: bit clear, a1: bit set
    if SUPERSET:
        if SIGN > 0:
            a0 = a0 + a1
        else:
            a0 = a0 - a1
    else:
        if SIGN > 0:
            a1 = a1 + a0
        else:
            a1 = a1 - a0
    return tl.reshape(tl.permute(tl.join(a0, a1), (0, 2, 1)), (N,))


@triton.jit
def _low_bits_kernel(buf, numel, BLOCK: tl.constexpr, BITS: tl.constexpr, SIGN: tl.constexpr,
                     SUPERSET: tl.constexpr):
    """Bits 0..BITS-1 of each block of BLOCK contiguous values (a block holds whole rows, or part of one)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel  # a partial last block holds only whole rows; the rest are zeros, never stored
    x = tl.load(buf + offsets, mask=inside, other=0.0)
    for i in tl.static_range(BITS):
        x = _butterfly_bit(x, BLOCK, 1 << i, SIGN, SUPERSET)
    tl.store(buf + offsets, x, mask=inside)


@triton.jit
def _high_bits_kernel(buf, low_span, chunks_per_span, R: tl.constexpr, W: tl.constexpr, SIGN: tl.constexpr,
                      SUPERSET: tl.constexpr):
    """Bits p..p+R-1 (low_span = 2^p) on a tile [2^R strided by low_span, W contiguous]; one tile per program.

    Tiles are numbered (span of 2^(p+R) values, chunk of W within the low 2^p): chunks_per_span = 2^p / W.
    """
    N: tl.constexpr = W << R
    pid = tl.program_id(0).to(tl.int64)
    span = pid // chunks_per_span
    base = span * (low_span << R) + (pid % chunks_per_span) * W
    idx = tl.arange(0, N)
    offsets = base + (idx // W).to(tl.int64) * low_span + idx % W
    x = tl.load(buf + offsets)
    for j in tl.static_range(R):
        x = _butterfly_bit(x, N, W << j, SIGN, SUPERSET)
    tl.store(buf + offsets, x)


def plan(n: int, numel: int, *, low_bits: int, tile_bits: int, width_bits: int) -> tuple[int, list[tuple[int, int, int]]]:
    """The passes for rows of 2^n values (numel values in all): (B, [(p, r, w), ...]) as log2 sizes.

    B: the low pass uses blocks of 2^B values and applies bits 0..min(n, B)-1. Each high pass applies bits
    p..p+r-1 with tiles of 2^r x 2^w values (w <= p, so a tile's columns lie inside one low span).
    """
    if low_bits < 1 or tile_bits < 1 or width_bits < 0:
        raise ValueError(f"block sizes must be positive powers of two (got low_bits={low_bits}, "
                         f"tile_bits={tile_bits}, width_bits={width_bits})")
    need = max(numel - 1, 1).bit_length()  # enough bits to cover the whole buffer in one block
    block = low_bits if n >= low_bits else max(n, min(low_bits, need))
    passes, p = [], min(n, block)
    while p < n:
        w = min(p, width_bits, tile_bits - 1)
        r = min(n - p, tile_bits - w)
        w = min(p, tile_bits - r)  # widen the tile when few bits are left
        passes.append((p, r, w))
        p += r
    return block, passes


def butterfly_(buf: torch.Tensor, n: int, sign: int, superset: bool, *, low_bits: int | None = None,
               tile_bits: int | None = None, width_bits: int | None = None) -> torch.Tensor:
    """In place: the butterfly over the last dimension (2^n values) of a contiguous float32/float64 tensor.

    Same semantics as kdi_fast.reference.butterfly_ (sign=-1, superset=False: Moebius; sign=+1: zeta;
    superset=True: their transposes). Returns buf. low_bits, tile_bits, width_bits (log2 block sizes) override
    the defaults; tests use small ones to cross block boundaries.
    """
    if buf.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the Triton butterfly needs a float32 or float64 tensor, got {buf.dtype}")
    if not buf.is_contiguous():
        raise ValueError("the Triton butterfly works in place on a contiguous tensor; pass a contiguous one "
                         "(kdi_fast.mobius handles non-contiguous input)")
    if n < 0 or buf.dim() == 0 or buf.shape[-1] != 1 << n:
        raise ValueError(f"the last dimension must be 2^n = {1 << max(n, 0)} values, got shape {tuple(buf.shape)}")
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or +1, got {sign}")
    check_device(buf)
    numel = buf.numel()
    if n == 0 or numel == 0:
        return buf
    sizes = dict(_INTERPRETER if interpreting() else _GPU)
    for key, value in (("low_bits", low_bits), ("tile_bits", tile_bits), ("width_bits", width_bits)):
        if value is not None:
            sizes[key] = value
    block, passes = plan(n, numel, **sizes)
    with torch.cuda.device(buf.device) if buf.is_cuda else contextlib.nullcontext():
        _low_bits_kernel[(triton.cdiv(numel, 1 << block),)](
            buf, numel, BLOCK=1 << block, BITS=min(n, block), SIGN=sign, SUPERSET=bool(superset),
            num_warps=_warps(1 << block))
        for p, r, w in passes:
            tiles = numel >> (r + w)
            _high_bits_kernel[(tiles,)](buf, 1 << p, 1 << (p - w), R=r, W=1 << w, SIGN=sign,
                                        SUPERSET=bool(superset), num_warps=_warps(1 << (r + w)))
    return buf


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))

