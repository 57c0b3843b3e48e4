"""The target y*: a given text, or the model's own greedy continuation of the full (unmasked) prompt.

A given target is tokenized on its own (no special tokens) and used whole. The greedy continuation is the
argmax at every step (no sampling, no repetition penalty, whatever the model's generation_config says), for up
to max_new_tokens tokens, cut before the first end-of-sequence token.
"""

from __future__ import annotations

import torch
from torch import nn

from .._extras import needs


def tokenize_target(tokenizer, text: str) -> list[int]:
    """The tokens of a given target text (no special tokens added); raises ValueError when there are none."""
    if not isinstance(text, str):
        raise TypeError(f"a target must be a str (or None for the greedy continuation), got {type(text).__name__}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"the target {text!r} is empty: it has no tokens; give a non-empty target, or None for the "
                         f"model's greedy continuation")
    return ids


def end_token_ids(model: nn.Module, tokenizer) -> set[int]:
    """The tokens that end a continuation: the generation config's and the tokenizer's eos tokens."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


@torch.no_grad()
def greedy_target(model: nn.Module, tokenizer, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """The greedy continuation of input_ids (up to max_new_tokens tokens, without the end token).

    Raises ValueError when the model ends the sequence at once (an empty target).
    """
    with needs("models"):
        from transformers import GenerationConfig

    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_target_tokens must be a positive int, got {max_new_tokens!r}")
    device = next(model.parameters()).device
    ends = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(ends) if ends else 0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=sorted(ends) or None, pad_token_id=pad)
    ids = torch.tensor([input_ids], device=device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    new = out[0, len(input_ids):].tolist()
    for i, token in enumerate(new):
        if token in ends:
            new = new[:i]
            break
    if not new:
        raise ValueError("the model's greedy continuation of the prompt is empty (it ends the sequence at once); "
                         "give a target text instead")
    return new
