"""Differentiable ops that dispatch to the compiled module, Triton kernels or the torch reference."""

from .transform import (MAX_DENSE_PLAYERS, mobius, mobius_transpose, num_subsets, subsets, zeta,
                        zeta_transpose)

__all__ = ["MAX_DENSE_PLAYERS", "mobius", "mobius_transpose", "num_subsets", "subsets", "zeta", "zeta_transpose"]
