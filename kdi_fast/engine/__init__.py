"""The masked-batch forward engine: v(x_T) for all 2^n masked inputs of a prompt, and the interactions I_S.

compute_interactions(model, tokenizer, prompts, ...) -> list[InteractionResult] is the entry point; the pieces
live one per module: players (words and players), target (y*), masking, forward (log-probs with the LM head at
the target positions only), value (v from log-probs), scheduler and prefix_attention (the prefix-tree batches),
result (InteractionResult).
"""

from .compute import compute_interactions
from .forward import target_logprobs
from .players import MAX_PLAYERS
from .result import InteractionResult
from .sparse_result import SparseInteractionResult
from .value import values_from_logprobs
from .values import ValueFunction, compute_values

__all__ = ["MAX_PLAYERS", "InteractionResult", "SparseInteractionResult", "ValueFunction", "compute_interactions",
           "compute_values", "target_logprobs", "values_from_logprobs"]
