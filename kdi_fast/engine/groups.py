"""Players from tokens: which word each token belongs to, and seeded random partitions of words into m groups.

Words are whitespace-delimited, as in `text.split()`: a token starts a new word when its text begins with
whitespace (GPT-2/SentencePiece markers "Ġ"/"▁" included) or when the token before it is not a player.
Tokens that are not players get word id -1: special tokens (BOS, chat-template markers, padding) and tokens
that are only whitespace (" ", "\\n"). Punctuation stays with its word ("world!" is one word).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

_WORD_START_MARKERS = ("Ġ", "▁", "Ċ")


class TokenTable:
    """Per vocabulary id: does the token start a word, is it a non-player (special or whitespace only)?

    Built once per tokenizer (a fraction of a second for 50k tokens); word_ids() then works on tensors.
    """

    def __init__(self, tokenizer):
        vocab = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(vocab)))
        special = set(tokenizer.all_special_ids)
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        starts, skip = torch.zeros(vocab, dtype=torch.bool), torch.zeros(vocab, dtype=torch.bool)
        for i, piece in enumerate(pieces):
            if piece is None or i in special:
                skip[i] = True
                continue
            text = tokenizer.convert_tokens_to_string([piece])
            if not text.strip():
                skip[i] = True
            elif text[:1].isspace() or piece.startswith(_WORD_START_MARKERS):
                starts[i] = True
        self.starts_word = starts
        self.non_player = skip


@lru_cache(maxsize=8)
def _table_for(tokenizer) -> TokenTable:
    return TokenTable(tokenizer)


def token_table(tokenizer) -> TokenTable:
    """The (cached) TokenTable of a Hugging Face tokenizer."""
    try:
        return _table_for(tokenizer)
    except TypeError:  # unhashable tokenizer: build it each time
        return TokenTable(tokenizer)


def word_ids(token_ids: Sequence[int] | Tensor, tokenizer=None, *, player_mask: Tensor | None = None) -> Tensor:
    """Per token, the index of the word it belongs to (0, 1, ...), or -1 for tokens that are not players.

    token_ids [T]; tokenizer: a Hugging Face tokenizer, or None to make every token its own word;
    player_mask [T] bool (optional): tokens outside it are never players (e.g. the chat template around a
    user message, or the answer part). Returns int64 [T] on the device of token_ids.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.int64)
    if ids.dim() != 1:
        raise ValueError(f"token_ids must be one sequence [T], got shape {tuple(ids.shape)}")
    allowed = torch.ones_like(ids, dtype=torch.bool) if player_mask is None else player_mask.to(ids.device).bool()
    if allowed.shape != ids.shape:
        raise ValueError(f"player_mask has shape {tuple(allowed.shape)}, token_ids {tuple(ids.shape)}")
    if tokenizer is None:
        starts = torch.ones_like(allowed)
    else:
        table = token_table(tokenizer)
        if ids.numel() and (ids.min() < 0 or ids.max() >= table.starts_word.numel()):
            raise ValueError(f"token ids must lie in [0, {table.starts_word.numel()}) for this tokenizer")
        cpu = ids.cpu()
        allowed = allowed & ~table.non_player[cpu].to(ids.device)
        starts = table.starts_word[cpu].to(ids.device)
    previous_allowed = torch.cat([allowed.new_zeros(1), allowed[:-1]])
    new_word = allowed & (starts | ~previous_allowed)
    ids_out = torch.cumsum(new_word.long(), 0) - 1
    return torch.where(allowed, ids_out, torch.full_like(ids_out, -1))


def words(token_ids: Sequence[int] | Tensor, tokenizer, *, player_mask: Tensor | None = None) -> list[str]:
    """The text of each word that word_ids() finds (stripped of surrounding whitespace)."""
    ids = torch.as_tensor(token_ids, dtype=torch.int64)
    wid = word_ids(ids, tokenizer, player_mask=player_mask)
    count = int(wid.max()) + 1 if wid.numel() else 0
    return [tokenizer.decode(ids[wid == w].tolist()).strip() for w in range(count)]


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
