"""How a player is masked, with every position unchanged (position ids stay those of the full input).

  "embedding" (default): the input embedding of each token of an absent player is replaced by a baseline vector:
               "pad" the pad token's embedding (the eos token's when the tokenizer has no pad token), "unk" the
               unk token's, "zeros" a zero vector, "mean" the mean of the model's input embedding matrix (over the
               whole vocabulary), or an int token id: that token's embedding.
  "token":     the token ids of an absent player are replaced by a baseline token ("pad", "unk" or an int id).
  "attention": the tokens of an absent player are removed through the attention mask: no other token attends to
               them (they keep their positions; baseline is not used).

MaskedSequence holds one prompt's full model input (prompt + y*_1..y*_{L-1}) and builds the masked inputs of any
contiguous span of it for a batch of masks (bit i set = player i present): what the scheduler feeds the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import ops

MASKINGS = ("embedding", "token", "attention")
BASELINES = ("pad", "unk", "zeros", "mean")


def check_masking(masking: str, baseline) -> None:
    """Raise ValueError/TypeError for an unknown masking or a baseline that does not fit it."""
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    if isinstance(baseline, bool) or not (isinstance(baseline, int) or baseline in BASELINES):
        raise ValueError(f"baseline must be one of {BASELINES} or a token id (int), got {baseline!r}")
    if isinstance(baseline, int) and baseline < 0:
        raise ValueError(f"a baseline token id must be >= 0, got {baseline}")
    if masking == "token" and baseline in ("zeros", "mean"):
        raise ValueError(f"masking='token' replaces token ids, so the baseline must be a token: 'pad', 'unk' or an id "
                         f"(baseline={baseline!r} is an embedding; use masking='embedding' for it)")


def baseline_token_id(tokenizer, baseline, vocab_size: int) -> int:
    """The token id of a token baseline ("pad", "unk" or an id), checked against the vocabulary."""
    if baseline == "pad":
        token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if token is None:
            raise ValueError("baseline='pad': the tokenizer has neither a pad nor an eos token; pass baseline='unk', "
                             "'zeros', 'mean' or a token id")
    elif baseline == "unk":
        token = tokenizer.unk_token_id
        if token is None:
            raise ValueError("baseline='unk': the tokenizer has no unk token; pass baseline='pad', 'zeros', 'mean' "
                             "or a token id")
    else:
        token = int(baseline)
    if not 0 <= token < vocab_size:
        raise ValueError(f"baseline token id {token} is outside the model's vocabulary of {vocab_size} tokens")
    return int(token)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The model's input embedding module; ValueError when it has none (embedding masking needs it)."""
    try:
        module = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        module = None
    if module is None:
        raise ValueError(f"masking='embedding' replaces input embeddings, but {type(model).__name__} exposes none "
                         f"(get_input_embeddings()); use masking='token' or masking='attention'")
    return module


def baseline_embedding(model: nn.Module, tokenizer, baseline) -> Tensor:
    """The baseline vector [H] of embedding masking."""
    embedding = input_embeddings(model)
    weight = embedding.weight
    if baseline == "zeros":
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    if baseline == "mean":
        return weight.detach().mean(0)
    token = baseline_token_id(tokenizer, baseline, weight.shape[0])
    return embedding(torch.tensor([token], device=weight.device))[0].detach()


@dataclass
class MaskedSequence:
    """One prompt's full model input and how to mask it.

    input_ids [S] int64: the prompt tokens, then y*_1..y*_{L-1}; owner [S] int64: the player of each token or -1;
    n players; masking; embeds [S, H] and baseline [H] (embedding masking); baseline_id (token masking).
    """

    input_ids: Tensor
    owner: Tensor
    n: int
    masking: str
    embeds: Tensor | None = None
    baseline: Tensor | None = None
    baseline_id: int | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def present(self, start: int, stop: int, masks: Tensor) -> Tensor:
        """[M, stop - start] bool: whether each token of the span is kept (not masked) under each mask."""
        owner = self.owner[start:stop].to(masks.device)
        is_player = owner >= 0
        bits = (masks[:, None] >> owner.clamp(min=0)[None, :]) & 1
        return bits.bool() | ~is_player[None, :]

    def inputs(self, start: int, stop: int, masks: Tensor) -> dict[str, Tensor]:
        """The decoder inputs of tokens start..stop-1 under each of `masks` [M]: {"inputs_embeds": [M, T, H]} or
        {"input_ids": [M, T]}. Attention masking returns the ids unchanged (see key_mask)."""
        ids = self.input_ids[start:stop]
        if self.masking == "embedding":
            return {"inputs_embeds": ops.masked_embeddings(self.embeds[start:stop], self.owner[start:stop], masks,
                                                           self.baseline)}
        if self.masking == "token":
            kept = self.present(start, stop, masks)
            return {"input_ids": torch.where(kept, ids[None, :], torch.full_like(ids, self.baseline_id)[None, :])}
        return {"input_ids": ids[None, :].expand(masks.shape[0], -1)}

    def key_mask(self, start: int, stop: int, masks: Tensor) -> Tensor | None:
        """[M, T] bool: which tokens others may attend to (attention masking), else None (all of them)."""
        if self.masking != "attention":
            return None
        return self.present(start, stop, masks)

    def full_inputs(self, masks: Tensor) -> dict[str, Tensor]:
        """Inputs of the whole sequence for each mask, as a plain Hugging Face forward takes them (attention
        masking: input_ids plus a 2D attention_mask with 0 at the removed tokens)."""
        out = self.inputs(0, len(self), masks)
        if self.masking == "attention":
            out["attention_mask"] = self.present(0, len(self), masks).long()
        return out
