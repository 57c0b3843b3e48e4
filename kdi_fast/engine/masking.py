"""How a player is masked: the one masking layer of the engine (prefix tree and flat paths) and of the CIP loss.

Every position stays where it is (position ids are those of the full input). The strategies (MASKINGS):
  "embedding" (default): the input embedding of each token of an absent player is replaced by a baseline vector:
               "pad" the pad token's embedding, "unk" the unk token's, "zeros" a zero vector, "mean" the mean of
               the model's input embedding matrix (over the whole vocabulary), or an int: that token's embedding.
  "token":     the token ids of an absent player are replaced by a baseline token ("pad", "unk" or an int id).
  "attention": the tokens of an absent player are removed through the attention mask: no other token attends to
               them (they keep their positions; the baseline is not used). The token that predicts y*_1 must
               stay, so it never belongs to a player.

Baseline tokens are resolved in one place (baseline_token_id), from the tokenizer when there is one, else the
model config: "pad" = the tokenizer's pad token -> the config's pad_token_id -> the end-of-sequence token
(tokenizer, then config); "unk" = the tokenizer's unk token -> the config's unk_token_id.

Adding a strategy: subclass Masking here and add an instance to MASKINGS; the CLI, the engine and CIP read
their lists from MASKINGS and BASELINES.

MaskedSequence holds one prompt's full model input (prompt + y*_1..y*_{L-1}) and builds the masked inputs of any
contiguous span of it for a batch of masks (bit i set = player i present): what the scheduler feeds the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import ops
from ..reference import tokens_present

BASELINES = ("pad", "unk", "zeros", "mean")
"""The named baselines (an int token id is a baseline too)."""

__all__ = ["BASELINES", "MASKINGS", "Masking", "MaskedSequence", "baseline_embedding", "baseline_token_id",
           "check_masking", "get_masking", "input_embeddings", "tokens_present"]


class Masking:
    """One way of removing the tokens of absent players.

    name; baselines: the named baselines it accepts; token_ids: whether an int token id is a baseline;
    needs_embeddings: inputs() reads the model's input embeddings of the ids; hides_keys: it removes tokens
    through the attention mask (key_mask), so the token that predicts y*_1 cannot belong to a player.
    """

    name = ""
    baselines: tuple[str, ...] = ()
    token_ids = False
    needs_embeddings = False
    hides_keys = False

    @property
    def uses_baseline(self) -> bool:
        return bool(self.baselines) or self.token_ids

    def check(self, baseline) -> None:
        """Raise ValueError for a baseline this strategy cannot use (any baseline passes when none is used)."""
        if not self.uses_baseline:
            return
        if isinstance(baseline, int) and not isinstance(baseline, bool) and self.token_ids:
            if baseline < 0:
                raise ValueError(f"a baseline token id must be >= 0, got {baseline}")
            return
        if isinstance(baseline, str) and baseline in self.baselines:
            return
        if baseline in BASELINES:
            ids = " or a token id" if self.token_ids else ""
            raise ValueError(f"baseline={baseline!r} does not fit masking={self.name!r}: it must be one of "
                             f"{self.baselines}{ids}; use masking='embedding' for {baseline!r}")
        raise ValueError(f"baseline must be one of {BASELINES} or a token id (int), got {baseline!r}")

    def resolve(self, model: nn.Module, tokenizer, baseline, *, differentiable: bool = False):
        """The baseline in the form inputs() takes (a vector [H], a token id or None), checked against the model.
        differentiable: keep the gradient to the embedding matrix (the CIP loss trains through it)."""
        return None

    def inputs(self, ids: Tensor, owner: Tensor, masks: Tensor, baseline, embeds: Tensor | None = None) -> dict:
        """Decoder inputs of the tokens `ids` [T] (player `owner` [T], -1 for none) under each of `masks` (int64
        bit masks [M], or a bool matrix [M, n]): {"inputs_embeds": [M, T, H]} or {"input_ids": [M, T]}.
        embeds [T, H]: the input embeddings of ids."""
        raise NotImplementedError

    def key_mask(self, owner: Tensor, masks: Tensor) -> Tensor | None:
        """[M, T] bool: which tokens others may attend to, or None (all of them)."""
        return None


class EmbeddingMasking(Masking):
    name = "embedding"
    baselines = BASELINES
    token_ids = True
    needs_embeddings = True

    def resolve(self, model, tokenizer, baseline, *, differentiable=False):
        return baseline_embedding(model, tokenizer, baseline, differentiable=differentiable)

    def inputs(self, ids, owner, masks, baseline, embeds=None):
        masks, owner = masks.to(embeds.device), owner.to(embeds.device)
        if masks.dtype == torch.bool:  # a mask matrix [M, n] (any n): outside the fused op's 63 bits
            kept = tokens_present(owner, masks)
            return {"inputs_embeds": torch.where(kept[..., None], embeds[None], baseline.to(embeds.dtype))}
        return {"inputs_embeds": ops.masked_embeddings(embeds, owner, masks, baseline)}


class TokenMasking(Masking):
    name = "token"
    baselines = ("pad", "unk")
    token_ids = True

    def resolve(self, model, tokenizer, baseline, *, differentiable=False):
        return baseline_token_id(tokenizer, baseline, _vocab_size(model), getattr(model, "config", None))

    def inputs(self, ids, owner, masks, baseline, embeds=None):
        kept = tokens_present(owner.to(ids.device), masks.to(ids.device))
        return {"input_ids": torch.where(kept, ids[None, :], torch.full_like(ids, baseline)[None, :])}


class AttentionMasking(Masking):
    name = "attention"
    hides_keys = True

    def inputs(self, ids, owner, masks, baseline, embeds=None):
        return {"input_ids": ids[None, :].expand(masks.shape[0], -1)}

    def key_mask(self, owner, masks):
        return tokens_present(owner.to(masks.device), masks)


MASKINGS: dict[str, Masking] = {m.name: m for m in (EmbeddingMasking(), TokenMasking(), AttentionMasking())}
"""The masking strategies by name (the first is the default)."""


def get_masking(masking: str | Masking) -> Masking:
    """The strategy of a name (ValueError naming the choices for an unknown one)."""
    if isinstance(masking, Masking):
        return masking
    try:
        return MASKINGS[masking]
    except (KeyError, TypeError):
        raise ValueError(f"masking must be one of {tuple(MASKINGS)}, got {masking!r}") from None


def check_masking(masking: str, baseline) -> Masking:
    """The strategy, after checking that the baseline fits it (ValueError otherwise)."""
    mode = get_masking(masking)
    mode.check(baseline)
    return mode


def _token_attr(tokenizer, config, name: str) -> int | None:
    """tokenizer.<name>, else config.<name> (the first id of a list), else None."""
    for source in (tokenizer, config):
        value = getattr(source, name, None) if source is not None else None
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def baseline_token_id(tokenizer, baseline, vocab_size: int, config=None) -> int:
    """The token id of a token baseline ("pad", "unk" or an id), checked against the vocabulary.

    "pad": the tokenizer's pad token, else the config's pad_token_id, else the end-of-sequence token (tokenizer,
    then config). "unk": the tokenizer's unk token, else the config's. tokenizer or config may be None.
    """
    if baseline == "pad":
        token = _token_attr(tokenizer, config, "pad_token_id")
        token = _token_attr(tokenizer, config, "eos_token_id") if token is None else token
        if token is None:
            raise ValueError("baseline='pad': neither the tokenizer nor the model config has a pad_token_id or an "
                             "eos_token_id; pass baseline='unk', 'zeros', 'mean' or a token id")
    elif baseline == "unk":
        token = _token_attr(tokenizer, config, "unk_token_id")
        if token is None:
            raise ValueError("baseline='unk': neither the tokenizer nor the model config has an unk_token_id; pass "
                             "baseline='pad', 'zeros', 'mean' or a token id")
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


def _vocab_size(model: nn.Module) -> int:
    from .forward import lm_head

    return int(lm_head(model)[0].shape[0])


def baseline_embedding(model: nn.Module, tokenizer, baseline, *, differentiable: bool = False) -> Tensor:
    """The baseline vector [H] of embedding masking. A token baseline is that token's embedding as the model's
    own lookup gives it (so a padding_idx row gets no gradient); differentiable=False detaches it."""
    embedding = input_embeddings(model)
    weight = embedding.weight
    if baseline == "zeros":
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    if baseline == "mean":
        vector = weight.mean(0)
    else:
        token = baseline_token_id(tokenizer, baseline, weight.shape[0], getattr(model, "config", None))
        vector = embedding(torch.tensor([token], device=weight.device))[0]
    return vector if differentiable else vector.detach()


@dataclass
class MaskedSequence:
    """One prompt's full model input and how to mask it.

    input_ids [S] int64: the prompt tokens, then y*_1..y*_{L-1}; owner [S] int64: the player of each token or -1;
    n players; masking: a strategy (or its name); baseline: as the strategy's resolve() gives it; embeds [S, H]:
    the input embeddings of input_ids (strategies with needs_embeddings).
    """

    input_ids: Tensor
    owner: Tensor
    n: int
    masking: Masking | str
    baseline: Tensor | int | None = None
    embeds: Tensor | None = None

    def __post_init__(self) -> None:
        self.masking = get_masking(self.masking)
        if self.masking.needs_embeddings and self.embeds is None:
            raise ValueError(f"masking={self.masking.name!r} needs embeds [S, H] (the input embeddings of the ids)")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def inputs(self, start: int, stop: int, masks: Tensor) -> dict[str, Tensor]:
        """The decoder inputs of tokens start..stop-1 under each of `masks` [M]: {"inputs_embeds": [M, T, H]} or
        {"input_ids": [M, T]}. Attention masking returns the ids unchanged (see key_mask)."""
        embeds = self.embeds[start:stop] if self.embeds is not None else None
        return self.masking.inputs(self.input_ids[start:stop], self.owner[start:stop], masks, self.baseline, embeds)

    def key_mask(self, start: int, stop: int, masks: Tensor) -> Tensor | None:
        """[M, T] bool: which tokens others may attend to (attention masking), else None (all of them)."""
        return self.masking.key_mask(self.owner[start:stop], masks)

    def full_inputs(self, masks: Tensor) -> dict[str, Tensor]:
        """Inputs of the whole sequence for each mask, as a plain Hugging Face forward takes them (with a 2D
        attention_mask, 0 at the removed tokens, when the strategy hides tokens from attention)."""
        out = self.inputs(0, len(self), masks)
        keys = self.key_mask(0, len(self), masks)
        if keys is not None:
            out["attention_mask"] = keys.long()
        return out
