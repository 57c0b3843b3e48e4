"""The Moebius transform (v -> I) and its inverse, the zeta transform (I -> v), as differentiable ops.

Both work along the last dimension and are batched over the leading ones. Two layouts:
  dense   (max_order=None): 2^n values per row, indexed by the bit mask of the subset;
  compact (max_order=k):    only the subsets of size <= k, in the order of `subsets(n, k)`. This is exact,
                            because the butterfly for a subset only reads its own subsets.
The backward of each transform is its transpose (the butterfly over supersets), itself differentiable.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from .. import _backend, reference

_BACKENDS = ("cuda", "triton", "cpp", "torch")
_backend.register_op("mobius", _BACKENDS)
_backend.register_op("mobius_compact", ("cpp", "torch"))

MAX_DENSE_PLAYERS = 30
"""Largest n for the dense layout (2^30 values: 4 GiB per row in float32); use max_order beyond it."""

_MAX_COMPACT_LEN = 1 << 30


# ----------------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------------


def num_subsets(n: int, max_order: int | None = None) -> int:
    """How many subsets a row holds: 2^n (dense) or sum_{j <= k} C(n, j) (compact, k = max_order)."""
    _check_players(n, max_order)
    if max_order is None or max_order >= n:
        return 1 << n
    return sum(math.comb(n, j) for j in range(max_order + 1))


@functools.lru_cache(maxsize=64)
def _compact_masks(n: int, k: int) -> tuple[int, ...]:
    return tuple(sum(1 << p for p in combo) for j in range(k + 1) for combo in itertools.combinations(range(n), j))


def subsets(n: int, max_order: int | None = None) -> Tensor:
    """The bit masks (int64) of the subsets a row holds, in layout order.

    Dense: arange(2^n). Compact (max_order=k < n): the subsets of size <= k, by size, then lexicographically
    by their sorted players: for n=3, k=2: {}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2} -> masks 0, 1, 2, 4, 3, 5, 6.
    """
    if max_order is None or max_order >= n:
        _check_players(n, None)
        return torch.arange(1 << n, dtype=torch.int64)
    num_subsets(n, max_order)
    return torch.tensor(_compact_masks(n, max_order), dtype=torch.int64)


@functools.lru_cache(maxsize=64)
def _compact_pairs(n: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """dst, src (positions of S and S without bit b, grouped by bit b) and offsets [n + 1], all int64 on CPU."""
    masks = _compact_masks(n, k)
    position = {m: i for i, m in enumerate(masks)}
    dst, src, offsets = [], [], [0]
    for b in range(n):
        bit = 1 << b
        for i, m in enumerate(masks):
            if m & bit:
                dst.append(i)
                src.append(position[m ^ bit])
        offsets.append(len(dst))
    as_tensor = functools.partial(torch.tensor, dtype=torch.int64)
    return as_tensor(dst), as_tensor(src), as_tensor(offsets)


def _check_players(n: int, max_order: int | None) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of players must be a non-negative int, got {n!r}")
    if max_order is not None and (not isinstance(max_order, int) or max_order < 0):
        raise ValueError(f"max_order must be a non-negative int or None, got {max_order!r}")
    if (max_order is None or max_order >= n) and n > MAX_DENSE_PLAYERS:
        gib = (1 << n) * 4 / 2**30
        raise ValueError(
            f"n={n} players need 2^{n} values per row ({gib:,.0f} GiB in float32), more than the dense limit "
            f"n={MAX_DENSE_PLAYERS}; pass max_order=k to keep only the subsets of size <= k, or group players")
    if max_order is not None and max_order < n:
        if n > 62:
            raise ValueError(f"n={n} players do not fit int64 bit masks; at most 62 players are supported")
        length = sum(math.comb(n, j) for j in range(max_order + 1))
        if length > _MAX_COMPACT_LEN:
            raise ValueError(
                f"n={n}, max_order={max_order} keeps {length:,} subsets per row ({length * 4 / 2**30:,.1f} GiB "
                f"in float32); lower max_order or group players")


def _infer_layout(length: int, max_order: int | None) -> int:
    """The number of players n of a row of `length` values (dense or compact)."""
    if max_order is None:
        if length < 1 or length & (length - 1):
            raise ValueError(
                f"the last dimension must be a power of two (2^n values, one per subset of n players); got "
                f"{length}. Pad or select the subsets, or pass max_order=k for the compact layout.")
        n = length.bit_length() - 1
        _check_players(n, None)
        return n
    if not isinstance(max_order, int) or max_order < 0:
        raise ValueError(f"max_order must be a non-negative int or None, got {max_order!r}")
    n, total = 0, 1
    while total < length:  # total = sum_{j <= k} C(n, j) grows with n
        n += 1
        total = sum(math.comb(n, j) for j in range(min(max_order, n) + 1))
    if total != length:
        raise ValueError(
            f"a compact row with max_order={max_order} has sum_(j<={max_order}) C(n, j) values for some n; "
            f"{length} matches no n (n={n} gives {total}). Use subsets(n, {max_order}) to build the layout.")
    _check_players(n, max_order)
    return n


# ----------------------------------------------------------------------------------------------------------
# The in-place kernels behind one dispatch
# ----------------------------------------------------------------------------------------------------------


def _run_(buf: Tensor, n: int, max_order: int | None, sign: int, superset: bool, backend: str | None) -> str:
    """Transform `buf` (contiguous, float32/float64) in place; returns the backend that ran."""
    compact = max_order is not None and max_order < n
    name = _backend.choose("mobius_compact" if compact else "mobius", buf.device, backend)
    if buf.numel() == 0:
        return name
    length = buf.shape[-1]
    rows = buf.numel() // length
    dtype = str(buf.dtype).removeprefix("torch.")
    if compact:
        dst, src, offsets = _compact_pairs(n, max_order)
        if name == "cpp":
            _backend.compiled().transform_compact_cpu(buf.data_ptr(), dtype, rows, length, dst.data_ptr(),
                                                      src.data_ptr(), offsets.data_ptr(), n, sign, superset,
                                                      torch.get_num_threads())
        else:
            dst, src = dst.to(buf.device), src.to(buf.device)
            bounds = offsets.tolist()
            pairs = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            reference.compact_butterfly_(buf, pairs, sign, superset)
        return name
    if name == "cpp":
        _backend.compiled().transform_dense_cpu(buf.data_ptr(), dtype, rows, n, sign, superset,
                                                torch.get_num_threads())
    elif name == "cuda":
        stream = torch.cuda.current_stream(buf.device).cuda_stream
        with torch.cuda.device(buf.device):
            _backend.compiled().transform_dense_cuda(buf.data_ptr(), dtype, rows, n, sign, superset, stream)
    elif name == "triton":
        from ..kernels import mobius as triton_mobius

        triton_mobius.butterfly_(buf, n, sign, superset)
    else:
        reference.butterfly_(buf, n, sign, superset)
    return name


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype.is_complex:
        raise TypeError(f"complex tensors are not supported (got {dtype}); transform the real and imaginary "
                        f"parts separately")
    raise TypeError(f"the transform needs a floating-point tensor, got {dtype}; convert it first, "
                    f"e.g. v.double() or v.float()")


def _transformed(x: Tensor, n: int, max_order: int | None, sign: int, superset: bool,
                 backend: str | None) -> Tensor:
    """A new tensor holding the transform of x (x is never written)."""
    buf = x.to(_compute_dtype(x.dtype), memory_format=torch.contiguous_format, copy=True)
    _run_(buf, n, max_order, sign, superset, backend)
    return buf


# ----------------------------------------------------------------------------------------------------------
# The four transforms as torch.library custom ops (kdi_fast::mobius, ::zeta, ::mobius_transpose, ::zeta_transpose):
# torch.compile sees them as single nodes (a fake impl gives the output's shape and dtype) instead of breaking
# the graph at the raw data pointers of the kernels. The backward of each is its transpose, itself an op, so
# gradients of any order work in eager and compiled code.
# ----------------------------------------------------------------------------------------------------------

_TRANSFORMS = {(-1, False): "mobius", (+1, False): "zeta", (-1, True): "mobius_transpose", (+1, True): "zeta_transpose"}
_OPS: dict[tuple[int, bool], object] = {}


def _define(name: str, sign: int, superset: bool):
    def impl(x: Tensor, max_order: int | None, backend: str | None) -> Tensor:
        return _transformed(x, _infer_layout(x.shape[-1], max_order), max_order, sign, superset, backend)

    op = torch.library.custom_op(f"kdi_fast::{name}", impl, mutates_args=())

    @op.register_fake
    def _(x, max_order, backend):
        return torch.empty(x.shape, dtype=_compute_dtype(x.dtype), device=x.device)

    def setup_context(ctx, inputs, output):
        x, ctx.max_order, ctx.backend = inputs
        ctx.input_dtype = x.dtype

    def backward(ctx, grad):
        transpose = _OPS[sign, not superset](grad.contiguous(), ctx.max_order, ctx.backend)
        return transpose.to(ctx.input_dtype), None, None

    op.register_autograd(backward, setup_context=setup_context)
    return op


for (_sign, _superset), _name in _TRANSFORMS.items():
    _OPS[_sign, _superset] = _define(_name, _sign, _superset)


def _apply(x: Tensor, max_order: int | None, sign: int, superset: bool, out: Tensor | None,
           backend: str | None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(...)")
    _compute_dtype(x.dtype)
    if x.dim() == 0:
        raise ValueError("expected at least one dimension (the 2^n subsets along the last one), got a scalar")
    n = _infer_layout(int(x.shape[-1]), max_order)
    if out is None:
        return _OPS[sign, superset](x, max_order, backend)
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.device != x.device:
        raise ValueError(f"out is on {out.device} but the input is on {x.device}; put both on one device")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but the input has {tuple(x.shape)}")
    if out.dtype != _compute_dtype(x.dtype):
        raise TypeError(f"out must be {_compute_dtype(x.dtype)} for a {x.dtype} input, got {out.dtype}")
    if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
        raise RuntimeError("out=... does not support autograd; call without out= to get gradients")
    if out.is_contiguous():
        if out.data_ptr() != x.data_ptr():
            out.copy_(x)
        elif x.dtype != out.dtype:
            raise ValueError("in place (out=input) needs a float32 or float64 input")
        _run_(out, n, max_order, sign, superset, backend)
    else:  # never write into a silent copy: transform a contiguous copy, then write it back into `out`
        out.copy_(_transformed(x, n, max_order, sign, superset, backend))
    return out


def mobius(v: Tensor, *, max_order: int | None = None, out: Tensor | None = None,
           backend: str | None = None) -> Tensor:
    """Harsanyi interactions I_S = sum_{S' subset of S} (-1)^{|S|-|S'|} v(x_{S'}), along the last dimension.

    v: [..., 2^n] values of the 2^n masked inputs, indexed by subset bit mask (bit i = player i present);
    or [..., num_subsets(n, k)] in the compact layout of `subsets(n, k)` when max_order=k.
    Returns I with the same shape. float32/float64 are computed in their own precision; float16/bfloat16
    inputs are computed and returned in float32 (a sum of 2^n signed terms needs the range). NaN and inf
    propagate to every interaction whose subset contains the bad entry's subset. Differentiable (the backward
    is the transposed transform). out= writes the result into a given tensor (may be v itself: in place,
    without autograd). backend= picks an implementation (see kdi_fast._backend); default: automatic.
    """
    return _apply(v, max_order, -1, False, out, backend)


def zeta(interactions: Tensor, *, max_order: int | None = None, out: Tensor | None = None,
         backend: str | None = None) -> Tensor:
    """Values v(x_T) = sum_{S subset of T} I_S along the last dimension: the inverse of `mobius`.

    Shapes, layouts, dtypes, NaN handling and options as in `mobius`.
    """
    return _apply(interactions, max_order, +1, False, out, backend)


def mobius_transpose(grad: Tensor, *, max_order: int | None = None, backend: str | None = None) -> Tensor:
    """M^T g: g_S' = sum_{S superset of S'} (-1)^{|S|-|S'|} g_S (the backward of `mobius`)."""
    return _apply(grad, max_order, -1, True, None, backend)


def zeta_transpose(grad: Tensor, *, max_order: int | None = None, backend: str | None = None) -> Tensor:
    """Z^T g: g_S' = sum_{S superset of S'} g_S (the backward of `zeta`)."""
    return _apply(grad, max_order, +1, True, None, backend)
