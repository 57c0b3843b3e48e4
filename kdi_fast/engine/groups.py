"""Players from token ids: which word each token belongs to, and seeded random partitions of words into m groups.

Words are the engine's (kdi_fast.engine.players): runs of letters/digits (with inner apostrophes or hyphens) or
runs of punctuation, found on the text of the tokens; a token belongs to the word its characters overlap, and
words that share a token are merged. Here the text comes from the token ids themselves (no prompt string, no
offsets: training batches only have ids), so that a prompt gets the same words from `word_ids` as from the
engine's `encode_prompt`. Tokens that are not players get word id -1: special tokens (BOS, chat-template
markers, padding), whitespace-only tokens, and tokens outside `player_mask`; a non-player token also separates
words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from .players import words_of_tokens


class TokenTable:
    """Per vocabulary id: its text (the token string as the tokenizer writes it) and whether it is special.

    Built once per tokenizer (a fraction of a second for 50k tokens) and cached by token_table().
    """

    def __init__(self, tokenizer):
        vocab = len(tokenizer)
        self.tokenizer = tokenizer
        self.tokens = tokenizer.convert_ids_to_tokens(list(range(vocab)))
        special = set(tokenizer.all_special_ids)
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        self.special = torch.zeros(vocab, dtype=torch.bool)
        self.special[[i for i in special if 0 <= i < vocab]] = True
        self.text = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in self.tokens]

    def spans(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """The text of a run of tokens and each token's character span in it.

        Fast path: the tokens' own texts concatenate to the run's text. Otherwise (a character split over
        several byte tokens) spans come from decoding growing prefixes; a token then spans the characters it
        completes, and every token of a split character overlaps it."""
        pieces = [self.text[i] for i in ids]
        text = "".join(pieces)
        tokens = [self.tokens[i] for i in ids]
        if text == self.tokenizer.convert_tokens_to_string(tokens):
            spans, at = [], 0
            for piece in pieces:
                spans.append((at, at + len(piece)))
                at += len(piece)
            return text, spans
        spans, previous = [], ""
        for i in range(len(ids)):
            current = self.tokenizer.convert_tokens_to_string(tokens[:i + 1])
            common = 0
            while common < min(len(previous), len(current)) and previous[common] == current[common]:
                common += 1
            spans.append((common, len(current)))
            previous = current
        for i in range(len(spans) - 2, -1, -1):  # a byte token that adds no character yet: the next one's first
            if spans[i][0] >= spans[i][1] and spans[i + 1][0] < spans[i + 1][1]:
                spans[i] = (spans[i + 1][0], spans[i + 1][0] + 1)
        return previous, spans


@lru_cache(maxsize=8)
def _table_for(tokenizer) -> TokenTable:
    return TokenTable(tokenizer)


def token_table(tokenizer) -> TokenTable:
    """The (cached) TokenTable of a Hugging Face tokenizer."""
    try:
        return _table_for(tokenizer)
    except TypeError:  # unhashable tokenizer: build it each time
        return TokenTable(tokenizer)


def _words_of_run(table: TokenTable, ids: list[int]) -> tuple[list[int], list[str]]:
    """Word index per token (-1: none) and the word texts, for a run of player tokens (engine rules)."""
    text, spans = table.spans(ids)
    word_of_token, word_spans = words_of_tokens(text, spans)
    return word_of_token, [text[a:b] for a, b in word_spans]


def _word_ids_and_texts(token_ids, tokenizer, player_mask) -> tuple[Tensor, list[str]]:
    ids = torch.as_tensor(token_ids, dtype=torch.int64)
    if ids.dim() != 1:
        raise ValueError(f"token_ids must be one sequence [T], got shape {tuple(ids.shape)}")
    allowed = torch.ones_like(ids, dtype=torch.bool) if player_mask is None else player_mask.to(ids.device).bool()
    if allowed.shape != ids.shape:
        raise ValueError(f"player_mask has shape {tuple(allowed.shape)}, token_ids {tuple(ids.shape)}")
    if tokenizer is None:
        out = torch.cumsum(allowed.long(), 0) - 1
        out = torch.where(allowed, out, torch.full_like(out, -1))
        return out, [str(int(t)) for t in ids[allowed]]
    table = token_table(tokenizer)
    if ids.numel() and (ids.min() < 0 or ids.max() >= table.special.numel()):
        raise ValueError(f"token ids must lie in [0, {table.special.numel()}) for this tokenizer")
    allowed = (allowed.cpu() & ~table.special[ids.cpu()]).tolist()
    flat = ids.tolist()
    out, texts, t = [-1] * len(flat), [], 0
    while t < len(flat):  # runs of player tokens; anything else separates words
        if not allowed[t]:
            t += 1
            continue
        end = t
        while end < len(flat) and allowed[end]:
            end += 1
        word_of, run_texts = _words_of_run(table, flat[t:end])
        out[t:end] = [w + len(texts) if w >= 0 else -1 for w in word_of]
        texts += run_texts
        t = end
    return torch.tensor(out, dtype=torch.int64, device=ids.device), texts


def word_ids(token_ids: Sequence[int] | Tensor, tokenizer=None, *, player_mask: Tensor | None = None) -> Tensor:
    """Per token, the index of the word it belongs to (0, 1, ...), or -1 for tokens that are not players.

    token_ids [T]; tokenizer: a Hugging Face tokenizer, or None to make every token its own word;
    player_mask [T] bool (optional): tokens outside it are never players (e.g. the chat template around a
    user message, or the answer part). Returns int64 [T] on the device of token_ids.
    """
    return _word_ids_and_texts(token_ids, tokenizer, player_mask)[0]


def words(token_ids: Sequence[int] | Tensor, tokenizer, *, player_mask: Tensor | None = None) -> list[str]:
    """The text of each word that word_ids() finds."""
    return _word_ids_and_texts(token_ids, tokenizer, player_mask)[1]


def partition_seed(seed: int, *parts: int | Sequence[int] | Tensor) -> int:
    """A 63-bit seed mixed stably (same in every process) from a base seed and ints / id sequences."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    for part in parts:
        data = torch.as_tensor(part, dtype=torch.int64).reshape(-1).cpu().numpy().tobytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little") >> 1


def random_groups(n_words: int, m: int, *, seed: int | None = None,
                  generator: torch.Generator | None = None) -> list[list[int]]:
    """Partition the words 0..n_words-1 at random into min(m, n_words) non-empty disjoint groups.

    A uniformly random permutation is cut into groups of sizes floor or ceil(n/m) (balanced). Seeded by `seed`
    or drawn from `generator`. Each group is a sorted list of word indices; groups are ordered by first word.
    """
    if n_words < 0 or m < 1:
        raise ValueError(f"need n_words >= 0 and m >= 1, got n_words={n_words}, m={m}")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    k = min(m, n_words)
    perm = torch.randperm(n_words, generator=generator).tolist()
    groups = [sorted(perm[(i * n_words) // k:((i + 1) * n_words) // k]) for i in range(k)]
    return sorted(groups)


def player_of_token(word_of_token: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """Per token, the index of the group (player) holding its word, or -1. word_of_token [T] from word_ids()."""
    n_words = int(word_of_token.max()) + 1 if word_of_token.numel() else 0
    lookup = torch.full((max(n_words, 1),), -1, dtype=torch.int64)
    for player, group in enumerate(groups):
        lookup[list(group)] = player
    out = lookup.to(word_of_token.device)[word_of_token.clamp(min=0)]
    return torch.where(word_of_token >= 0, out, torch.full_like(out, -1))
