"""Words of a prompt, and the players: single words or groups of words, chosen explicitly or automatically.

Words. A word is a run of letters/digits (with inner apostrophes or hyphens: "O'Neil's", "home-town") or a run
of punctuation ("?", "..."), found by a regular expression on the prompt text read as grapheme clusters (what a
reader sees as one character: a letter with its combining accents, an emoji with its modifiers). A cluster counts
by its first character, so a decomposed accent (NFD "e" + U+0301) stays in its word whether the text is NFC or
NFD, and a cluster that starts with a mark or a format character (a byte-order mark, a zero-width space, a lone
combining accent) belongs to no word, like whitespace. The text itself is never changed: the model sees it as
given. Each token of the model input belongs to the word its character span (the tokenizer's offsets) overlaps;
whitespace-only and special tokens belong to no word. Words that share a token are merged into one, so that
every word can be masked on its own. A word may span several tokens.

Players. Explicit: a list of word indices (each a one-word player) or of groups (lists of word indices). Bit i
of a mask is player i, in the order given. Automatic (players=None) with n wanted:
  1. a prompt of at most n words: every word is a player;
  2. otherwise the content words (not punctuation, not in STOP_WORDS, case-insensitive) are the candidates;
     if there are more than n, n of them are taken evenly spread: the middle one of each of n equal runs
     (candidate floor((i + 1/2) m / n) for i < n, m candidates);
  3. if there are fewer than n, the rest is filled the same way from the stop words, then from punctuation.
  Players are then in prompt order. Words without tokens are never chosen; with masking="attention" the word
  holding the last prompt token is not chosen either (that token predicts y*_1 and must stay visible).
"""

from __future__ import annotations

import bisect
import functools
import math
import numbers
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

MAX_PLAYERS = 16
"""Largest number of players for exact extraction of every interaction (2^16 = 65,536 masked forwards)."""
MAX_MASKS = 1 << MAX_PLAYERS
"""Largest number of masked forwards per prompt (also with max_order, which evaluates fewer masks)."""

_WORD_CLUSTER = r"(?=[\p{L}\p{N}_])\X"  # a grapheme cluster that starts with a letter, digit or underscore
_PUNCT_CLUSTER = r"(?=[^\p{L}\p{N}_\s\p{M}\p{C}])\X"  # one that starts with punctuation or a symbol
_WORD_PATTERN = rf"(?:{_WORD_CLUSTER})+(?:['\u2019\-](?:{_WORD_CLUSTER})+)*|(?:{_PUNCT_CLUSTER})+"


@functools.cache
def _word_regex():
    """The word pattern, compiled with the `regex` package (grapheme clusters \\X; a dependency of transformers)."""
    try:
        import regex
    except ImportError:
        raise ImportError("splitting prompts into words needs the `regex` package (installed with transformers): "
                          "pip install regex") from None
    return regex.compile(_WORD_PATTERN)

STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below between
both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for from
further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his
how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my myself no nor
not of off on once only or other ought our ours ourselves out over own same shan't she she'd she'll she's should
shouldn't so some such than that that's the their theirs them themselves then there there's these they they'd
they'll they're they've this those through to too under until up very was wasn't we we'd we'll we're we've were
weren't what what's when when's where where's which while who who's whom why why's will with won't would
wouldn't you you'd you'll you're you've your yours yourself yourselves
""".split())
"""English stop words skipped by the automatic choice (the common NLTK/Snowball list)."""


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model sees it, with its words.

    input_ids: the tokens of the model input (the chat template applied when asked), without the target.
    words: the words of the prompt text; word_spans: their character spans [start, end) in the prompt.
    word_of_token: per input token, the index of its word, or -1 (whitespace, template and special tokens).
    """

    prompt: str
    input_ids: tuple[int, ...]
    words: tuple[str, ...]
    word_spans: tuple[tuple[int, int], ...]
    word_of_token: tuple[int, ...]

    def tokens_of_word(self, word: int) -> list[int]:
        """The positions (in input_ids) of the tokens of `word`."""
        return [t for t, w in enumerate(self.word_of_token) if w == word]


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the words of `text` (before merging words that share a token)."""
    return [m.span() for m in _word_regex().finditer(text)]


def words_of_tokens(text: str, offsets: Sequence[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """(word index per token, word spans): the words of `text` (split_words), with words that share a token merged
    into one, and for each token (character span [a, b) in `text`) the word it belongs to, or -1 when it covers no
    word character (spaces, special tokens, spans outside the text)."""
    spans = split_words(text)
    starts = [s for s, _ in spans]
    # Which raw words each token overlaps (spans are sorted and disjoint).
    token_words: list[list[int]] = []
    for a, b in offsets:
        if b <= a or b <= 0 or a >= len(text):
            token_words.append([])
            continue
        hits, w = [], max(bisect.bisect_right(starts, a) - 1, 0)
        while w < len(spans) and spans[w][0] < b:
            if spans[w][1] > a:
                hits.append(w)
            w += 1
        token_words.append(hits)
    # Merge raw words that share a token: join[w] links raw word w with w + 1 (hits are consecutive words).
    join = [False] * len(spans)
    for hits in token_words:
        for w in hits[:-1]:
            join[w] = True
    merged_of_raw, merged_spans = [], []
    for w, (start, end) in enumerate(spans):
        if w > 0 and join[w - 1]:
            merged_spans[-1][1] = end
        else:
            merged_spans.append([start, end])
        merged_of_raw.append(len(merged_spans) - 1)
    word_of_token = [merged_of_raw[hits[0]] if hits else -1 for hits in token_words]
    return word_of_token, [(start, end) for start, end in merged_spans]


def encode_prompt(tokenizer, prompt: str, *, chat_template: bool = False) -> EncodedPrompt:
    """Tokenize `prompt` (as a user message of the chat template when asked) and map tokens to words."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("a prompt is empty: give at least one word")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} gives no character offsets; the engine needs a fast (Rust) "
                        f"tokenizer: load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True, but the tokenizer has no chat template; pass chat_template=False")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        shift = text.find(prompt)
        if shift < 0:
            raise ValueError("the chat template rewrites the prompt text, so its words cannot be located; "
                             "pass chat_template=False (or apply the template to the prompt yourself)")
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        shift = 0
        encoding = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = [(a - shift, b - shift) for a, b in encoding["offset_mapping"]]

    word_of_token, word_spans = words_of_tokens(prompt, offsets)
    return EncodedPrompt(prompt=prompt, input_ids=tuple(ids), words=tuple(prompt[s:e] for s, e in word_spans),
                         word_spans=tuple(word_spans), word_of_token=tuple(word_of_token))


def is_punctuation(word: str) -> bool:
    """True for a word with no letter or digit."""
    return not any(c.isalnum() for c in word)


def _spread(candidates: list[int], k: int) -> list[int]:
    """k of the candidates, evenly spread: the middle one of each of k equal runs."""
    m = len(candidates)
    if k >= m:
        return list(candidates)
    return [candidates[(2 * i + 1) * m // (2 * k)] for i in range(k)]


def choose_players(encoded: EncodedPrompt, n: int, *, keep_last_token: bool = False) -> list[tuple[int, ...]]:
    """The automatic choice of up to n one-word players (the rule in the module docstring)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_players must be a positive int, got {n!r}")
    with_tokens = set(w for w in encoded.word_of_token if w >= 0)
    if keep_last_token and encoded.word_of_token and encoded.word_of_token[-1] >= 0:
        with_tokens.discard(encoded.word_of_token[-1])
    usable = [w for w in range(len(encoded.words)) if w in with_tokens]
    if len(usable) <= n:
        return [(w,) for w in usable]
    content, stop, punct = [], [], []
    for w in usable:
        word = encoded.words[w]
        if is_punctuation(word):
            punct.append(w)
        elif unicodedata.normalize("NFC", word).lower().replace("\u2019", "'") in STOP_WORDS:
            stop.append(w)
        else:
            content.append(w)
    chosen: list[int] = []
    for pool in (content, stop, punct):
        chosen += _spread(pool, n - len(chosen))
    return [(w,) for w in sorted(chosen)]


def resolve_players(encoded: EncodedPrompt, spec, n_players: int, *, keep_last_token: bool = False,
                    max_order: int | None = None, all_masks: bool = True) -> list[tuple[int, ...]]:
    """Validate explicit players (word indices or groups of them), or choose them automatically (spec=None).

    Raises ValueError for an index out of range, a word used twice, an empty group, a word without tokens,
    more than MAX_MASKS masks to evaluate (more than MAX_PLAYERS players, unless max_order=k keeps only the
    subsets of at most k players; all_masks=False: the caller evaluates a chosen set of masks, so any number of
    players), and (keep_last_token) a player holding the last prompt token.
    """
    if spec is None:
        players = choose_players(encoded, n_players, keep_last_token=keep_last_token)
        if not players:
            raise ValueError(f"the prompt {encoded.prompt!r} has no word that can be a player")
    else:
        if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
            raise TypeError(f"players of a prompt must be a list of word indices or of groups of word indices, "
                            f"got {spec!r}")
        players = []
        for item in spec:
            group = (item,) if _is_index(item) else tuple(item) if hasattr(item, "__iter__") else None
            if group is None or not all(_is_index(w) for w in group):
                raise TypeError(f"a player must be a word index (int) or a group (list of ints), got {item!r}")
            if not group:
                raise ValueError("a player group is empty: every group needs at least one word index")
            players.append(tuple(int(w) for w in group))
        if not players:
            raise ValueError("the list of players is empty: give at least one word index, or None for automatic")
    count = len(encoded.words)
    seen: dict[int, int] = {}
    for p, group in enumerate(players):
        for w in group:
            if not 0 <= w < count:
                raise ValueError(f"word index {w} is out of range: the prompt has {count} words (0..{count - 1}): "
                                 f"{list(encoded.words)}")
            if w in seen:
                raise ValueError(f"word {w} ({encoded.words[w]!r}) is in two players ({seen[w]} and {p}); each word "
                                 f"may belong to one player only")
            seen[w] = p
            if not encoded.tokens_of_word(w):
                raise ValueError(f"word {w} ({encoded.words[w]!r}) has no tokens in the tokenized prompt (the "
                                 f"tokenizer drops it), so masking it changes nothing; choose other words")
    n = len(players)
    if not all_masks:
        pass
    elif max_order is None or max_order >= n:
        if n > MAX_PLAYERS:
            raise ValueError(
                f"{n} players need 2^{n} = {1 << n:,} masked forwards per prompt; exact extraction supports at most "
                f"{MAX_PLAYERS} players. Group words into at most {MAX_PLAYERS} players (players=[[0, 1], [2, 3], "
                f"...]), choose fewer (n_players), or pass max_order=k to evaluate only the subsets of at most k "
                f"players")
    else:
        masks = sum(math.comb(n, j) for j in range(max_order + 1))
        if n > 62 or masks > MAX_MASKS:
            raise ValueError(
                f"{n} players with max_order={max_order} need {masks:,} masked forwards per prompt, more than "
                f"{MAX_MASKS:,}; lower max_order, or group words into fewer players")
    if keep_last_token and encoded.word_of_token[-1] in seen:
        w = encoded.word_of_token[-1]
        raise ValueError(f"with masking='attention' the last prompt token predicts the first target token and cannot "
                         f"be removed, but it belongs to word {w} ({encoded.words[w]!r}) of player {seen[w]}; choose "
                         f"other words, use masking='embedding' or 'token', or chat_template=True")
    return players


def _is_index(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def player_of_token(encoded: EncodedPrompt, players: list[tuple[int, ...]]) -> list[int]:
    """Per input token, the index of its player, or -1."""
    owner = {w: p for p, group in enumerate(players) for w in group}
    return [owner.get(w, -1) if w >= 0 else -1 for w in encoded.word_of_token]


def player_texts(encoded: EncodedPrompt, players: list[tuple[int, ...]]) -> list[str]:
    """A readable text per player: its words joined by spaces (groups in word order, with "..." across gaps)."""
    texts = []
    for group in players:
        parts, previous = [], None
        for w in sorted(group):
            if previous is not None and w != previous + 1:
                parts.append("...")
            parts.append(encoded.words[w])
            previous = w
        texts.append(" ".join(parts))
    return texts
