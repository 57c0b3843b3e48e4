"""The scheduler: log p(y* | x_T) for all 2^n masked inputs of a prompt, in batches within a memory budget.

The prefix tree. Order the players by their first token: player i (in that order) first appears at position
b_{i+1}. Segment 0 = the tokens before the first player, segment k = the tokens from player k's first token to
player k+1's, segment n (the tail) = the rest, including y*_1..y*_{L-1}. The hidden states of segment k depend
on the bits of the first k players only, so segment k is computed for its 2^k distinct settings (not 2^n): the
prefix once, and only the tail runs for every mask. A forward processes one segment for a batch of rows (tree
nodes) of one level; each row attends to its ancestors' stored keys (see prefix_attention). The tree is walked
depth-first: a batch of nodes at level k, then its children in batches at level k + 1, and so on, so that the
stored keys are only those of the current path and the batch sizes stay within the memory budget. The LM head
runs on the L target-predicting positions of the tail only.

Node numbering: a node at level k is a k-bit number whose most significant bit is the first player; its children
are 2r and 2r + 1 (the new player absent, present). With max_order=K only the nodes with at most K players
present exist (a node with K present has one child), so only the masks of at most K players are evaluated.
Results come in the layout of kdi_fast.subsets(n, max_order), by mask in the caller's player order.

The flat path (models whose attention cannot be plugged in, and mask sets that share little): every masked input
in full, in batches, with the model's own attention, after the tokens before the first player, which run once
(their key/value cache is shared); the LM head still only at the target positions.
"""

from __future__ import annotations

import inspect
import math
import warnings
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from .. import ops
from .forward import decoder, head_logprobs, lm_head
from .masking import MaskedSequence
from .prefix_attention import ATTENTION_NAME, STATE_KWARG, TreeState, Unsupported, register

CPU_MAX_TOKENS_PER_FORWARD = 2048
"""On CPU larger batches do not run faster, they only take memory. Measured on the 2-core CPU (GPT-2-small shape,
n=8, 80 tokens): 256 tokens per forward 16.1 s, 1024 14.4 s, 4096 14.3 s, 16384 15.8 s."""
GPU_MAX_TOKENS_PER_FORWARD = 1 << 16


# ----------------------------------------------------------------------------------------------------------
# Memory estimates
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """The sizes that set a forward's working memory."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    element: int  # bytes per activation

    @classmethod
    def of(cls, model: nn.Module) -> "ModelDims":
        config = model.config
        hidden = int(getattr(config, "hidden_size", None) or config.n_embd)
        heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                           or 4 * hidden)
        element = next(model.parameters()).element_size()
        return cls(int(config.num_hidden_layers), hidden, intermediate, heads, kv_heads, head_dim,
                   int(lm_head(model)[0].shape[0]), element)

    @property
    def kv_per_token(self) -> int:
        """Bytes of stored keys and values per token (all layers)."""
        return self.layers * 2 * self.kv_heads * self.head_dim * self.element

    def forward_bytes(self, rows: int, length: int, keys: int) -> int:
        """Working memory of one decoder forward: rows x length new tokens attending to `keys` keys each."""
        per_token = self.element * (6 * self.hidden + 3 * self.intermediate + 3 * self.heads * self.head_dim)
        gathered = 2 * keys * self.kv_heads * self.head_dim * self.element * 2  # ancestors' K/V and the cat
        scores = self.heads * length * keys * 4 * 3
        return rows * (length * per_token + gathered + scores)

    def head_chunk(self, budget: int) -> int:
        """Rows per chunk of the fused LM head: at most 64 (a GEMM against the whole vocabulary is large enough
        at 64 rows: measured as fast as 256 on the 2-core CPU, 70 MiB less), logits within 1/8 of the budget."""
        return int(max(1, min(64, budget // 8 // (self.vocab * 4 * 3))))


# ----------------------------------------------------------------------------------------------------------
# The plan of one prompt
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TreePlan:
    """bounds: segment k is tokens [bounds[k], bounds[k+1]) (k = 0..n); order[i]: the caller's index of the i-th
    player by position; rows[k]: nodes per forward at level k; counts[k]: nodes at level k; prediction: the
    positions predicting y*; max_order: None (every mask) or K."""

    bounds: list[int]
    order: list[int]
    rows: list[int]
    counts: list[int]
    prediction: list[int]
    max_order: int | None
    estimated_bytes: int

    @property
    def n(self) -> int:
        return len(self.order)

    def token_forwards(self) -> int:
        """Token positions the decoder runs over, in total."""
        return sum(self.counts[k] * (self.bounds[k + 1] - self.bounds[k]) for k in range(self.n + 1))


def _pow2_floor(x: float) -> int:
    return 1 << int(math.floor(math.log2(x))) if x >= 1 else 1


def segment_bounds(owner: Tensor, n: int) -> tuple[list[int], list[int]]:
    """(bounds, order): players ordered by their first token, and the segment bounds (see TreePlan)."""
    owner_list = owner.tolist()
    first = {}
    for position, player in enumerate(owner_list):
        if player >= 0 and player not in first:
            first[player] = position
    if sorted(first) != list(range(n)):
        missing = sorted(set(range(n)) - set(first))
        raise ValueError(f"players {missing} have no tokens in the model input")
    order = sorted(range(n), key=first.__getitem__)
    return [0] + [first[p] for p in order] + [len(owner_list)], order


def dense_order(n: int, max_order: int | None) -> int | None:
    """max_order, or None when it keeps every subset (K >= n)."""
    return None if max_order is None or max_order >= n else max_order


def level_counts(n: int, max_order: int | None) -> list[int]:
    """Nodes at each level 0..n: 2^k, or sum_{j <= K} C(k, j)."""
    if max_order is None:
        return [1 << k for k in range(n + 1)]
    return [sum(math.comb(k, j) for j in range(min(k, max_order) + 1)) for k in range(n + 1)]


def plan_tree(seq: MaskedSequence, prediction: list[int], dims: ModelDims, budget: int,
              max_tokens: int, max_order: int | None = None) -> TreePlan:
    """The largest batches (nodes per forward at each level) whose estimated peak memory fits the budget."""
    n = seq.n
    max_order = dense_order(n, max_order)
    bounds, order = segment_bounds(seq.owner, n)
    lengths = [bounds[k + 1] - bounds[k] for k in range(n + 1)]
    counts = level_counts(n, max_order)
    head = dims.head_chunk(budget) * dims.vocab * 4 * 3

    def rows_for(cap: int) -> list[int]:
        # No level takes more nodes per forward than the tail: a batch of B leaves needs fewer than B ancestors
        # at every level, and each stored node costs keys for all its tokens (the stored path is most of the
        # memory), while forwards of B x len tokens are already large enough to run at full speed.
        tail = _pow2_floor(cap / max(lengths[n], 1))
        rows = []
        for k in range(n + 1):
            limit = min(tail, _pow2_floor(cap / max(lengths[k], 1)))
            rows.append(max(1, min(counts[k], limit, 2 * rows[-1] if rows else 1)))
        return rows

    def peak(rows: list[int]) -> int:
        stored, worst = 0, 0
        for k in range(n + 1):
            worst = max(worst, stored + dims.forward_bytes(rows[k], lengths[k], bounds[k + 1]))
            stored += rows[k] * lengths[k] * dims.kv_per_token
        return worst + head

    rows, need = fit_rows(rows_for, peak, max_tokens, budget)
    return TreePlan(bounds, order, rows, counts, prediction, max_order, need)


def fit_rows(rows_for: Callable[[int], list[int]], peak: Callable[[list[int]], int], max_tokens: int,
             budget: int) -> tuple[list[int], int]:
    """(rows per level, estimated peak bytes) for the largest cap on tokens per forward (max_tokens, halved
    while needed) whose plan rows_for(cap) fits the budget by peak(rows); ValueError when none does."""
    cap = max_tokens
    while True:
        rows = rows_for(cap)
        need = peak(rows)
        if need <= budget or cap == 1:
            break
        cap //= 2
    if need > budget:
        raise ValueError(f"memory_budget={budget:,} bytes is too small for this prompt: even one masked input at a "
                         f"time needs about {need:,} bytes; raise memory_budget")
    return rows, need


def _popcount(x: Tensor, bits: int) -> Tensor:
    count = torch.zeros_like(x)
    for i in range(bits):
        count += (x >> i) & 1
    return count


def children(nodes: Tensor, level: int, max_order: int | None) -> Tensor:
    """The sorted children (level + 1) of sorted `nodes` at `level`: 2r, and 2r + 1 unless r has K players."""
    pairs = torch.stack([2 * nodes, 2 * nodes + 1], 1)
    if max_order is None:
        return pairs.reshape(-1)
    keep = torch.ones_like(pairs, dtype=torch.bool)
    keep[:, 1] = _popcount(nodes, level) < max_order
    return pairs[keep]


def masks_of_rows(rows: Tensor, level: int, order: list[int]) -> Tensor:
    """The masks (bit order[i] = player order[i] present) of tree nodes `rows` [M] at `level`."""
    masks = torch.zeros_like(rows)
    for i in range(level):
        masks |= ((rows >> (level - 1 - i)) & 1) << order[i]
    return masks


def layout_positions(masks: Tensor, n: int, max_order: int | None) -> Tensor:
    """Where each mask sits in the layout of kdi_fast.subsets(n, max_order)."""
    if max_order is None:
        return masks
    layout = ops.subsets(n, max_order).to(masks.device)
    ordered, where = layout.sort()
    return where[torch.searchsorted(ordered, masks)]


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    """What a run did: path ("prefix_tree" or "flat"), forwards, token positions, nodes per forward by level."""

    path: str = ""
    forwards: int = 0
    token_forwards: int = 0
    rows_per_forward: list[int] = field(default_factory=list)
    fallback_reason: str = ""


@contextmanager
def prefix_tree_attention(model: nn.Module):
    """Switch the model to the prefix-tree attention for the duration (restored after, also on errors)."""
    register()
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = previous


def run_tree(model: nn.Module, seq: MaskedSequence, target_ids: Tensor, plan: TreePlan, dims: ModelDims,
             head_chunk: int, advance: Callable[[int], None] = lambda k: None) -> tuple[Tensor, RunStats]:
    """log p(y*_l | x_T) [M, L] in the layout of subsets(n, max_order), through the prefix tree."""
    n, device = plan.n, seq.input_ids.device
    out = torch.empty(plan.counts[n], target_ids.shape[0],
                      dtype=torch.float64 if dims.element == 8 else torch.float32)
    state = TreeState(total_length=len(seq))
    stats = RunStats(path="prefix_tree", rows_per_forward=list(plan.rows))
    base = decoder(model)
    tail_prediction = torch.tensor(plan.prediction, device=device) - plan.bounds[n]
    if int(tail_prediction.min()) < 0:
        raise ValueError("the positions that predict y* must come after the first token of the last player")

    def forward(level: int, nodes: Tensor) -> None:
        start, stop = plan.bounds[level], plan.bounds[level + 1]
        if stop == start:  # an empty prefix (a player at position 0)
            return
        rows = nodes.shape[0]
        masks = masks_of_rows(nodes, level, plan.order)
        inputs = seq.inputs(start, stop, masks)
        state.begin(level, nodes, stop - start, seq.key_mask(start, stop, masks), store=level < n)
        positions = torch.arange(start, stop, device=device)[None].expand(rows, -1)
        hidden = base(**inputs, position_ids=positions, use_cache=False, **{STATE_KWARG: state}).last_hidden_state
        state.end(dims.layers)
        stats.forwards += 1
        stats.token_forwards += rows * (stop - start)
        if level == n:
            logprobs = head_logprobs(model, hidden.index_select(1, tail_prediction), target_ids,
                                     chunk_size=head_chunk)
            out[layout_positions(masks, n, plan.max_order).cpu()] = logprobs.to(out.dtype).cpu()
            advance(rows)

    def visit(level: int, nodes: Tensor) -> None:
        forward(level, nodes)
        if level < n:
            below = children(nodes, level, plan.max_order)
            step = plan.rows[level + 1]
            for i in range(0, below.shape[0], step):
                visit(level + 1, below[i:i + step])

    with prefix_tree_attention(model):
        visit(0, torch.zeros(1, dtype=torch.int64, device=device))
    return out, stats


def plan_flat(seq: MaskedSequence, dims: ModelDims, budget: int, max_tokens: int, masks: int) -> int:
    """Masked inputs per forward of the flat path."""
    length = len(seq)
    per_mask = dims.forward_bytes(1, length, length)
    head = dims.head_chunk(budget) * dims.vocab * 4 * 3
    rows = max(1, min((budget - head) // per_mask if budget > head else 1, max_tokens // max(length, 1)))
    return int(min(rows, masks))


@torch.no_grad()
def run_flat(model: nn.Module, seq: MaskedSequence, target_ids: Tensor, prediction: list[int], masks: Tensor,
             rows: int, head_chunk: int, advance: Callable[[int], None] = lambda k: None) -> tuple[Tensor, RunStats]:
    """log p(y*_l | x_T) [M, L] for `masks` [M]: each masked input in full, with the model's own attention
    (values only: no autograd graph).

    The tokens before the first player (e.g. a chat template's system turn) are the same in every masked input:
    they run once, and every batch continues from their key/value cache (shared_prefix).
    Where the masking hides tokens from attention, a hidden token changes no other token's hidden state, so each
    input runs without its hidden tokens (the kept ones at their own positions, right-padded in the batch): the
    same values for ~the kept share of the token positions. The masks run sorted by kept length, to pad little.
    Not for attention windows shorter than the sequence (_window_free): a window counts sequence places."""
    device = seq.input_ids.device
    base = decoder(model)
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    out = torch.empty(masks.shape[0], target_ids.shape[0], dtype=dtype)
    shared = shared_prefix(model, seq, prediction)
    at_tail = torch.tensor(prediction, device=device) - shared
    stats = RunStats(path="flat", rows_per_forward=[rows])
    cache_argument = _cache_argument(base)
    cache = _prefix_cache(base, cache_argument, seq, shared, masks[:1].to(device)) if shared else None
    stats.token_forwards += shared
    tail = torch.arange(shared, len(seq), device=device)
    kept = kept_tokens(model, seq, masks)
    order = torch.arange(masks.shape[0]) if kept is None else kept.sum(1).argsort(stable=True).cpu()
    for start in range(0, masks.shape[0], rows):
        index = order[start:start + rows]
        chunk = masks[index].to(device)
        batch = chunk.shape[0]
        inputs = seq.inputs(shared, len(seq), chunk)
        if kept is None:
            positions, at = tail[None].expand(batch, -1), at_tail[None].expand(batch, -1)
            keys = seq.key_mask(shared, len(seq), chunk)  # tokens hidden in place (a window that is not free)
            attention = None if keys is None else keys.long()
        else:
            inputs, positions, at = _without_hidden_tokens(inputs, kept[index.to(device), shared:], at_tail)
            positions = positions + shared
            attention = inputs.pop("attention_mask")
        if cache is not None:
            if attention is not None:
                attention = torch.cat([attention.new_ones(batch, shared), attention], 1)
            inputs[cache_argument] = _expanded_cache(cache, batch)
        hidden = base(**inputs, attention_mask=attention, position_ids=positions,
                      use_cache=cache is not None).last_hidden_state
        hidden = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
        out[index] = head_logprobs(model, hidden, target_ids, chunk_size=head_chunk).to(dtype).cpu()
        stats.forwards += 1
        stats.token_forwards += batch * positions.shape[1]
        advance(batch)
    return out, stats


def shared_prefix(model: nn.Module, seq: MaskedSequence, prediction: list[int]) -> int:
    """How many leading tokens the flat path runs once for all masks: those before the first player's first
    token (none of them is masked), or 0 where the decoder takes no key/value cache."""
    if _cache_argument(decoder(model)) is None:
        return 0
    first = segment_bounds(seq.owner, seq.n)[0][1]  # the end of the trie's segment 0
    return min(first, min(prediction))


def _cache_argument(base: nn.Module) -> str | None:
    """The name under which the decoder takes a key/value cache ("cache" from transformers 5.2x on, before that
    "past_key_values"), or None."""
    parameters = inspect.signature(base.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _prefix_cache(base: nn.Module, cache_argument: str, seq: MaskedSequence, shared: int, mask: Tensor):
    """The decoder's key/value cache of tokens 0..shared-1 (batch 1), as its output names it (cache_argument);
    `mask` [1] is any mask (none of these tokens belongs to a player)."""
    positions = torch.arange(shared, device=seq.input_ids.device)[None]
    output = base(**seq.inputs(0, shared, mask), position_ids=positions, use_cache=True)
    return getattr(output, cache_argument)


def _expanded_cache(cache, rows: int):
    """A copy of a batch-1 cache for `rows` inputs (a forward appends to the cache it is given)."""
    copy = deepcopy(cache)
    copy.batch_repeat_interleave(rows)
    return copy


def flat_token_share(model: nn.Module, seq: MaskedSequence, masks: Tensor, prediction: list[int]) -> float:
    """The flat path's token positions for `masks` [M] as a share of those of independent full forwards: the
    shared prefix once, then each input's kept tokens (all of them where attention hides none)."""
    shared = shared_prefix(model, seq, prediction)
    kept = kept_tokens(model, seq, masks)
    tail = (len(seq) - shared) * masks.shape[0] if kept is None else int(kept[:, shared:].sum())
    return (shared + tail) / (masks.shape[0] * len(seq))


def kept_tokens(model: nn.Module, seq: MaskedSequence, masks: Tensor) -> Tensor | None:
    """[M, S] bool: the tokens the flat path runs for each of `masks` [M] (those attention does not hide), or
    None when it runs every token (no hidden tokens, or an attention window that could cut the input)."""
    if not _window_free(model, len(seq)):
        return None
    return seq.key_mask(0, len(seq), masks.to(seq.input_ids.device))


def _window_free(model: nn.Module, length: int) -> bool:
    """Whether every layer of `model` attends to all earlier tokens of a `length`-token input (no sliding or
    chunked window that cuts it), so that which tokens sit between two others does not change attention."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    types = getattr(config, "layer_types", None)
    if getattr(config, "attention_chunk_size", None) or any("chunk" in str(t) for t in types or ()):
        return False
    window = getattr(config, "sliding_window", None)
    if types is not None:
        windowed = any("sliding" in str(t) for t in types)
    else:
        windowed = window is not None and getattr(config, "use_sliding_window", True)
    return not windowed or (window is not None and length <= window)


def _without_hidden_tokens(inputs: dict[str, Tensor], kept: Tensor, prediction: Tensor
                           ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The batch of full inputs [B, S, ...] cut to its kept tokens kept [B, S] bool, right-padded to the longest:
    (inputs with attention_mask [B, K], position_ids [B, K] (each token's own position), where the prediction
    positions [L] went [B, L])."""
    if not bool(kept.index_select(1, prediction).all()):
        raise ValueError("a position that predicts y* is hidden by the mask: it must not belong to a player")
    lengths = kept.sum(1)
    width = int(lengths.max())
    where = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)[:, :width]  # kept positions first, in order
    valid = torch.arange(width, device=kept.device)[None] < lengths[:, None]
    cut = {k: v.gather(1, where if v.dim() == 2 else where[..., None].expand(-1, -1, v.shape[-1]))
           for k, v in inputs.items() if k != "attention_mask"}
    cut["attention_mask"] = valid.long()
    at = (kept.cumsum(1) - 1).index_select(1, prediction)
    return cut, where, at


def all_mask_logprobs(model: nn.Module, seq: MaskedSequence, target_ids: Tensor, prediction: list[int], *,
                      budget: int, path: str = "auto", max_tokens: int | None = None, max_order: int | None = None,
                      advance: Callable[[int], None] = lambda k: None) -> tuple[Tensor, RunStats]:
    """log p(y*_l | x_T, y*_<l) [M, L] for every mask T of kdi_fast.subsets(n, max_order) (every mask by default:
    then row T is the mask T, bits in the caller's player order).

    path: "auto" (the prefix tree, or the flat path for models it cannot serve), "prefix_tree" or "flat".
    """
    if path not in ("auto", "prefix_tree", "flat"):
        raise ValueError(f"path must be 'auto', 'prefix_tree' or 'flat', got {path!r}")
    max_order = dense_order(seq.n, max_order)
    dims = ModelDims.of(model)
    device = seq.input_ids.device
    if max_tokens is None:
        max_tokens = GPU_MAX_TOKENS_PER_FORWARD if device.type == "cuda" else CPU_MAX_TOKENS_PER_FORWARD
    head_chunk = dims.head_chunk(budget)
    reason = ""
    if path in ("auto", "prefix_tree"):
        plan = plan_tree(seq, prediction, dims, budget, max_tokens, max_order)
        done = 0

        def counted(k: int) -> None:
            nonlocal done
            done += k
            advance(k)

        try:
            return run_tree(model, seq, target_ids, plan, dims, head_chunk, counted)
        except Unsupported as err:
            if path == "prefix_tree":
                raise
            reason = str(err)
            warnings.warn(f"kdi_fast: {type(model).__name__} cannot use the prefix-tree attention ({reason}); "
                          f"computing every masked input in full instead (slower)", stacklevel=3)
            advance(-done)
    masks = ops.subsets(seq.n, max_order)
    rows = plan_flat(seq, dims, budget, max_tokens, masks.shape[0])
    out, stats = run_flat(model, seq, target_ids, prediction, masks, rows, head_chunk, advance)
    stats.fallback_reason = reason
    return out, stats
