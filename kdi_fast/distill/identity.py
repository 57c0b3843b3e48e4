"""A run's identity: digests of the models' weights and of the data, with the settings (run.json, checkpoints).

A run or checkpoint in --out is reused only when its identity equals the new run's; otherwise the run is refused
with the fields that differ (or started afresh under --overwrite).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["model_digest", "examples_digest", "differences"]


def model_digest(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes), in name order; the same for the same weights
    wherever they were loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def examples_digest(examples: Sequence) -> str:
    """sha256 over the examples' ids, prompts and responses (in order)."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.id, e.prompt, e.response], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two identity dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out
