"""Generating responses with model.generate: student samples (on-policy methods), the teacher's greedy
outputs (SeqKD, cached once on disk), and greedy outputs for the evaluation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .._extras import needs
from .._io import write_json_atomic
from .datasets import prompt_batch

__all__ = ["generate_responses", "cached_teacher_responses"]


@torch.no_grad()
def generate_responses(model, prompts: Sequence[Sequence[int]], *, pad_id: int, eot_id: int, max_new_tokens: int,
                       sample: bool, batch_size: int = 16, progress=None) -> list[tuple[int, ...]]:
    """Token ids of each prompt's continuation, cut after the first end-of-turn token (kept).

    sample=True draws from the model's distribution (temperature 1, no top-k/top-p) with torch's global RNG;
    sample=False is greedy. The model is put in eval mode for the call and restored afterwards.
    """
    with needs("models"):
        from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, top_k=0 if sample else None,
                              top_p=1.0 if sample else None, temperature=1.0 if sample else None,
                              pad_token_id=pad_id, eos_token_id=eot_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[int, ...]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = {k: v.to(device) for k, v in prompt_batch(prompts[start:start + batch_size], pad_id).items()}
            generated = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1]:]
            for row in generated.tolist():
                if eot_id in row:
                    row = row[:row.index(eot_id) + 1]
                out.append(tuple(row))
            if progress is not None:
                progress(len(batch["input_ids"]))
    finally:
        model.train(was_training)
    return out


def _cache_key(model, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> str:
    from .identity import model_digest

    digest = hashlib.sha256()
    digest.update(model_digest(model).encode())  # every weight: another teacher is another key
    digest.update(json.dumps([list(p) for p in prompts]).encode())
    digest.update(str(max_new_tokens).encode())
    return digest.hexdigest()


def cached_teacher_responses(teacher, prompts: Sequence[Sequence[int]], path: str | Path, *, pad_id: int,
                             eot_id: int, max_new_tokens: int, batch_size: int = 16, progress=None
                             ) -> tuple[list[tuple[int, ...]], bool]:
    """The teacher's greedy responses to `prompts`, generated once and kept in `path` (JSON, written atomically).

    The file records a key made of the digest of the teacher's weights, the prompts and
    max_new_tokens; a file with another key is regenerated. Returns (responses, reused_from_cache).
    """
    path = Path(path)
    key = _cache_key(teacher, prompts, max_new_tokens)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            import warnings

            warnings.warn(f"{path} is damaged: the teacher's responses are generated again", stacklevel=2)
            stored = {}
        if stored.get("key") == key:
            return [tuple(r) for r in stored["responses"]], True
    responses = generate_responses(teacher, prompts, pad_id=pad_id, eot_id=eot_id, max_new_tokens=max_new_tokens,
                                   sample=False, batch_size=batch_size, progress=progress)
    write_json_atomic(path, {"key": key, "max_new_tokens": max_new_tokens,
                             "responses": [list(r) for r in responses]}, indent=None)
    return responses, False
