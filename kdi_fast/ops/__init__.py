"""Differentiable ops that dispatch to the compiled module, Triton kernels or the torch reference."""

from .masked_embed import masked_embeddings
from .target_logprob import target_logprobs
from .transform import (MAX_DENSE_PLAYERS, mobius, mobius_transpose, num_subsets, subsets, zeta,
                        zeta_transpose)

__all__ = ["MAX_DENSE_PLAYERS", "masked_embeddings", "mobius", "mobius_transpose", "num_subsets", "subsets", "target_logprobs", "zeta",
           "zeta_transpose"]
