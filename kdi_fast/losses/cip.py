"""The Complex Interaction Penalty (CIP, seed 000): a loss that suppresses the complex interactions a student
encodes, added to any KD loss.

For each prompt x of a batch (input_ids, attention_mask, labels in the Hugging Face convention):
  y*       the labelled tokens (labels != -100), teacher-forced; at most max_target_tokens of them;
  words    the words of the prompt part (the tokens before the first label), as the engine finds them
           (kdi_fast.engine.groups.word_ids: the engine's word rules applied to the token ids);
  players  the words split at random into m groups S_1..S_m (seeded per prompt and step), or the words
           themselves when the prompt has at most `exact_up_to` words (exact mode; default m);
  v(x_K)   log(p / (1 - p)) with log p the mean log-prob of y* when only the players in K are present
           (the others masked), for all 2^k subsets K: 2^k - 1 masked forwards with gradients, plus the
           full input, whose forward the caller usually has already (pass it as `outputs`);
  I        the Harsanyi interactions I = mobius(v) (kdi_fast.mobius, whose backward is the transposed transform);
  loss     weight * mean over prompts of mean_{K complex} |I(K)|.

Complex K (the threshold is relative to the number of players k): |K| > order_threshold * k, and K spans at
least two words (a single word is never a complex interaction). order_threshold=0 (the default) penalises every
union of groups that holds two or more words: the paper's approximation E_K |I(union_{i in K} S_i)|. With m=4,
order_threshold=0.5 keeps only unions of 3 or 4 groups.

Masking: the engine's strategies (kdi_fast.engine.masking: "embedding" with a baseline vector, "token",
"attention"), with the same baseline resolution, so that v here equals compute_interactions' v for the same
players and target. With a strategy that hides tokens from attention, as in the engine, the word holding the
last prompt token is never a player (that position predicts y*_1 and its own embedding would stay in the
residual stream). The LM head runs only at the target positions (kdi_fast.ops.target_logprobs), and the
masked sequences are cut after their last target.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import ops, reference
from ..engine import chat as _chat
from ..engine import forward as _forward
from ..engine import groups as _groups
from ..engine.masking import check_masking

IGNORE_INDEX = -100
_MAX_EXACT_PLAYERS = 16
_NOT_GIVEN = object()  # CIP(tokenizer=...) omitted: token players, with a warning (None: token players on purpose)


@dataclass
class CIPRecord:
    """What CIP computed for one prompt of the batch.

    index: the prompt's row in the batch; players: the word indices of each player (group);
    values v [2^k] and interactions I [2^k] (by subset bit mask; differentiable); complex_mask [2^k] bool:
    the subsets penalised; penalty: mean |I| over them (0-dim, differentiable); tokens: the token positions of
    each player in the row (input_ids[index, tokens[i]] decodes to player i's words).
    """

    index: int
    players: list[list[int]]
    values: Tensor
    interactions: Tensor
    complex_mask: Tensor
    penalty: Tensor
    tokens: list[list[int]]


@dataclass
class _Plan:
    index: int
    players: list[list[int]]
    player_of_token: Tensor  # [T'] int64, -1 for tokens that are never masked
    target_positions: Tensor  # [L] positions p of y* (predicted from position p - 1)
    target_ids: Tensor  # [L]
    complex_mask: Tensor  # [2^k] bool

    @property
    def k(self) -> int:
        return len(self.players)


class CIP(nn.Module):
    """The Complex Interaction Penalty as a loss module: loss = kd_loss + cip(model, batch).

    m: groups per prompt (2^m masked forwards); order_threshold in [0, 1): subsets of more than
    order_threshold * k players count as complex (see the module docstring); masking and baseline: how players
    are removed; weight: the factor on the penalty; batch_share in (0, 1]: the penalty is spent on the first
    ceil(share * batch) prompts of each batch (batches are shuffled, so that is a random subset);
    exact_up_to: prompts of at most this many words use the words as players (default m; up to 16);
    tokenizer: splits prompts into words (None: every prompt token is its own word); seed: the base seed of the
    partitions, which are drawn per prompt from (seed, step, the prompt's tokens), so they are the same in every
    process and under gradient accumulation when trainers pass their global step; max_target_tokens: use only
    the first L labelled tokens as y* (None: all).
    """

    def __init__(self, m: int = 3, *, order_threshold: float = 0.0, masking: str = "embedding",
                 baseline: str | int = "pad", weight: float = 1.0, batch_share: float = 1.0,
                 exact_up_to: int | None = None, tokenizer=_NOT_GIVEN, seed: int = 0,
                 max_target_tokens: int | None = None, eps: float = 1e-7):
        super().__init__()
        _check_types(m=(m, int), order_threshold=(order_threshold, float), weight=(weight, float),
                     batch_share=(batch_share, float), exact_up_to=(exact_up_to, (int, type(None))),
                     seed=(seed, int), max_target_tokens=(max_target_tokens, (int, type(None))), eps=(eps, float))
        if tokenizer is _NOT_GIVEN:
            warnings.warn("CIP without a tokenizer makes every prompt token a word: sub-word pieces and chat-template "
                          "tokens become players. Pass CIP(tokenizer=your_tokenizer), or tokenizer=None to mean "
                          "token players", UserWarning, stacklevel=2)
            tokenizer = None
        elif tokenizer is not None and not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer (the student's), got "
                            f"{type(tokenizer).__name__}")
        if not isinstance(m, int) or not 1 <= m <= _MAX_EXACT_PLAYERS:
            raise ValueError(f"m must be an int in [1, {_MAX_EXACT_PLAYERS}] (2^m masked forwards), got {m!r}")
        if not 0.0 <= order_threshold < 1.0:
            raise ValueError(f"order_threshold must be in [0, 1) (a share of the players), got {order_threshold}")
        self._mode = check_masking(masking, baseline)
        if not 0.0 < batch_share <= 1.0:
            raise ValueError(f"batch_share must be in (0, 1], got {batch_share}")
        exact_up_to = m if exact_up_to is None else exact_up_to
        if not 0 <= exact_up_to <= _MAX_EXACT_PLAYERS:
            raise ValueError(f"exact_up_to must be in [0, {_MAX_EXACT_PLAYERS}], got {exact_up_to}")
        if max_target_tokens is not None and max_target_tokens < 1:
            raise ValueError(f"max_target_tokens must be >= 1 or None, got {max_target_tokens}")
        self.m, self.order_threshold, self.masking, self.baseline = m, float(order_threshold), masking, baseline
        self.weight, self.batch_share, self.exact_up_to = float(weight), float(batch_share), max(exact_up_to, m)
        self.tokenizer, self.seed, self.max_target_tokens, self.eps = tokenizer, int(seed), max_target_tokens, eps
        self._calls = 0

    def extra_repr(self) -> str:
        return (f"m={self.m}, order_threshold={self.order_threshold}, masking={self.masking!r}, "
                f"baseline={self.baseline!r}, weight={self.weight}, batch_share={self.batch_share}, "
                f"exact_up_to={self.exact_up_to}")

    # ------------------------------------------------------------------------------------------------------
    # Public entry points
    # ------------------------------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Mapping[str, Tensor], outputs=None, *,
                step: int | None = None) -> Tensor:
        """weight * mean over the batch's prompts of mean_{K complex} |I(K)| (a 0-dim float32 tensor).

        batch: input_ids [B, T], attention_mask [B, T] (optional), labels [B, T] (-100 outside y*), and
        optionally player_mask [B, T] bool (tokens that may be players). outputs: the caller's forward of
        `model` on this batch, with gradients; it then supplies v of the full input. Cheapest is
        model(**batch, output_hidden_states=True): CIP reads the final hidden states at the target positions;
        with .logits only (or a logits tensor [B, T, V]), the backward of the reused rows fills a [B, T, V]
        zero gradient. step: the training step (seeds the partitions; default: a call counter).
        """
        records = self.interactions(model, batch, outputs, step=step)
        if not records:
            device = batch["input_ids"].device
            return torch.zeros((), device=device, dtype=torch.float32)
        return self.weight * torch.stack([r.penalty for r in records]).mean()

    def interactions(self, model: nn.Module, batch: Mapping[str, Tensor], outputs=None, *,
                     step: int | None = None) -> list[CIPRecord]:
        """The per-prompt players, v, I and penalties that forward() averages (prompts without players or
        targets are left out)."""
        if step is None:
            step = self._calls
            self._calls += 1
        if not isinstance(model, nn.Module):
            raise TypeError(f"CIP is called as cip(model, batch, outputs=None, step=...); model must be the student "
                            f"(an nn.Module), got {type(model).__name__}")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int (the training step), got {type(step).__name__}")
        input_ids, attention_mask, labels, player_mask = _unpack(batch)
        plans = self._plans(input_ids, attention_mask, labels, player_mask, int(step))
        if not plans:
            if not (labels[:math.ceil(self.batch_share * labels.shape[0])] != IGNORE_INDEX).any():
                warnings.warn("CIP: no token of this batch is selected (every label is -100), so the penalty is 0; "
                              "labels must hold the target token ids y* (-100 only on the prompt and padding)",
                              UserWarning, stacklevel=3)
            return []
        logprobs = self._mean_target_logprobs(model, plans, input_ids, attention_mask, outputs)
        records = []
        for plan, lp in zip(plans, logprobs):
            lp = lp if lp.dtype == torch.float64 else lp.float()
            values = reference.logodds_from_mean_logprob(lp, self.eps)
            inter = ops.mobius(values)
            mask = plan.complex_mask.to(inter.device)
            penalty = inter.abs()[mask].mean()
            tokens = [(plan.player_of_token == p).nonzero().squeeze(-1).tolist() for p in range(plan.k)]
            records.append(CIPRecord(plan.index, plan.players, values, inter, mask, penalty, tokens))
        return records

    # ------------------------------------------------------------------------------------------------------
    # Planning: players, targets and complex subsets per prompt
    # ------------------------------------------------------------------------------------------------------

    def _plans(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, player_mask: Tensor | None,
               step: int) -> list[_Plan]:
        batch_size = input_ids.shape[0]
        chosen = math.ceil(self.batch_share * batch_size)
        # chat-formatted rows: only the content of user messages may be players (recomputed for every batch, so
        # batches a trainer rebuilds, e.g. by on-policy generation, are covered)
        user = _chat.user_content_mask(input_ids[:chosen].cpu(), self.tokenizer)
        plans = []
        for b in range(chosen):
            valid = attention_mask[b].bool()
            positions = ((labels[b] != IGNORE_INDEX) & valid).nonzero().squeeze(-1)
            positions = positions[positions >= 1]  # position 0 has no prediction
            if self.max_target_tokens is not None:
                positions = positions[:self.max_target_tokens]
            if positions.numel() == 0:
                continue
            prompt = valid.clone()
            prompt[positions[0]:] = False
            if player_mask is not None:
                prompt &= player_mask[b].bool()
            if user is not None:
                prompt &= user[b].to(prompt.device)
            word_of_token = _groups.word_ids(input_ids[b], self.tokenizer, player_mask=prompt)
            if self._mode.hides_keys:  # the last prompt token predicts y*_1: its word stays visible
                last = int(word_of_token[positions[0] - 1])
                if last >= 0:
                    word_of_token = torch.where(word_of_token == last, -1, word_of_token)
                    word_of_token = torch.where(word_of_token > last, word_of_token - 1, word_of_token)
            n_words = int(word_of_token.max()) + 1 if word_of_token.numel() else 0
            if n_words < 2:  # one word: no complex interaction
                continue
            if n_words <= self.exact_up_to:
                players = [[w] for w in range(n_words)]
            else:
                seed = _groups.partition_seed(self.seed, step, input_ids[b][valid])
                players = _groups.random_groups(n_words, self.m, seed=seed)
            plans.append(_Plan(b, players, _groups.player_of_token(word_of_token, players), positions,
                               labels[b, positions].long(), self._complex_mask(players)))
        return plans

    def _complex_mask(self, players: list[list[int]]) -> Tensor:
        k = len(players)
        masks = torch.arange(1 << k)
        bits = (masks[:, None] >> torch.arange(k)) & 1
        order = bits.sum(-1)
        words_in = (bits * torch.tensor([len(p) for p in players])).sum(-1)
        return (order > self.order_threshold * k) & (words_in >= 2)

    # ------------------------------------------------------------------------------------------------------
    # The masked forwards
    # ------------------------------------------------------------------------------------------------------

    def _mean_target_logprobs(self, model: nn.Module, plans: list[_Plan], input_ids: Tensor,
                              attention_mask: Tensor, outputs) -> list[Tensor]:
        """Per plan, the mean log-prob of y* under each of its 2^k masks, [2^k] in mask order."""
        reuse = outputs is not None
        full_logits = getattr(outputs, "logits", outputs) if reuse else None
        if reuse and _final_hidden_states(outputs) is None and not isinstance(full_logits, Tensor):
            raise TypeError("outputs must be the model's output on this batch (with .logits, or .hidden_states "
                            "from output_hidden_states=True) or its logits tensor [B, T, V]")
        length = max(int(p.target_positions[-1]) + 1 for p in plans)
        rows = torch.tensor([p.index for p in plans], device=input_ids.device)
        inner = unwrap_model(model)
        _check_model(inner)
        mode = self._mode
        ids = input_ids[rows, :length]
        embeds = inner.get_input_embeddings()(ids) if mode.needs_embeddings else None  # [P, T', H], with gradients
        attn = attention_mask[rows, :length]
        baseline = mode.resolve(inner, self.tokenizer, self.baseline, differentiable=True)
        inputs, masks_attn, seq_plan, seq_count = [], [], [], []
        for j, plan in enumerate(plans):
            masks = torch.arange((1 << plan.k) - (1 if reuse else 0), device=input_ids.device)
            pot = plan.player_of_token[:length].to(input_ids.device)
            inputs.append(mode.inputs(ids[j], pot, masks, baseline, embeds[j] if embeds is not None else None))
            keys = mode.key_mask(pot, masks)
            masks_attn.append(attn[j] * keys.to(attn.dtype) if keys is not None else attn[j].expand(masks.numel(), -1))
            seq_plan += [j] * masks.numel()
            seq_count.append(masks.numel())
        inputs = {key: torch.cat([x[key] for x in inputs]) for key in inputs[0]}
        hidden = _last_hidden_state(model, inputs, torch.cat(masks_attn))  # [S, T', H]
        # the rows of the LM head: for sequence s of plan j, positions p - 1 of its targets
        device = hidden.device
        lengths = torch.tensor([plans[j].target_positions.numel() for j in seq_plan], device=device)
        seq_of_row = torch.repeat_interleave(torch.arange(len(seq_plan), device=device), lengths)
        pos = torch.cat([plans[j].target_positions.to(device) for j in seq_plan])
        tgt = torch.cat([plans[j].target_ids.to(device) for j in seq_plan])
        flat = hidden.reshape(-1, hidden.shape[-1])[seq_of_row * length + pos - 1]
        # the full input, reused from the caller: its target rows, by prompt
        counts = torch.tensor([p.target_positions.numel() for p in plans], device=device)
        plan_of_row = torch.repeat_interleave(torch.arange(len(plans), device=device), counts)
        full_rows = torch.tensor([p.index for p in plans], device=device)[plan_of_row]
        full_pos = torch.cat([p.target_positions.to(device) for p in plans]) - 1
        full_tgt = torch.cat([p.target_ids.to(device) for p in plans])
        full_hidden = _final_hidden_states(outputs) if reuse else None
        if full_hidden is not None:  # cheapest: through the same LM head call as the masked rows
            flat = torch.cat([flat, full_hidden[full_rows.to(full_hidden.device), full_pos].to(flat.dtype)])
            tgt = torch.cat([tgt, full_tgt])
            seq_of_row = torch.cat([seq_of_row, len(seq_plan) + plan_of_row])
            lengths = torch.cat([lengths, counts])
        weight, bias = _forward.lm_head(inner)
        lp = ops.target_logprobs(flat, weight, tgt, bias)
        per_seq = torch.zeros(lengths.numel(), dtype=lp.dtype, device=lp.device).index_add(0, seq_of_row, lp)
        per_seq = per_seq / lengths.to(lp.dtype)
        out = list(per_seq[:len(seq_plan)].split(seq_count))
        if not reuse:
            return out
        if full_hidden is not None:
            full = per_seq[len(seq_plan):]
        else:  # from the caller's logits (its backward fills a [B, T, V] zero gradient: slower for big vocabularies)
            logits = full_logits[full_rows.to(full_logits.device), full_pos.to(full_logits.device)]
            logits = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
            token_lp = logits.gather(-1, full_tgt.to(logits.device)[:, None]).squeeze(-1) - logits.logsumexp(-1)
            full = torch.zeros(len(plans), dtype=token_lp.dtype, device=token_lp.device).index_add(
                0, plan_of_row.to(token_lp.device), token_lp) / counts.to(token_lp)
        return [torch.cat([values, full[j].to(values.dtype)[None]]) for j, values in enumerate(out)]


def _check_types(**named) -> None:
    """named: option -> (value, type or types); a TypeError naming the option (ints pass as floats, bools never)."""
    for name, (value, types) in named.items():
        types = types if isinstance(types, tuple) else (types,)
        if float in types:
            types = (*types, int)
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("None" if t is type(None) else t.__name__ for t in types if t is not int or
                               float not in types)
            raise TypeError(f"CIP option {name} must be {want}, got {value!r} ({type(value).__name__})")


def _final_hidden_states(outputs) -> Tensor | None:
    """The caller's final hidden states [B, T, H] (outputs.hidden_states[-1]), when it asked for them."""
    states = getattr(outputs, "hidden_states", None)
    return states[-1] if isinstance(states, (tuple, list)) and states else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP / FSDP / accelerate wrappers (their .module) and torch.compile (its
    ._orig_mod; CIP still calls the compiled module, and reads only attributes and the signature from this)."""
    while True:
        inner = [m for m in (getattr(model, "_orig_mod", None), getattr(model, "module", None))
                 if isinstance(m, nn.Module)]
        if not inner:
            return model
        model = inner[0]


def _check_model(inner: nn.Module) -> None:
    if not hasattr(inner, "get_input_embeddings"):
        raise TypeError(f"{type(inner).__name__} is not a Hugging Face causal LM; CIP needs get_input_embeddings, "
                        f"get_output_embeddings and a forward taking inputs_embeds")
    _forward.lm_head(inner)  # raises for heads that the fused target log-prob op cannot reproduce


def _last_hidden_state(model: nn.Module, inputs: dict[str, Tensor], attention_mask: Tensor) -> Tensor:
    """The final hidden states (after the last norm) of a Hugging Face causal LM, computed by a call of `model`
    itself, so that a DistributedDataParallel wrapper sees the forward and synchronises the gradients. The LM
    head runs nowhere (logits_to_keep = an empty index); CIP applies it at the target positions itself."""
    inner = unwrap_model(model)
    kwargs = dict(**inputs, attention_mask=attention_mask, output_hidden_states=True, use_cache=False,
                  return_dict=True)
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:  # an empty index: no logits at all
        kwargs["logits_to_keep"] = torch.zeros(0, dtype=torch.long, device=attention_mask.device)
    return model(**kwargs).hidden_states[-1]


def _unpack(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a dict of tensors (input_ids, attention_mask, labels), got "
                        f"{type(batch).__name__}")
    missing = [k for k in ("input_ids", "labels") if k not in batch]
    if missing:
        raise ValueError(f"CIP needs a batch with input_ids and labels (labels = -100 on the prompt and padding, the "
                         f"target token ids y* elsewhere, as Hugging Face's causal LMs take them); this batch has no "
                         f"{' and no '.join(missing)} (its keys: {', '.join(map(str, batch)) or 'none'})")
    input_ids, labels = batch["input_ids"], batch["labels"]
    if not isinstance(input_ids, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"input_ids and labels must be tensors [batch, seq], got {type(input_ids).__name__} and "
                        f"{type(labels).__name__}")
    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must both be "
                         f"[batch, seq]")
    labelled = labels != IGNORE_INDEX
    if (labelled & (labels != input_ids)).any():
        shifted = bool((labels[:, :-1] == input_ids[:, 1:])[labelled[:, :-1]].all()) and labelled[:, :-1].any()
        hint = " They look shifted (labels[t] = input_ids[t + 1]); pass the unshifted labels." if shifted else ""
        raise ValueError("CIP takes Hugging Face labels: labels[t] = input_ids[t] at the target tokens y*, -100 "
                         f"elsewhere; here some labelled positions hold another token.{hint}")
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    player_mask = batch.get("player_mask")
    if player_mask is not None and tuple(player_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"player_mask {tuple(player_mask.shape)} does not fit input_ids {tuple(input_ids.shape)} (a "
                         f"trainer rebuilt the batch, e.g. by on-policy generation); leave player_mask out: CIP "
                         f"finds the user's words from the tokenizer's chat template")
    return input_ids, attention_mask, labels, player_mask
