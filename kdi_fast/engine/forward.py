"""The model's log-probabilities of a target continuation, with the LM head applied only where it is needed.

A Hugging Face causal LM is split into its decoder (`model.base_model`: embeddings, blocks, final norm) and its
LM head (`model.get_output_embeddings()`). The decoder runs over the whole sequence; the head runs only at the
L positions that predict the target tokens, through the fused op kdi_fast.ops.target_logprobs (log-softmax and
gather, never a [batch, sequence, vocab] tensor). Gradients flow when autograd is enabled (the CIP loss).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops


def decoder(model: nn.Module) -> nn.Module:
    """The decoder of a causal LM (model.base_model), whose output is the final-normed hidden state."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__} is not a Hugging Face *ForCausalLM model with a separate decoder "
                        f"(model.base_model) and LM head; load it with AutoModelForCausalLM")
    return base


def lm_head(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight [V, H], bias [V] or None) of the LM head; raises for heads the fused op cannot reproduce."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:  # transformers returns None when get_input_embeddings() raises; the head may still be there
        head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise TypeError(f"{type(model).__name__} has no linear LM head (get_output_embeddings()); the engine needs "
                        f"a causal LM whose logits are hidden @ weight.T (+ bias)")
    config = getattr(model, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__} post-processes its logits ({name}={value}), which the fused "
                             f"target log-prob op does not reproduce; this model is not supported")
    return weight, getattr(head, "bias", None)


def hidden_at(hidden: Tensor, positions: Tensor) -> Tensor:
    """hidden [B, S, H] at `positions` [L] (the same for every row) -> [B, L, H]."""
    return hidden.index_select(1, positions.to(hidden.device))


def head_logprobs(model: nn.Module, hidden: Tensor, target_ids: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """log p(target) from final hidden states: hidden [B, L, H], target_ids [L] or [B, L] -> [B, L].

    float32 (float64 for a float64 model); differentiable w.r.t. hidden and the head's weights.
    """
    weight, bias = lm_head(model)
    rows, length, width = hidden.shape
    targets = target_ids.to(hidden.device, dtype=torch.int64).expand(rows, length).reshape(-1)
    logprobs = ops.target_logprobs(hidden.reshape(rows * length, width), weight, targets, bias,
                                   chunk_size=chunk_size)
    return logprobs.view(rows, length)


def target_logprobs(model: nn.Module, target_ids: Tensor, *, input_ids: Tensor | None = None,
                    inputs_embeds: Tensor | None = None, attention_mask: Tensor | None = None,
                    position_ids: Tensor | None = None, target_start: int | None = None,
                    chunk_size: int = 1024) -> Tensor:
    """log p(y*_l | x, y*_<l) for l = 1..L, from one forward of the decoder (teacher forcing).

    The input (input_ids [B, S] or inputs_embeds [B, S, H]) is the prompt followed by the target tokens; it must
    reach at least y*_{L-1} (the last target token is never read). target_ids: [L] (shared) or [B, L].
    target_start: the index of y*_1 in the sequence (default S - L: the input ends with all L target tokens).
    The head runs at positions target_start - 1 .. target_start + L - 2 only.
    attention_mask ([B, S] 0/1 or a 4D mask) and position_ids are passed to the decoder unchanged.
    Returns [B, L] float32 (float64 for a float64 model), differentiable when autograd is enabled.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids [B, S] and inputs_embeds [B, S, H]")
    source = input_ids if input_ids is not None else inputs_embeds
    if source.dim() != (2 if input_ids is not None else 3):
        raise ValueError(f"input_ids must be [B, S] and inputs_embeds [B, S, H]; got shape {tuple(source.shape)}")
    batch, seq = source.shape[:2]
    if target_ids.dim() not in (1, 2) or target_ids.shape[-1] == 0:
        raise ValueError(f"target_ids must be [L] or [B, L] with L >= 1; got shape {tuple(target_ids.shape)}")
    if target_ids.dim() == 2 and target_ids.shape[0] != batch:
        raise ValueError(f"target_ids has {target_ids.shape[0]} rows but the input has {batch}")
    length = target_ids.shape[-1]
    start = seq - length if target_start is None else int(target_start)
    if start < 1 or start + length - 1 > seq:
        raise ValueError(f"target_start={start} with L={length} targets needs positions {start - 1}.."
                         f"{start + length - 2}, outside a sequence of {seq} tokens (the prompt needs >= 1 token)")
    outputs = decoder(model)(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False)
    positions = torch.arange(start - 1, start + length - 1, device=source.device)
    return head_logprobs(model, hidden_at(outputs.last_hidden_state, positions), target_ids, chunk_size=chunk_size)
