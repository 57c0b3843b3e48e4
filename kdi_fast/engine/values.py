"""v(x_T) for any set of masks T of one prompt, any number of players, through a prefix trie of the masks.

compute_values(model, tokenizer, prompt, masks) evaluates an arbitrary set of masks (random, structured,
adaptive); ValueFunction does the same for one prompt prepared once (target, players, masked sequence), so a
caller that chooses masks in rounds (engine.sparse) pays the preparation once.

Masks are a bool Tensor [M, n] (column i = player i present), or for n <= 62 a 1-D int64 Tensor of bit masks
(bit i = player i), as in the exact engine.

The trie. Order the players by their first token, as the scheduler does; c players in that order have their
first token at pos(c). Cut the ordered players at c_0 = 0 < c_1 < ... < c_J = n. Level 0 is the tokens before
the first player (computed once); level j the tokens [pos(c_{j-1}), pos(c_j)) (level J: to the end, with the
target tokens). Those tokens depend on the bits of the first c_j players only, so level j runs once per distinct
setting of those bits among the masks (a trie node), not once per mask: masks that agree on the first players
share those segments. Each node attends to its ancestors' stored keys (prefix_attention), the walk is
depth-first in batches within the memory budget, and the LM head runs at the target positions only (as in the
scheduler). The cuts minimise (tokens run) + OVERHEAD x (forwards) over all cut sets by dynamic programming,
given the number of distinct prefixes of every length: random masks share only their first ~log2(M) players,
structured mask sets (engine.sparse) share much more.

path="flat" runs every distinct mask as an independent full forward (the model's own attention): the reference
the trie is measured against, and the fallback for models the prefix-tree attention cannot serve.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .forward import decoder, head_logprobs
from .masking import MaskedSequence, check_masking, input_embeddings
from .memory import default_memory_budget, parse_memory
from .players import EncodedPrompt, encode_prompt, player_of_token, player_texts, resolve_players
from .prefix_attention import STATE_KWARG, TreeState, Unsupported
from .scheduler import (CPU_MAX_TOKENS_PER_FORWARD, GPU_MAX_TOKENS_PER_FORWARD, ModelDims, fit_rows,
                        flat_token_share, prefix_tree_attention, run_flat, segment_bounds)
from .target import greedy_target, tokenize_target
from .value import DEFAULT_EPS, values_from_logprobs

OVERHEAD_TOKENS = {"cpu": 16, "cuda": 4096}
"""One decoder forward's fixed cost in token positions (Python, kernel launches), used to choose the cuts."""
TRIE_MAX_TOKEN_SHARE = 0.6
"""path="auto" runs the trie only when it runs at most this share of the token positions of independent full
forwards; else the flat path. A token costs ~1.5x more through the trie (short segments, ancestors' keys
gathered, an explicit attention mask): 2-layer SmolLM2 on a 2-core CPU, share 0.36 -> 1.9x faster, 0.86 ->
0.79x (uniformly random masks, n = 64), so the trie stops paying near 0.68 (bench_sparse_speed.py)."""


def as_mask_matrix(masks, n: int) -> Tensor:
    """Masks as a bool Tensor [M, n]: from a bool/0-1 Tensor [M, n], or (n <= 62) a 1-D Tensor of bit masks."""
    masks = torch.as_tensor(masks)
    if masks.dim() == 1:
        if masks.dtype in (torch.bool,) or masks.is_floating_point():
            raise TypeError("1-D masks must be integer bit masks; pass a bool Tensor [M, n] otherwise")
        if n > 62:
            raise ValueError(f"bit-mask integers hold at most 62 players, here n = {n}; pass a bool Tensor [M, n]")
        if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= 1 << n):
            raise ValueError(f"bit masks must lie in [0, 2^{n}) for n = {n} players")
        bits = torch.arange(n, dtype=torch.int64)
        return ((masks.to(torch.int64).cpu()[:, None] >> bits) & 1).bool()
    if masks.dim() != 2 or masks.shape[1] != n:
        raise ValueError(f"masks must be a bool Tensor [M, n={n}] (or 1-D bit masks), got shape {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("masks must be bool or hold only 0 and 1")
        masks = masks.bool()
    if masks.shape[0] == 0:
        raise ValueError("masks is empty: give at least one mask")
    return masks.cpu()


# ----------------------------------------------------------------------------------------------------------
# The trie of a mask set
# ----------------------------------------------------------------------------------------------------------


def prefix_counts(ordered: Tensor) -> list[int]:
    """U(c) for c = 0..n: the number of distinct settings of the first c columns of `ordered` [M, n] bool."""
    ids = torch.zeros(ordered.shape[0], dtype=torch.int64)
    counts = [1]
    for c in range(ordered.shape[1]):
        ids = torch.unique(2 * ids + ordered[:, c].long(), return_inverse=True)[1]
        counts.append(int(ids.max()) + 1)
    return counts


def choose_cuts(counts: list[int], pos: list[int], max_tokens: int, overhead: float) -> list[int]:
    """Cuts 0 < c_1 < ... < c_J = n minimising sum_j U(c_j) len_j + overhead * forwards_j (dynamic programming).

    counts: U(c) for c = 0..n; pos: the first token of ordered player c (c < n) and pos[n] = sequence length."""
    n = len(counts) - 1
    U = np.asarray(counts, dtype=np.float64)
    P = np.asarray(pos, dtype=np.float64)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    back = np.zeros(n + 1, dtype=np.int64)
    for b in range(1, n + 1):
        a = np.arange(b)
        lengths = P[b] - P[a]
        tokens = U[b] * lengths
        rows = np.maximum(1.0, np.floor(max_tokens / np.maximum(lengths, 1.0)))
        cost = best[a] + tokens + overhead * np.ceil(U[b] / rows) * (lengths > 0)
        back[b] = int(np.argmin(cost))
        best[b] = cost[back[b]]
    cuts, b = [], n
    while b > 0:
        cuts.append(b)
        b = int(back[b])
    return cuts[::-1]


@dataclass
class MaskTrie:
    """The trie of a mask set. cuts: c_1..c_J; levels 0..J with bounds[j] the first token of level j
    (bounds[J + 1] = sequence length); node_of[j] [M]: the node of each mask at level j (sorted ids, parents in
    order); parent[j] [U_j]: the node at level j - 1 of each node; first_mask[j] [U_j]: one mask of each node."""

    cuts: list[int]
    bounds: list[int]
    node_of: list[Tensor]
    parent: list[Tensor]
    first_mask: list[Tensor]

    @property
    def levels(self) -> int:
        return len(self.node_of)

    def count(self, level: int) -> int:
        return self.parent[level].shape[0]

    def length(self, level: int) -> int:
        return self.bounds[level + 1] - self.bounds[level]

    def token_forwards(self) -> int:
        return sum(self.count(j) * self.length(j) for j in range(self.levels))

    def children_range(self, level: int, first: int, last: int) -> tuple[int, int]:
        """The children [start, stop) at level + 1 of the contiguous nodes first..last at `level`."""
        parent = self.parent[level + 1]
        return int(torch.searchsorted(parent, first)), int(torch.searchsorted(parent, last, right=True))

    def ancestors(self, level: int, nodes: Tensor, of_level: int) -> Tensor:
        for j in range(level, of_level, -1):
            nodes = self.parent[j][nodes]
        return nodes


def build_trie(masks: Tensor, order: list[int], positions: list[int], length: int, max_tokens: int,
               overhead: float) -> MaskTrie:
    """The trie of masks [M, n] bool (caller's player order); order: players by first token; positions: their
    first tokens (in that order); length: the sequence length."""
    ordered = masks[:, order]
    n = len(order)
    counts = prefix_counts(ordered)
    cuts = choose_cuts(counts, list(positions) + [length], max_tokens, overhead)
    m = masks.shape[0]
    node_of = [torch.zeros(m, dtype=torch.int64)]
    parent = [torch.zeros(1, dtype=torch.int64)]
    ids, done = node_of[0], 0
    for c in cuts:
        for i in range(done, c):
            ids = torch.unique(2 * ids + ordered[:, i].long(), return_inverse=True)[1]
        done = c
        # parent of each new node: the level above's node of any of its masks
        count = int(ids.max()) + 1
        owner = torch.empty(count, dtype=torch.int64)
        owner[ids] = node_of[-1]
        node_of.append(ids)
        parent.append(owner)
    first_mask = []
    for ids in node_of:
        first = torch.full((int(ids.max()) + 1,), m, dtype=torch.int64)
        first.scatter_reduce_(0, ids, torch.arange(m), reduce="amin")
        first_mask.append(first)
    bounds = [0] + [positions[0] if n else length] + [positions[c] for c in cuts[:-1]] + [length]
    return MaskTrie(cuts, bounds, node_of, parent, first_mask)


# ----------------------------------------------------------------------------------------------------------
# Inputs of a segment under bool masks
# ----------------------------------------------------------------------------------------------------------


def segment_inputs(seq: MaskedSequence, start: int, stop: int, present: Tensor) -> tuple[dict, Tensor | None]:
    """(decoder inputs, key_mask) of tokens start..stop-1 for each row of present [R, n] bool."""
    return seq.inputs(start, stop, present), seq.key_mask(start, stop, present)


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ValueStats:
    """Cost figures, summed over calls: masks asked, distinct masks evaluated, decoder forwards, token positions
    run, token positions of independent full forwards of the same distinct masks, seconds."""

    masks: int = 0
    evaluated: int = 0
    forwards: int = 0
    token_forwards: int = 0
    naive_token_forwards: int = 0
    seconds: float = 0.0
    path: str = ""
    fallback: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v != ""}


def _rows_per_level(trie: MaskTrie, dims: ModelDims, budget: int, max_tokens: int) -> list[int]:
    """Nodes per forward at each level: as in scheduler.plan_tree, the largest that fit the memory budget."""
    levels = trie.levels
    lengths = [max(trie.length(j), 1) for j in range(levels)]
    head = dims.head_chunk(budget) * dims.vocab * 4 * 3

    def rows_for(cap: int) -> list[int]:
        tail = max(1, 1 << int(math.log2(max(cap / lengths[-1], 1))))
        return [max(1, min(trie.count(j), tail, max(1, 1 << int(math.log2(max(cap / lengths[j], 1))))))
                for j in range(levels)]

    def peak(rows: list[int]) -> int:
        stored, worst = 0, 0
        for j in range(levels):
            worst = max(worst, stored + dims.forward_bytes(rows[j], lengths[j], trie.bounds[j + 1]))
            stored += rows[j] * lengths[j] * dims.kv_per_token
        return worst + head

    return fit_rows(rows_for, peak, max_tokens, budget)[0]


def trie_logprobs(model: nn.Module, seq: MaskedSequence, target: Tensor, prediction: list[int], trie: MaskTrie,
                  masks: Tensor, rows: list[int], dims: ModelDims, head_chunk: int, stats: ValueStats,
                  advance=lambda k: None) -> Tensor:
    """log p(y*_l | x_T) [U, L] for the U distinct masks (the last level's nodes) through the trie."""
    device = seq.input_ids.device
    levels = trie.levels
    last = levels - 1
    out = torch.empty(trie.count(last), target.shape[0], dtype=torch.float64 if dims.element == 8 else torch.float32)
    state = TreeState(total_length=len(seq))
    base = decoder(model)
    tail_prediction = torch.tensor(prediction, device=device) - trie.bounds[last]
    if int(tail_prediction.min()) < 0:
        raise ValueError("the positions that predict y* must come after the first token of the last player")

    def forward(level: int, first: int, stop: int) -> None:
        start_tok, stop_tok = trie.bounds[level], trie.bounds[level + 1]
        if stop_tok == start_tok:
            return
        nodes = torch.arange(first, stop)
        present = masks[trie.first_mask[level][nodes]].to(device)
        inputs, key_mask = segment_inputs(seq, start_tok, stop_tok, present)
        state.begin(level, nodes.to(device), stop_tok - start_tok, key_mask, store=level < last,
                    ancestor=lambda j: trie.ancestors(level, nodes, j).to(device))
        positions = torch.arange(start_tok, stop_tok, device=device)[None].expand(nodes.shape[0], -1)
        hidden = base(**inputs, position_ids=positions, use_cache=False, **{STATE_KWARG: state}).last_hidden_state
        state.end(dims.layers)
        stats.forwards += 1
        stats.token_forwards += nodes.shape[0] * (stop_tok - start_tok)
        if level == last:
            logprobs = head_logprobs(model, hidden.index_select(1, tail_prediction), target, chunk_size=head_chunk)
            out[first:stop] = logprobs.to(out.dtype).cpu()
            advance(stop - first)

    def visit(level: int, first: int, stop: int) -> None:
        forward(level, first, stop)
        if level < last:
            lo, hi = trie.children_range(level, first, stop - 1)
            for i in range(lo, hi, rows[level + 1]):
                visit(level + 1, i, min(i + rows[level + 1], hi))

    with prefix_tree_attention(model):
        visit(0, 0, 1)
    return out


def flat_logprobs(model: nn.Module, seq: MaskedSequence, target: Tensor, prediction: list[int], masks: Tensor,
                  rows: int, head_chunk: int, stats: ValueStats, advance=lambda k: None) -> Tensor:
    """log p(y*_l | x_T) [M, L] for masks [M, n] bool: each masked input as an independent full forward
    (the scheduler's flat path, which takes mask matrices too)."""
    out, run = run_flat(model, seq, target, prediction, masks, rows, head_chunk, advance)
    stats.forwards += run.forwards
    stats.token_forwards += run.token_forwards
    return out


# ----------------------------------------------------------------------------------------------------------
# One prompt, prepared once
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ValueFunction:
    """v(x_T) of one prompt as a function of masks: call it with masks [M, n] bool -> values [M] float64.

    Built by ValueFunction.prepare (checks the prompt, players, target and context length first)."""

    model: nn.Module
    seq: MaskedSequence
    target: Tensor
    prediction: list[int]
    encoded: EncodedPrompt
    players: list[tuple[int, ...]]
    player_texts: list[str]
    target_ids: list[int]
    target_text: str
    settings: dict
    budget: int
    max_tokens: int
    path: str = "auto"
    eps: float = DEFAULT_EPS
    stats: ValueStats = field(default_factory=ValueStats)

    @property
    def n(self) -> int:
        return len(self.players)

    @classmethod
    def prepare(cls, model: nn.Module, tokenizer, prompt: str, *, target: str | None = None, players=None,
                n_players: int = 10, max_target_tokens: int = 16, masking: str = "embedding",
                baseline: str | int = "pad", chat_template: bool = False, memory_budget: int | str | None = None,
                eps: float = DEFAULT_EPS, path: str = "auto", max_batch_tokens: int | None = None,
                target_ids: list[int] | None = None, exact_players: bool = False) -> "ValueFunction":
        """Check and prepare one prompt. target_ids: given target tokens (e.g. the teacher's y*), instead of
        target. exact_players: raise when the prompt has fewer usable words than n_players (automatic choice)."""
        mode = check_masking(masking, baseline)
        if path not in ("auto", "prefix_tree", "flat"):
            raise ValueError(f"path must be 'auto', 'prefix_tree' or 'flat', got {path!r}")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ValueError(f"max_batch_tokens must be a positive int or None, got {max_batch_tokens!r}")
        budget = parse_memory(memory_budget)
        parameter = next(model.parameters())
        device = parameter.device
        encoded = encode_prompt(tokenizer, prompt, chat_template=chat_template)
        chosen = resolve_players(encoded, players, n_players, keep_last_token=mode.hides_keys, all_masks=False)
        if players is None and exact_players and len(chosen) < n_players:
            raise ValueError(f"the prompt has {len(chosen)} words that can be players, fewer than the {n_players} "
                             f"players asked; lower n_players to at most {len(chosen)} or give a longer prompt")
        if target_ids is None:
            target_ids = tokenize_target(tokenizer, target) if target is not None else None
        from .compute import context_length, model_name, tokenizer_fingerprint

        limit = context_length(model)
        need = len(encoded.input_ids) + (len(target_ids) if target_ids is not None else max_target_tokens) - 1
        if limit is not None and need > limit:
            raise ValueError(f"the prompt ({len(encoded.input_ids)} tokens) and its target together need {need} "
                             f"positions, more than the model's context of {limit}; shorten the prompt or the target")
        was_training = model.training
        model.eval()
        try:
            if target_ids is None:
                target_ids = greedy_target(model, tokenizer, list(encoded.input_ids), max_target_tokens)
                source = "greedy"
            else:
                source = "given"
            prompt_length = len(encoded.input_ids)
            owner = player_of_token(encoded, chosen) + [-1] * (len(target_ids) - 1)
            ids = torch.tensor(list(encoded.input_ids) + list(target_ids[:-1]), dtype=torch.int64, device=device)
            embeds = input_embeddings(model)(ids).detach() if mode.needs_embeddings else None
            seq = MaskedSequence(input_ids=ids, owner=torch.tensor(owner, dtype=torch.int64, device=device),
                                 n=len(chosen), masking=mode, baseline=mode.resolve(model, tokenizer, baseline),
                                 embeds=embeds)
        finally:
            model.train(was_training)
        max_tokens = max_batch_tokens or (GPU_MAX_TOKENS_PER_FORWARD if device.type == "cuda"
                                          else CPU_MAX_TOKENS_PER_FORWARD)
        settings = {"masking": masking, "baseline": baseline if mode.uses_baseline else None,
                    "chat_template": bool(chat_template), "n_players": len(chosen),
                    "max_target_tokens": max_target_tokens, "eps": eps, "target": source,
                    "tokenizer": tokenizer_fingerprint(tokenizer), "model": model_name(model),
                    "dtype": str(parameter.dtype).removeprefix("torch.")}
        return cls(model=model, seq=seq, target=torch.tensor(list(target_ids), dtype=torch.int64, device=device),
                   prediction=list(range(prompt_length - 1, prompt_length - 1 + len(target_ids))),
                   encoded=encoded, players=chosen, player_texts=player_texts(encoded, chosen),
                   target_ids=list(target_ids), target_text=tokenizer.decode(list(target_ids)), settings=settings,
                   budget=budget if budget is not None else default_memory_budget(device), max_tokens=max_tokens,
                   path=path, eps=eps)

    def logprobs(self, masks, *, progress: bool = False) -> Tensor:
        """log p(y*_l | x_T, y*_<l) [M, L] for masks [M, n] bool (or 1-D bit masks when n <= 62)."""
        masks = as_mask_matrix(masks, self.n)
        started = time.perf_counter()
        unique, inverse = torch.unique(masks, dim=0, return_inverse=True)
        dims = ModelDims.of(self.model)
        head_chunk = dims.head_chunk(self.budget)
        from tqdm.auto import tqdm

        bar = tqdm(total=unique.shape[0], unit="mask", desc="values", disable=not progress, dynamic_ncols=True)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self._run(unique, dims, head_chunk, bar.update)
        finally:
            self.model.train(was_training)
            bar.close()
        self.stats.masks += masks.shape[0]
        self.stats.evaluated += unique.shape[0]
        self.stats.naive_token_forwards += unique.shape[0] * len(self.seq)
        self.stats.seconds += time.perf_counter() - started
        return out[inverse]

    def __call__(self, masks, *, progress: bool = False) -> Tensor:
        """v(x_T) [M] float64 for masks [M, n] bool (or 1-D bit masks when n <= 62)."""
        return values_from_logprobs(self.logprobs(masks, progress=progress), eps=self.eps)

    def _trie(self, unique: Tensor) -> MaskTrie:
        bounds, order = segment_bounds(self.seq.owner, self.n)
        return build_trie(unique, order, bounds[1:-1], len(self.seq), self.max_tokens,
                          OVERHEAD_TOKENS.get(self.seq.input_ids.device.type, 16))

    def _share(self, trie: MaskTrie, unique: Tensor) -> float:
        return trie.token_forwards() / (unique.shape[0] * len(self.seq))

    def token_share(self, masks) -> float:
        """Token positions the prefix tree runs for `masks` [M, n] bool, as a share of those of independent
        forwards of their distinct masks (no forward is run); path="auto" runs them flat above
        TRIE_MAX_TOKEN_SHARE times the flat path's own share (1, or the kept tokens' under attention masking)."""
        unique = torch.unique(as_mask_matrix(masks, self.n), dim=0)
        return self._share(self._trie(unique), unique)

    def _flat_share(self, unique: Tensor) -> float:
        """The flat path's token positions as a share of full forwards: it runs the shared prefix once and skips
        the tokens attention hides."""
        return flat_token_share(self.model, self.seq, unique, self.prediction)

    def _auto_runs_flat(self, share: float, flat_share: float) -> bool:
        """The auto rule: path="auto" runs masks flat when the trie would run more than TRIE_MAX_TOKEN_SHARE of
        the flat path's token positions."""
        return self.path == "auto" and share > TRIE_MAX_TOKEN_SHARE * flat_share

    def planned_path(self, masks) -> str:
        """"flat" or "prefix_tree": the path this function takes for `masks` (no forward is run; a model without
        prefix-tree attention still falls back to flat when run)."""
        unique = torch.unique(as_mask_matrix(masks, self.n), dim=0)
        if self.path == "flat" or self._auto_runs_flat(self._share(self._trie(unique), unique),
                                                         self._flat_share(unique)):
            return "flat"
        return "prefix_tree"

    def _run(self, unique: Tensor, dims: ModelDims, head_chunk: int, advance) -> Tensor:
        if self.path in ("auto", "prefix_tree"):
            trie = self._trie(unique)
            # the trie sorts the distinct masks like torch.unique did (lexicographic in position order), but the
            # caller's player order may differ: map the trie's leaves back to the rows of `unique`
            leaf_of = trie.node_of[-1]
            rows = _rows_per_level(trie, dims, self.budget, self.max_tokens)
            share = self._share(trie, unique)
            flat_share = self._flat_share(unique)
            if self._auto_runs_flat(share, flat_share):
                self.stats.fallback = (f"the trie would run {share:.2f} of the tokens of independent forwards, the "
                                       f"flat path {flat_share:.2f}")
                return self._flat(unique, dims, head_chunk, advance)
            try:
                out = trie_logprobs(self.model, self.seq, self.target, self.prediction, trie, unique, rows, dims,
                                    head_chunk, self.stats, advance)
                self.stats.path = "prefix_tree"
                return out[leaf_of]
            except Unsupported as err:
                if self.path == "prefix_tree":
                    raise
                self.stats.fallback = str(err)
                warnings.warn(f"kdi_fast: {type(self.model).__name__} cannot use the prefix-tree attention ({err}); "
                              f"computing every masked input in full instead (slower)", stacklevel=4)
        return self._flat(unique, dims, head_chunk, advance)

    def _flat(self, unique: Tensor, dims: ModelDims, head_chunk: int, advance) -> Tensor:
        length = len(self.seq)
        per_mask = dims.forward_bytes(1, length, length)
        head = dims.head_chunk(self.budget) * dims.vocab * 4 * 3
        rows = max(1, min((self.budget - head) // per_mask if self.budget > head else 1, self.max_tokens // length))
        self.stats.path = "flat"
        return flat_logprobs(self.model, self.seq, self.target, self.prediction, unique, int(rows), head_chunk,
                             self.stats, advance)


def compute_values(model: nn.Module, tokenizer, prompt: str, masks, *, progress: bool = False,
                   **options) -> tuple[Tensor, ValueFunction]:
    """(v(x_T) [M] float64 for every mask T, the prepared ValueFunction with its players, y* and stats).

    masks: bool Tensor [M, n] (column i = player i present) or, for n <= 62, 1-D int64 bit masks. n is the
    number of columns; players are chosen as in compute_interactions (players=None: n_players = n, automatic)
    unless given. options: those of ValueFunction.prepare (target, players, max_target_tokens, masking,
    baseline, chat_template, memory_budget, eps, path, max_batch_tokens)."""
    tensor = torch.as_tensor(masks)
    if tensor.dim() == 2:
        options.setdefault("n_players", int(tensor.shape[1]))
    elif "players" not in options and "n_players" not in options:
        raise ValueError("1-D bit masks do not say how many players there are: pass n_players= or players=")
    function = ValueFunction.prepare(model, tokenizer, prompt, exact_players=True, **options)
    return function(masks, progress=progress), function
