"""Readable names of players and subsets, shared by the figures and the Markdown report."""

from __future__ import annotations

from ..metrics.interaction import normalise

__all__ = ["player_names", "subset_label"]


def player_names(result) -> list[str]:
    """A readable name per player: its text, with the word index appended when two players read the same
    ("a[2]", "a[10]"); player numbers when the result has no texts."""
    n = normalise(result).shape[-1].bit_length() - 1
    texts = list(getattr(result, "player_texts", None) or [str(i) for i in range(n)])
    players = list(getattr(result, "players", None) or [(i,) for i in range(n)])
    repeated = {t for t in texts if texts.count(t) > 1}
    return [f"{t}[{p[0]}]" if t in repeated and p else t for t, p in zip(texts, players)]


def subset_label(names: list[str], mask: int) -> str:
    """'{green, hand}' for the players in the bit mask."""
    return "{" + ", ".join(name for i, name in enumerate(names) if mask >> i & 1) + "}"
