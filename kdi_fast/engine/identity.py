"""The identity of a result: everything that determines it, so that a stored result is reused only when all of it
matches (kdi_fast.engine.runner), and what differs can be named when it does not.

    identity = {"model": {"name", "dtype", "weights_sha256"}, "tokenizer": {"sha256"}, "settings": {...},
                "like": {"dir", "result_sha256"} | None, "prompt": {"id", "prompt", "target", "players"}}

weights_sha256 is over the model's tensors as loaded (parameters and buffers: name, dtype, shape, bytes; a tensor
shared by two names, such as tied embeddings, once), so it also covers in-memory models such as a layers:K
student and changes with the dtype. The tokenizer's digest is over its full serialisation (vocabulary, merges,
normaliser, pre-tokeniser, post-processor, added tokens), its special tokens and its chat template.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["run_identity", "prompt_identity", "weights_sha256", "tokenizer_sha256", "differences", "check_reuse"]


def run_identity(model, tokenizer, settings: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
    """The part of an identity every prompt of a run shares: model (name, dtype, weights digest), tokenizer
    digest and the settings (JSON-normalised, so that a stored identity compares equal)."""
    config = getattr(model, "config", None)
    name = str(model_name or getattr(config, "name_or_path", "") or type(model).__name__)
    dtype = next((p.dtype for p in model.parameters()), None) if hasattr(model, "parameters") else None
    return json.loads(json.dumps({
        "model": {"name": name, "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
                  "weights_sha256": weights_sha256(model) if hasattr(model, "state_dict") else None},
        "tokenizer": {"sha256": tokenizer_sha256(tokenizer)},
        "settings": settings,
    }))


def prompt_identity(run: dict[str, Any], record, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result's identity: the run's, the prompt record (id, prompt, target, players) and the reference result
    it reuses (like: {"dir", "result_sha256"}), JSON-normalised."""
    prompt = {"id": record.id, "prompt": record.prompt, "target": record.target, "players": record.players}
    return json.loads(json.dumps({**run, "like": like, "prompt": prompt}))


def check_reuse(out_dir, conflicts: dict[str, list[str]]) -> None:
    """Raise the one-line error for stored results of another identity ({id: differences})."""
    if conflicts:
        first, diffs = next(iter(conflicts.items()))
        raise ValueError(f"{out_dir} holds {len(conflicts)} result(s) computed otherwise than asked now (prompt "
                         f"{first!r}: {'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}). Use another --out "
                         f"directory, the same model and settings to resume, or --overwrite to recompute everything.")


def weights_sha256(model) -> str:
    """sha256 over the model's state_dict (sorted names; each storage's bytes once)."""
    import torch

    digest = hashlib.sha256()
    seen: dict[tuple, str] = {}
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        if key in seen:
            digest.update(f"same as {seen[key]}|".encode())
            continue
        seen[key] = name
        flat = tensor.reshape(-1).contiguous().cpu()
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))  # the tensor's own bytes, not a copy
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """sha256 over what makes a tokenizer encode as it does."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "backend": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "class": type(tokenizer).__name__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two identities, as 'settings.masking: 'embedding' -> 'token'' (digests shortened)."""
    out = []
    for key in sorted(set(stored) | set(wanted), key=str):
        a, b = stored.get(key), wanted.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
