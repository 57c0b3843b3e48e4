"""The masked input batch built from mask bits: out[m, t] = embeds[t] if token t is kept by mask m, else baseline.

Backends: torch (kdi_fast.reference.masked_embeddings). A Triton kernel is planned for GPUs.
"""

from __future__ import annotations

from torch import Tensor

from .. import _backend, reference

_backend.register_op("masked_embeddings", ("torch",))


def masked_embeddings(embeds: Tensor, player_of_token: Tensor, masks: Tensor, baseline: Tensor, *,
                      backend: str | None = None) -> Tensor:
    """embeds [T, H]; player_of_token [T] int64 (-1: not a player); masks [M] int64; baseline [H] or [T, H].

    Returns [M, T, H] in embeds' dtype, differentiable w.r.t. embeds and baseline.
    """
    _backend.choose("masked_embeddings", embeds.device, backend)
    return reference.masked_embeddings(embeds, player_of_token, masks, baseline)
