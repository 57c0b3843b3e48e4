"""DistillConfig: every setting of a distillation run (saved in run.json and in every checkpoint's identity).

Batch sizes are per process, as in transformers.TrainingArguments: one optimizer step consumes
batch_size * grad_accum * processes examples (the global batch). Numeric settings are checked when the config is
built: finite, in range, with a one-line message naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .methods import get_method

__all__ = ["DistillConfig", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "fp16")

# Settings that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoint", "save_total_limit", "report_to", "logging_steps")


@dataclass
class DistillConfig:
    """Everything that determines a distillation run."""

    method: str = "kd"
    steps: int | None = None  # total optimizer steps; None: from epochs
    epochs: float | None = None  # passes over the training data (used when steps is None; default 1)
    batch_size: int = 4  # examples per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (the loss is normalised by the step's token count)
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at the last step
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    t2_scaling: bool = True  # multiply KD losses by T^2 (Hinton) so their gradients keep their scale
    teacher_noise: float = 0.0  # std of Gaussian noise on the teacher's logits (seed 001)
    max_length: int = 256  # prompt + response tokens
    max_new_tokens: int = 64  # generated response length (on-policy samples, SeqKD, evaluation)
    seed: int = 0
    precision: str = "fp32"  # "bf16" | "fp16": mixed precision (autocast) where the device supports it
    gradient_checkpointing: bool = False
    cip_weight: float = 0.0  # weight of the Complex Interaction Penalty; 0 = off
    cip_m: int = 3  # CIP: number of random word groups (2^m masked forwards)
    cip_max_target_tokens: int = 16  # CIP: response tokens whose log-probs define v (masked inputs cut after them)
    cip_batch_share: float = 1.0  # CIP: share of each batch's prompts it is computed on
    student_share: float = 0.5  # gkd: probability that a step uses student samples (GKD's lambda)
    jsd_beta: float = 0.5  # gkd: beta of the generalised JSD
    skew_alpha: float = 0.1  # distillm: alpha of the skewed KL
    ab_alpha: float = 0.2  # abkd: alpha and beta of the alpha-beta divergence
    ab_beta: float = 0.7
    validate_every: int = 10  # distillm: steps between validation losses that drive the SGO schedule
    sgo_initial: float = 0.0  # distillm: SGO probability at the start (DistiLLM starts with none)
    sgo_increment: float = 0.2
    sgo_max_prob: float = 0.8
    replay_ratio: float = 0.5  # distillm: share of SGO batches drawn from the replay buffer once it is full enough
    replay_capacity: int = 256
    minillm_teacher_mix: float = 0.2  # minillm: alpha of the teacher-mixed sampling p~ = a p + (1 - a) q
    minillm_clip: float = 0.2  # minillm: PPO clipping range of the importance ratio
    minillm_pt_weight: float = 1.0  # minillm: weight of the language-modelling term on the data's responses
    minillm_length_norm: bool = True  # minillm: normalise the long-term reward by the remaining length
    eval_every: int = 0  # steps between evaluation losses on the held-out data during training (0: none)
    checkpoint_every: int = 25
    save_total_limit: int = 1  # complete checkpoints kept in OUT/checkpoints
    keep_checkpoint: bool = False  # keep OUT/checkpoints after the run completed
    report_to: str = "none"  # trackers of transformers (tensorboard, wandb, ...), comma-separated; "none": off
    logging_steps: int = 1

    def __post_init__(self):
        method = get_method(self.method)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        positive = dict(batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length,
                        max_new_tokens=self.max_new_tokens, checkpoint_every=self.checkpoint_every,
                        validate_every=self.validate_every, cip_m=self.cip_m, replay_capacity=self.replay_capacity,
                        cip_max_target_tokens=self.cip_max_target_tokens, save_total_limit=self.save_total_limit,
                        logging_steps=self.logging_steps)
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs!r}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("teacher_noise", "cip_weight", "weight_decay", "max_grad_norm", "sgo_increment",
                     "minillm_pt_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not method.uses_teacher_logits and (self.teacher_noise > 0 or self.temperature != 1.0):
            raise ValueError(f"method {self.method!r} trains on text with cross-entropy and never sees the teacher's "
                             f"logits: temperature and teacher noise do not apply (use kd, rkl, gkd, ...)")
        if method.responses == "teacher_mixed" and (self.teacher_noise > 0 or self.temperature != 1.0):
            raise ValueError("minillm optimises the reverse KL of the models' own distributions: temperature and "
                             "teacher noise do not apply")
        if not 0.0 < self.cip_batch_share <= 1.0:
            raise ValueError(f"cip_batch_share must be in (0, 1], got {self.cip_batch_share}")
        for name in ("student_share", "replay_ratio", "sgo_initial", "sgo_max_prob", "jsd_beta", "minillm_teacher_mix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.sgo_initial > self.sgo_max_prob:
            raise ValueError(f"sgo_initial ({self.sgo_initial}) must not exceed sgo_max_prob ({self.sgo_max_prob})")
        if not 0.0 <= self.skew_alpha < 1.0:
            raise ValueError(f"skew_alpha must be in [0, 1), got {self.skew_alpha}")
        if not 0.0 < self.minillm_clip < 1.0:
            raise ValueError(f"minillm_clip must be in (0, 1), got {self.minillm_clip}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def total_steps(self, num_examples: int, processes: int = 1) -> int:
        """Optimizer steps of the run: `steps`, or `epochs` passes over num_examples at the global batch size."""
        if self.steps is not None:
            return self.steps
        global_batch = self.batch_size * self.grad_accum * processes
        return max(1, math.ceil((self.epochs or 1.0) * num_examples / global_batch))

    def loss_options(self) -> dict:
        """Keyword arguments of kd_loss for this method."""
        method = get_method(self.method)
        options = dict(divergence=method.divergence)
        if method.uses_teacher_logits:
            options.update(temperature=self.temperature, t2_scaling=self.t2_scaling, noise_std=self.teacher_noise)
        if method.divergence == "jsd":
            options["beta"] = self.jsd_beta
        elif method.divergence.startswith("skew_"):
            options["alpha"] = self.skew_alpha
        elif method.divergence == "ab":
            options.update(alpha=self.ab_alpha, beta=self.ab_beta)
        return options
