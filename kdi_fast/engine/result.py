"""InteractionResult: the values v(x_T) and interactions I_S of one prompt, with what they are about.

Saved as one safetensors file: the tensors (values, interactions, target_ids) plus every other field as JSON in
the file's metadata. Writing goes to a temporary file in the same directory, renamed over the target at the end,
so a file is either whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .. import ops
from .._extras import needs
from .._io import atomic_write, read_safetensors

_FORMAT = "kdi_fast.InteractionResult/1"
_JSON_FIELDS = ("prompt", "words", "players", "player_texts", "target_text", "model_name", "settings",
                "player_tokens", "input_ids", "stats", "max_order", "identity")


@dataclass
class InteractionResult:
    """Interactions of one prompt. Subsets are bit masks: bit i set = player i present.

    values [2^n] float64: v(x_T) for every T; interactions [2^n] float64: I_S (I_empty = v(x_empty)). With
    max_order=k (opt-in), only the subsets of at most k players, in the order of `masks` (kdi_fast.subsets).
    players: the word indices of each player; player_texts: their text; words: all words of the prompt.
    target_ids / target_text: y*. settings: how it was computed (masking, baseline, ...). player_tokens: the
    positions of each player's tokens in input_ids (the model input without the target). stats: cost figures.
    identity: what produced it (kdi_fast.engine.identity; set by the dataset runner, checked when it resumes).
    """

    prompt: str
    words: list[str]
    players: list[tuple[int, ...]]
    player_texts: list[str]
    target_text: str
    target_ids: list[int]
    values: Tensor
    interactions: Tensor
    model_name: str
    settings: dict
    player_tokens: list[tuple[int, ...]] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    max_order: int | None = None
    identity: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.players = [tuple(int(w) for w in p) for p in self.players]
        self.player_tokens = [tuple(int(t) for t in p) for p in self.player_tokens]
        if self.max_order is not None and self.max_order >= len(self.players):
            self.max_order = None
        size = ops.num_subsets(len(self.players), self.max_order)
        layout = "2^n" if self.max_order is None else f"sum_(j<={self.max_order}) C(n, j)"
        for name in ("values", "interactions"):
            tensor = getattr(self, name)
            if not isinstance(tensor, Tensor) or tensor.shape != (size,):
                raise ValueError(f"{name} must be a tensor of {layout} = {size} values for n = {len(self.players)} "
                                 f"players, got {getattr(tensor, 'shape', type(tensor).__name__)}")

    @property
    def n(self) -> int:
        """The number of players."""
        return len(self.players)

    @property
    def masks(self) -> Tensor:
        """The bit mask of the subset at each position of values/interactions: arange(2^n), or (max_order=k)
        kdi_fast.subsets(n, k), the subsets of at most k players."""
        return ops.subsets(self.n, self.max_order)

    def subset_texts(self, mask: int) -> tuple[str, ...]:
        """The player texts of the subset with bit mask `mask`."""
        return tuple(self.player_texts[i] for i in range(self.n) if mask >> i & 1)

    def top(self, k: int = 10) -> list[tuple[tuple[str, ...], float]]:
        """The k strongest interactions by |I_S| over non-empty S: (player texts of S, I_S), strongest first;
        equal |I_S| in ascending mask order (the smaller mask first, as kdi_fast.metrics ranks them)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        masks = self.masks
        by_mask = torch.argsort(masks[1:]) + 1  # position 0 is the empty set in both layouts
        ranked = by_mask[torch.sort(-self.interactions[by_mask].abs(), stable=True).indices][:k]
        return [(self.subset_texts(int(masks[s])), float(self.interactions[s])) for s in ranked]

    def matching_error(self) -> float:
        """max over T of |v(x_T) - sum_{S subset of T} I_S| (universal matching; ~1e-12 in float64)."""
        rebuilt = ops.zeta(self.interactions.double(), max_order=self.max_order)
        return float((self.values.double() - rebuilt).abs().max())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to `path` (a safetensors file) atomically; returns the path."""
        with needs("models"):
            from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {name: getattr(self, name) for name in _JSON_FIELDS}
        tensors = {"values": self.values.detach().double().cpu().contiguous(),
                   "interactions": self.interactions.detach().double().cpu().contiguous(),
                   "target_ids": torch.tensor(self.target_ids, dtype=torch.int64)}
        text = json.dumps(meta, ensure_ascii=False)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={
            "format": _FORMAT, "json": text, "sha256": _checksum(text, tensors)}))
        return path

    @staticmethod
    def stored_checksum(path: str | os.PathLike) -> str | None:
        """The checksum recorded in a result file (its header only; not verified), or None."""
        with needs("models"):
            from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("sha256")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InteractionResult":
        """Read a result written by save(); ValueError when its checksum does not match (a damaged file)."""
        path = Path(path)
        meta, tensors = read_safetensors(path, _FORMAT, "InteractionResult")
        if "sha256" in meta and _checksum(meta.get("json", ""), tensors) != meta["sha256"]:
            raise ValueError(f"{path} is damaged: its checksum does not match its contents; delete it (a resumed "
                             f"run computes it again)")
        fields = json.loads(meta["json"])
        return cls(values=tensors["values"], interactions=tensors["interactions"],
                   target_ids=tensors["target_ids"].tolist(), **fields)

    def __repr__(self) -> str:
        return (f"InteractionResult(n={self.n}, players={self.player_texts}, target={self.target_text!r}, "
                f"v(full)={float(self.values[-1]):.4g}, v(empty)={float(self.values[0]):.4g}, "
                f"model={self.model_name!r})")


def _checksum(json_text: str, tensors: dict[str, Tensor]) -> str:
    """sha256 over the JSON fields and every tensor (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256(json_text.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
