"""log p(target) from hidden states and the LM head, fused: log_softmax(h W^T + b)[target], computed in chunks
of rows so that no [rows, vocab] tensor larger than one chunk is ever held.

Backends: torch (kdi_fast.reference.target_logprobs, chunked). A Triton kernel is planned for GPUs.
"""

from __future__ import annotations

from torch import Tensor

from .. import _backend, reference

_backend.register_op("target_logprobs", ("torch",))


def target_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, *,
                    chunk_size: int = 1024, backend: str | None = None) -> Tensor:
    """hidden [N, H]; weight [V, H]; targets [N] int64; bias [V] or None. Returns [N] float32 (float64 for
    float64 hidden). Differentiable w.r.t. hidden, weight and bias."""
    _backend.choose("target_logprobs", hidden.device, backend)
    return reference.target_logprobs(hidden, weight, targets, bias, chunk_size)
