"""SparseInteractionResult: the recovered non-zero Harsanyi interactions I_S of one prompt (sparse recovery).

Unlike InteractionResult (v and I over all 2^n subsets), it holds only the recovered subsets (tuples of player
indices, the empty set first) and their I_S, with the held-out R^2 that says how well sum_{S subset of T} I_S
reproduces v(x_T) on fresh uniformly random masks. Saved as one safetensors file like InteractionResult.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .._io import atomic_write, read_safetensors

_FORMAT = "kdi_fast.SparseInteractionResult/1"
_JSON_FIELDS = ("prompt", "words", "players", "player_texts", "target_text", "model_name", "settings", "stats",
                "subsets", "r2_held_out")


@dataclass
class SparseInteractionResult:
    """Recovered interactions of one prompt: subsets [K] (tuples of player indices, sorted by order then index;
    the empty set () first) and interactions [K] float64 (I_S; I_empty = the fitted v(x_empty)).

    r2_held_out: R^2 of the reconstructed v on settings["held_out_masks"] uniformly random masks that were not
    used for fitting (counted in the budget). stats: masks, token positions, seconds, solver figures."""

    prompt: str
    words: list[str]
    players: list[tuple[int, ...]]
    player_texts: list[str]
    target_text: str
    target_ids: list[int]
    subsets: list[tuple[int, ...]]
    interactions: Tensor
    r2_held_out: float
    model_name: str
    settings: dict
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.players = [tuple(int(w) for w in p) for p in self.players]
        self.subsets = [tuple(int(i) for i in s) for s in self.subsets]
        if not isinstance(self.interactions, Tensor) or self.interactions.shape != (len(self.subsets),):
            raise ValueError(f"interactions must be a tensor of one value per subset ({len(self.subsets)}), got "
                             f"{getattr(self.interactions, 'shape', type(self.interactions).__name__)}")
        n = len(self.players)
        if any(i < 0 or i >= n for s in self.subsets for i in s):
            raise ValueError(f"a subset names a player outside 0..{n - 1}")

    @property
    def n(self) -> int:
        return len(self.players)

    @property
    def orders(self) -> Tensor:
        """|S| of each recovered subset [K]."""
        return torch.tensor([len(s) for s in self.subsets], dtype=torch.int64)

    def as_dict(self) -> dict[tuple[int, ...], float]:
        return dict(zip(self.subsets, self.interactions.tolist()))

    def subset_texts(self, subset: tuple[int, ...]) -> tuple[str, ...]:
        return tuple(self.player_texts[i] for i in subset)

    def top(self, k: int = 10) -> list[tuple[tuple[str, ...], float]]:
        """The k strongest recovered interactions by |I_S| over non-empty S: (player texts, I_S)."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        ranked = sorted((i for i, s in enumerate(self.subsets) if s), key=lambda i: -abs(float(self.interactions[i])))
        return [(self.subset_texts(self.subsets[i]), float(self.interactions[i])) for i in ranked[:k]]

    def predict(self, masks: Tensor) -> Tensor:
        """The reconstructed v(x_T) = sum_{recovered S subset of T} I_S for masks [M, n] bool -> [M] float64."""
        from .sparse import predict

        return predict(self.subsets, self.interactions, masks)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `path` (safetensors) atomically; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {name: getattr(self, name) for name in _JSON_FIELDS}
        tensors = {"interactions": self.interactions.detach().double().cpu().contiguous(),
                   "target_ids": torch.tensor(self.target_ids, dtype=torch.int64)}
        atomic_write(path, lambda tmp: save_file(
            tensors, str(tmp), metadata={"format": _FORMAT, "json": json.dumps(meta, ensure_ascii=False)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SparseInteractionResult":
        meta, tensors = read_safetensors(Path(path), _FORMAT, "SparseInteractionResult")
        fields = json.loads(meta["json"])
        return cls(interactions=tensors["interactions"], target_ids=tensors["target_ids"].tolist(), **fields)

    def __repr__(self) -> str:
        return (f"SparseInteractionResult(n={self.n}, recovered={len(self.subsets)}, "
                f"r2_held_out={self.r2_held_out:.3f}, target={self.target_text!r}, model={self.model_name!r})")
