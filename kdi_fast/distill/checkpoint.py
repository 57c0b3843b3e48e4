"""Training checkpoints: one file holding everything a run needs to continue exactly where it stopped.

The state (student weights, optimizer, scheduler, RNG states, step, data position, replay buffer, SGO
schedule, the run's configuration) is written to a temporary file next to the target and renamed over it,
so a kill at any moment leaves either the previous checkpoint or the new one, never a partial file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from .._io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save(state) to `path` atomically (temporary file in the same folder, fsync, rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def load_checkpoint(path: str | Path) -> dict | None:
    """The state saved at `path`, or None when there is no checkpoint yet."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state(python_rng: random.Random, noise_generator: torch.Generator) -> dict:
    """The random states a run depends on: torch's global (model.generate samples with it), the run's own."""
    state = {"torch": torch.get_rng_state(), "python": python_rng.getstate(), "noise": noise_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, python_rng: random.Random, noise_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    python_rng.setstate(state["python"])
    noise_generator.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
