"""DistiLLM's adaptive off-policy use of student-generated outputs (SGO): a schedule that decides how often a
batch trains on the student's own samples, and a replay buffer that lets generated samples be reused.

Ko et al. (DistiLLM, 2024) start with no SGO, raise the SGO probability whenever the validation loss stops
improving (so on-policy data comes in when the student starts to drift), and reuse generated SGO from a
replay buffer instead of sampling afresh every time. The constants below (increment, cap, replay ratio,
capacity) are this package's defaults, not the paper's.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

from .datasets import TokenizedExample

__all__ = ["AdaptiveSGOSchedule", "ReplayBuffer"]


class AdaptiveSGOSchedule:
    """p(SGO) starts at `initial`; each validation loss above the previous one adds `increment`, up to `max_prob`."""

    def __init__(self, *, initial: float = 0.0, increment: float = 0.2, max_prob: float = 0.8):
        if not 0.0 <= initial <= max_prob <= 1.0 or increment < 0:
            raise ValueError(f"need 0 <= initial <= max_prob <= 1 and increment >= 0, got initial={initial}, "
                             f"max_prob={max_prob}, increment={increment}")
        self.prob = initial
        self.increment = increment
        self.max_prob = max_prob
        self.last_loss: float | None = None

    def update(self, validation_loss: float) -> float:
        """Record a validation loss; raise the probability if it went up. Returns the new probability."""
        if self.last_loss is not None and validation_loss > self.last_loss:
            self.prob = min(self.max_prob, self.prob + self.increment)
        self.last_loss = float(validation_loss)
        return self.prob

    def state_dict(self) -> dict:
        return {"prob": self.prob, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.prob, self.last_loss = float(state["prob"]), state["last_loss"]


class ReplayBuffer:
    """A first-in-first-out store of generated (prompt, response) samples, at most `capacity` of them."""

    def __init__(self, capacity: int = 256):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._items: deque[TokenizedExample] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Sequence[TokenizedExample]) -> None:
        self._items.extend(items)

    def sample(self, count: int, rng: random.Random) -> list[TokenizedExample]:
        """`count` distinct items drawn uniformly with `rng` (ValueError if fewer are stored)."""
        if count > len(self._items):
            raise ValueError(f"the replay buffer holds {len(self._items)} samples, {count} were asked for")
        return [self._items[i] for i in rng.sample(range(len(self._items)), count)]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity,
                "items": [[list(it.prompt_ids), list(it.response_ids), it.content] for it in self._items]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self._items = deque((TokenizedExample(tuple(p), tuple(r), None if c is None else tuple(c))
                             for p, r, c in state["items"]), maxlen=self.capacity)
