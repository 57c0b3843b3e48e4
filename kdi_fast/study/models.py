"""The laboratory models: tiny Llama-architecture causal LMs built from configs (no download).

Sizes (parameters, with the 15-token vocabulary; embeddings tied):
  teacher   hidden 128, 4 layers, 4 heads, MLP 512   (1,051,648)
  student_m hidden 64, 2 layers, 4 heads, MLP 256   (the larger student, 132,352)
  student_s hidden 48, 2 layers, 4 heads, MLP 192   (the smaller student, 74,688)
"""

from __future__ import annotations

import torch

__all__ = ["SIZES", "make_model", "num_parameters"]

SIZES: dict[str, dict] = {
    "teacher": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "student_m": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "student_s": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192),
}


def make_model(size: str, tokenizer, *, seed: int):
    """A freshly initialised model of `size` (a key of SIZES), its weights drawn from `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=64, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **SIZES[size])
    config.name_or_path = f"lab-{size}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
