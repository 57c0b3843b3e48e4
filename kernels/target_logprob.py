"""Log-softmax at the target, over a chunk of logits, as Triton kernels (the LM head's matmul stays in torch).

For a chunk of rows of logits z [C, V] (any float dtype; the optional bias b [V] is added here, in fp32):
  forward   lse[r] = log sum_v exp(z[r, v] + b[v])  (online: running max and rescaled sum over blocks of V)
            logprob[r] = z[r, y_r] + b[y_r] - lse[r]
  backward  z[r, v] <- g[r] * ([v == y_r] - exp(z[r, v] + b[v] - lse[r]))   (in place: d logprob / d z)
Accumulation is in fp32 (fp64 for fp64 logits) whatever the logits' dtype: values are loaded, then cast.
Twin: kdi_fast.reference.target_logprobs (and autograd through it).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import check_device, interpreting, release_interpreter_copies


@triton.jit
def _lse_target_kernel(logits_ptr, bias_ptr, targets_ptr, logprob_ptr, lse_ptr, N, V,
                       HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in = rows < N
    row_start = rows.to(tl.int64) * V
    running_max = tl.full((BLOCK_N,), float("-inf"), dtype=ACC)
    running_sum = tl.zeros((BLOCK_N,), dtype=ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        inside = row_in[:, None] & (cols[None, :] < V)
        z = tl.load(logits_ptr + row_start[:, None] + cols[None, :], mask=inside, other=float("-inf")).to(ACC)
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols, mask=cols < V, other=0.0).to(ACC)[None, :]
        new_max = tl.maximum(running_max, tl.max(z, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows that are all -inf so far stay at sum 0
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        running_max = new_max
    lse = running_max + tl.log(tl.where(row_in, running_sum, 1.0))  # (rows past N: no log(0) warnings)
    target = tl.load(targets_ptr + rows, mask=row_in, other=0)
    z_target = tl.load(logits_ptr + row_start + target, mask=row_in, other=0.0).to(ACC)
    if HAS_BIAS:
        z_target += tl.load(bias_ptr + target, mask=row_in, other=0.0).to(ACC)
    tl.store(lse_ptr + rows, lse, mask=row_in)
    tl.store(logprob_ptr + rows, z_target - lse, mask=row_in)


@triton.jit
def _grad_logits_kernel(logits_ptr, bias_ptr, targets_ptr, lse_ptr, grad_ptr, N, V,
                        HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr,
                        ROUND_BF16: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_in = rows < N
    inside = row_in[:, None] & (cols[None, :] < V)
    offsets = rows.to(tl.int64)[:, None] * V + cols[None, :]
    z = tl.load(logits_ptr + offsets, mask=inside, other=0.0).to(ACC)
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols, mask=cols < V, other=0.0).to(ACC)[None, :]
    lse = tl.load(lse_ptr + rows, mask=row_in, other=0.0)
    g = tl.load(grad_ptr + rows, mask=row_in, other=0.0).to(ACC)
    target = tl.load(targets_ptr + rows, mask=row_in, other=-1)
    onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    grad = g[:, None] * (onehot - tl.exp(z - lse[:, None]))
    if ROUND_BF16:  # the interpreter's cast truncates; a GPU's rounds to nearest even by itself
        grad = _round_to_bf16(grad)
    tl.store(logits_ptr + offsets, grad.to(logits_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _round_to_bf16(x):
    """fp32 -> bf16, rounded to nearest even in integer arithmetic (finite values): what a GPU's cast does, for the
    interpreter, whose cast truncates (which doubled the gradients' bf16 error in the CPU tests)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


def _blocks(N: int, V: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_V, num_warps): one row per program with wide blocks on a GPU; big tiles in the interpreter."""
    block_v = triton.next_power_of_2(V)
    if interpreting():
        block_n = min(triton.next_power_of_2(N), 64)
        return block_n, min(block_v, max(1024, (1 << 18) // block_n)), 1
    block_v = min(block_v, 8192)
    return 1, block_v, max(1, min(16, block_v // 512))


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def lse_and_target(logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [C, V] contiguous; targets [C] int64; bias [V] or None. Returns (logprob [C], lse [C]) in fp32
    (fp64 for fp64 logits)."""
    check_device(logits, targets)
    C, V = logits.shape
    acc_tl, acc = _acc(logits.dtype)
    logprob = torch.empty(C, dtype=acc, device=logits.device)
    lse = torch.empty(C, dtype=acc, device=logits.device)
    if C == 0:
        return logprob, lse
    block_n, block_v, warps = _blocks(C, V)
    with _device(logits):
        _lse_target_kernel[(triton.cdiv(C, block_n),)](
            logits, bias if bias is not None else logits, targets, logprob, lse, C, V, HAS_BIAS=bias is not None,
            BLOCK_N=block_n, BLOCK_V=block_v, ACC=acc_tl, num_warps=warps)
    release_interpreter_copies()
    return logprob, lse


def grad_logits_(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """In place: logits [C, V] (contiguous) <- grad[:, None] * (onehot(targets) - softmax(logits + bias)),
    using lse [C] from lse_and_target. Returns logits (now d loss / d logits, in the logits' dtype)."""
    check_device(logits, targets, lse, grad)
    C, V = logits.shape
    if C == 0:
        return logits
    block_n, block_v, warps = _blocks(C, V)
    if not interpreting():
        block_v = min(block_v, 2048)  # no reduction here: smaller blocks, more programs
        warps = max(1, block_v // 512)
    with _device(logits):
        _grad_logits_kernel[(triton.cdiv(C, block_n), triton.cdiv(V, block_v))](
            logits, bias if bias is not None else logits, targets, lse, grad, C, V, HAS_BIAS=bias is not None,
            BLOCK_N=block_n, BLOCK_V=block_v, ACC=_acc(logits.dtype)[0],
            ROUND_BF16=logits.dtype == torch.bfloat16 and interpreting(),
            num_warps=warps)
    release_interpreter_copies()
    return logits
