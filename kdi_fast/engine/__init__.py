"""The masked-batch forward engine: v(x_T) for all 2^n masked inputs of a prompt, and the interactions I_S.

compute_interactions(model, tokenizer, prompts, ...) -> list[InteractionResult] is the entry point; the pieces
live one per module: players (words and players), target (y*), masking, forward (log-probs with the LM head at
the target positions only), value (v from log-probs), scheduler (the prefix-tree batches), result.
"""

from .forward import target_logprobs
from .value import values_from_logprobs

__all__ = ["target_logprobs", "values_from_logprobs"]
