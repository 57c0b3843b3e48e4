"""The one adapter between the study and the package's distillation API (kdi_fast.distill).

Every model of the study (the teacher with method "sft", every student) is trained by `train`, so that a change
of the distillation API (e.g. a Trainer-based kdi_fast.distill) is one edit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..distill.datasets import Example

__all__ = ["train"]


def train(student: nn.Module, tokenizer, examples: Sequence[Example], out_dir: str | Path, *,
          method: str, steps: int, batch_size: int, lr: float, seed: int, teacher: nn.Module | None = None,
          temperature: float = 1.0, teacher_noise: float = 0.0, cip_weight: float = 0.0, cip_m: int = 3, cip_batch_share: float = 1.0,
          warmup_steps: int = 0, teacher_logits_cache: dict | None = None,
          seqkd_cache: str | Path | None = None, validation: Sequence[Example] | None = None,
          max_length: int = 32, max_new_tokens: int = 8, checkpoint_every: int = 100) -> float:
    """Train `student` in place with kdi_fast.distill.distill; returns the seconds spent training.

    method: a kdi_fast.distill method (sft, kd, rkl, gkd, distillm, abkd, seqkd, ...); teacher: needed by every
    method but sft. seed: data order, sampling, teacher noise and CIP partitions (the student's initial weights
    are the caller's). cip_weight > 0 adds kdi_fast.losses.CIP (m groups, pad-embedding masking).
    max_length / max_new_tokens: tokens of prompt + response / of generated responses (the lab's defaults; the
    real tier's SmolLM2 tokens are longer); checkpoint_every: steps between resumable checkpoints.
    """
    from ..distill import DistillConfig, distill

    if teacher is None and method != "sft":
        raise ValueError(f"method {method!r} needs a teacher")
    config = DistillConfig(method=method, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           warmup_steps=warmup_steps, temperature=temperature, teacher_noise=teacher_noise,
                           cip_weight=cip_weight, cip_m=cip_m, cip_batch_share=cip_batch_share, cip_max_target_tokens=8, max_length=max_length,
                           max_new_tokens=max_new_tokens, checkpoint_every=checkpoint_every, validate_every=max(1, steps // 10))
    run = distill(teacher if teacher is not None else student, student, tokenizer, list(examples), out_dir, config,
                  validation_examples=validation, teacher_logits_cache=teacher_logits_cache,
                  seqkd_cache=seqkd_cache, progress=False)
    return float(run.seconds)
