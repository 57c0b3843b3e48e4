"""The distillation loop: a plain torch loop whose checkpoints make a killed run continue exactly.

A run's data order is a function of (seed, step): position p = step * batch_size + i of the stream is item
p mod N of the epoch-(p div N) permutation. Every random draw comes from torch's global generator (model
sampling), the run's own random.Random (per-batch coin flips, replay sampling) or its noise generator (teacher
noise), and all three are saved in each checkpoint with the model, optimizer, scheduler, replay buffer and SGO
schedule. Resuming from a checkpoint therefore reproduces the uninterrupted run bit for bit (tested).

Files in the output directory:
  student_before/    the student as it was before training (a Hugging Face model directory)
  student/           the trained student (written when the run completes)
  checkpoint.pt      the latest checkpoint (written atomically every checkpoint_every steps; removed at the end
                     unless keep_checkpoint)
  train_log.jsonl    one line per step: step, loss, kd, cip, lr, source of the responses, SGO probability
  teacher_outputs.json   SeqKD's cached teacher responses (or the path given as seqkd_cache)
  run.json           the configuration and, when done, the summary of the run
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import Example, TokenizedExample, collate, end_of_turn_id, tokenize_examples
from .._io import write_json_atomic, write_text_atomic
from .generation import cached_teacher_responses, generate_responses
from .methods import get_method
from .replay import AdaptiveSGOSchedule, ReplayBuffer

__all__ = ["DistillConfig", "DistillRun", "distill", "RunInterrupted"]

# Fields that may change between a run and its resumption without changing its results.
_RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoint")


@dataclass
class DistillConfig:
    """Everything that determines a distillation run (saved in run.json and every checkpoint)."""

    method: str = "kd"
    steps: int | None = None  # total optimizer steps; None: from epochs
    epochs: float | None = None  # passes over the training data (used when steps is None; default 1)
    batch_size: int = 4
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
    cip_weight: float = 0.0  # weight of the Complex Interaction Penalty; 0 = off
    cip_m: int = 3  # CIP: number of random word groups (2^m masked forwards)
    cip_max_target_tokens: int = 16  # CIP: response tokens whose log-probs define v (masked inputs cut after them)
    cip_batch_share: float = 1.0  # CIP: share of each batch's prompts it is computed on
    student_share: float = 0.5  # gkd: probability that a batch uses student samples (GKD's lambda)
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
    checkpoint_every: int = 25
    keep_checkpoint: bool = False

    def __post_init__(self):
        method = get_method(self.method)
        positive = dict(batch_size=self.batch_size, max_length=self.max_length, max_new_tokens=self.max_new_tokens,
                        checkpoint_every=self.checkpoint_every, validate_every=self.validate_every,
                        cip_m=self.cip_m, replay_capacity=self.replay_capacity,
                        cip_max_target_tokens=self.cip_max_target_tokens)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.teacher_noise < 0:
            raise ValueError(f"teacher_noise must be >= 0, got {self.teacher_noise}")
        if self.cip_weight < 0:
            raise ValueError(f"cip_weight must be >= 0, got {self.cip_weight}")
        if not method.uses_teacher_logits and (self.teacher_noise > 0 or self.temperature != 1.0):
            raise ValueError(f"method {self.method!r} trains on text with cross-entropy and never sees the teacher's "
                             f"logits: temperature and teacher noise do not apply (use kd, rkl, gkd, ...)")
        if not 0.0 < self.cip_batch_share <= 1.0:
            raise ValueError(f"cip_batch_share must be in (0, 1], got {self.cip_batch_share}")
        for name in ("student_share", "replay_ratio", "sgo_initial", "sgo_max_prob", "jsd_beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.sgo_initial > self.sgo_max_prob:
            raise ValueError(f"sgo_initial ({self.sgo_initial}) must not exceed sgo_max_prob ({self.sgo_max_prob})")
        if not 0.0 <= self.skew_alpha < 1.0:
            raise ValueError(f"skew_alpha must be in [0, 1), got {self.skew_alpha}")

    def total_steps(self, num_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil((self.epochs or 1.0) * num_examples / self.batch_size))

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


@dataclass
class DistillRun:
    """What a finished run reports (also written to run.json)."""

    out_dir: str
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    sgo_batches: int
    seqkd_cache_reused: bool | None


class RunInterrupted(RuntimeError):
    """Raised by distill(stop_after=k) after k steps, as if the process had been killed (used by tests)."""


def _atomic_save_pretrained(model: nn.Module, tokenizer, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_weights(model: nn.Module, folder: Path) -> None:
    trained = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
    model.load_state_dict(trained.state_dict())


def _write_json(path: Path, obj) -> None:
    write_json_atomic(path, obj, default=str)


def _batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> tuple[list[int], dict]:
    """The example indices of `step`'s batch and the data position (epoch, index within it) it starts at."""
    start = step * batch_size
    perms: dict[int, list[int]] = {}
    out = []
    for p in range(start, start + batch_size):
        epoch = p // num_examples
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(num_examples, generator=gen).tolist()
        out.append(perms[epoch][p % num_examples])
    return out, {"epoch": start // num_examples, "index": start % num_examples}


def _truncate(item: TokenizedExample, max_length: int) -> TokenizedExample:
    keep = max(1, max_length - len(item.prompt_ids))
    return item.with_response(item.response_ids[:keep])


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def _batch_key(batch: dict) -> str:
    import hashlib

    digest = hashlib.sha256(batch["input_ids"].cpu().numpy().tobytes())
    digest.update(batch["attention_mask"].cpu().numpy().tobytes())
    digest.update(str(tuple(batch["input_ids"].shape)).encode())
    return digest.hexdigest()


def _make_cip(config: DistillConfig, tokenizer):
    """The CIP loss of kdi_fast.losses (players: words of the user's text, split into cip_m random groups)."""
    from ..losses.cip import CIP

    return CIP(m=config.cip_m, weight=config.cip_weight, seed=config.seed, tokenizer=tokenizer,
               batch_share=config.cip_batch_share, max_target_tokens=config.cip_max_target_tokens)


def distill(teacher: nn.Module, student: nn.Module, tokenizer, train_examples: Sequence[Example],
            out_dir: str | Path, config: DistillConfig | None = None, *,
            validation_examples: Sequence[Example] | None = None, seqkd_cache: str | Path | None = None,
            teacher_logits_cache: dict | None = None, progress: bool = True,
            stop_after: int | None = None) -> DistillRun:
    """Distil `teacher` into `student` (trained in place) on `train_examples`, writing to `out_dir`.

    Resumes from out_dir/checkpoint.pt when it exists (the configuration must match: ValueError otherwise);
    returns at once when run.json says the same run already completed. validation_examples feed DistiLLM's
    SGO schedule (default: the first 16 training examples). teacher_logits_cache: a dict that keeps the
    teacher's logits of batches drawn from the data, shared by runs that see the same batches (same data,
    seed and batch size: an experiment's off-policy runs); it trades memory for the teacher's forwards and
    changes no result. stop_after: raise RunInterrupted after that many steps of this call (for tests).
    """
    config = config or DistillConfig()
    method = get_method(config.method)
    if not train_examples:
        raise ValueError("no training examples")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher vocabulary {teacher.config.vocab_size} != student vocabulary "
                         f"{student.config.vocab_size}: distillation here needs a shared tokenizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_json, ckpt_path, log_path = out / "run.json", out / "checkpoint.pt", out / "train_log.jsonl"
    config_dict = asdict(config)
    comparable = {k: v for k, v in config_dict.items() if k not in _RESUMABLE_CHANGES}

    previous = json.loads(run_json.read_text()) if run_json.is_file() else None
    if previous is not None:
        old = {k: v for k, v in previous["config"].items() if k not in _RESUMABLE_CHANGES}
        if old != comparable:
            changed = sorted(k for k in comparable if old.get(k) != comparable[k])
            raise ValueError(f"{out} holds a run with a different configuration ({', '.join(changed)} differ): "
                             f"resume it with the same options, or choose another --out directory")
        if previous.get("result") is not None and (out / "student").is_dir():
            _load_weights(student, out / "student")  # the caller gets the trained student, as after a run
            return DistillRun(**previous["result"])

    device = next(student.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_id(tokenizer)
    eot_id = end_of_turn_id(tokenizer)
    teacher.eval()  # its forwards run under no_grad; its parameters' flags are left as they are

    train = tokenize_examples(tokenizer, train_examples, max_length=config.max_length)
    cache_reused = None
    if method.responses == "teacher":
        responses, cache_reused = cached_teacher_responses(
            teacher, [t.prompt_ids for t in train], seqkd_cache or out / "teacher_outputs.json", pad_id=pad_id,
            eot_id=eot_id, max_new_tokens=config.max_new_tokens)
        train = [_truncate(t.with_response(r), config.max_length) for t, r in zip(train, responses)]
    validation = tokenize_examples(tokenizer, list(validation_examples or train_examples[:16])[:16],
                                   max_length=config.max_length)

    total = config.total_steps(len(train))
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    python_rng = random.Random(config.seed)
    noise_generator = torch.Generator().manual_seed(config.seed + 1)
    schedule = AdaptiveSGOSchedule(initial=config.sgo_initial, increment=config.sgo_increment,
                                   max_prob=config.sgo_max_prob)
    buffer = ReplayBuffer(config.replay_capacity)
    cip = _make_cip(config, tokenizer) if config.cip_weight > 0 else None

    state = load_checkpoint(ckpt_path)
    if state is not None:
        saved = {k: v for k, v in state["config"].items() if k not in _RESUMABLE_CHANGES}
        if saved != comparable:
            raise ValueError(f"{ckpt_path} was written by a run with another configuration; use another --out")
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], python_rng, noise_generator)
        schedule.load_state_dict(state["sgo_schedule"])
        buffer.load_state_dict(state["replay_buffer"])
        step, elapsed, sgo_batches = state["step"], state["seconds"], state["sgo_batches"]
        if log_path.is_file():  # drop lines of steps done after the checkpoint: they will be redone
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            write_text_atomic(log_path, "".join(line + "\n" for line in kept))
    else:
        torch.manual_seed(config.seed)
        step, elapsed, sgo_batches = 0, 0.0, 0
        _atomic_save_pretrained(student, tokenizer, out / "student_before")
        log_path.unlink(missing_ok=True)
        _write_json(run_json, {"config": config_dict, "result": None,
                               "teacher": getattr(teacher.config, "name_or_path", ""),
                               "student": getattr(student.config, "name_or_path", ""),
                               "train_examples": len(train)})

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "config": config_dict, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng_state(python_rng, noise_generator), "step": step,
            "data_position": _batch_indices(step, config.batch_size, len(train), config.seed)[1],
            "sgo_schedule": schedule.state_dict(), "replay_buffer": buffer.state_dict(),
            "seconds": elapsed, "sgo_batches": sgo_batches})

    def teacher_logits_of(batch: dict, cacheable: bool) -> torch.Tensor:
        if teacher_logits_cache is None or not cacheable:
            with torch.no_grad():
                return _logits(teacher, batch)
        key = _batch_key(batch)
        if key not in teacher_logits_cache:
            with torch.no_grad():
                teacher_logits_cache[key] = _logits(teacher, batch)
        return teacher_logits_cache[key]

    def loss_on(batch: dict, cacheable: bool = False):
        """The method's loss on a batch, and the student's outputs (CIP reuses their final hidden states for
        the full input, which is cheaper in the backward than reusing the logits)."""
        from ..losses import kd_loss

        outputs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                          output_hidden_states=cip is not None)
        teacher_logits = teacher_logits_of(batch, cacheable) if method.uses_teacher_logits else None
        loss = kd_loss(outputs.logits, teacher_logits, batch["labels"], shift_labels=True,
                       generator=noise_generator, **config.loss_options()).mean()
        return loss, outputs

    def sgo_probability() -> float:
        if method.responses == "student_share":
            return config.student_share
        if method.responses == "student_ramp":
            return step / max(1, total - 1)
        if method.responses == "adaptive":
            return schedule.prob
        return 0.0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=f"distill {config.method}", unit="step", dynamic_ncols=True)
    first_loss = last_loss = None
    done_this_call = 0
    student.train()
    try:
        while step < total:
            started = time.perf_counter()
            indices, _ = _batch_indices(step, config.batch_size, len(train), config.seed)
            items = [train[i] for i in indices]
            source, prob = "data", sgo_probability()
            if method.on_policy and python_rng.random() < prob:
                if method.responses == "adaptive" and len(buffer) >= len(items) and \
                        python_rng.random() < config.replay_ratio:
                    items, source = buffer.sample(len(items), python_rng), "replay"
                else:
                    samples = generate_responses(student, [it.prompt_ids for it in items], pad_id=pad_id,
                                                 eot_id=eot_id, max_new_tokens=config.max_new_tokens, sample=True)
                    items = [_truncate(it.with_response(r), config.max_length)
                             for it, r in zip(items, samples)]
                    source = "student"
                    if method.responses == "adaptive":
                        buffer.add(items)
                sgo_batches += 1
            batch = {k: v.to(device) for k, v in collate(items, pad_id).items()}
            kd_term, outputs = loss_on(batch, cacheable=source == "data")
            loss = kd_term
            cip_term = None
            if cip is not None:
                cip_term = cip(student, batch, outputs, step=step)
                loss = loss + cip_term
            del outputs
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            done_this_call += 1
            elapsed += time.perf_counter() - started
            last_loss = float(loss.detach())
            first_loss = last_loss if first_loss is None else first_loss
            entry = {"step": step, "loss": last_loss, "kd": float(kd_term.detach()),
                     "cip": None if cip_term is None else float(cip_term.detach()), "lr": lr, "source": source,
                     "sgo_prob": prob}
            if method.responses == "adaptive" and step % config.validate_every == 0:
                student.eval()
                with torch.no_grad():
                    val = float(loss_on({k: v.to(device) for k, v in collate(validation, pad_id).items()})[0])
                student.train()
                entry["validation_loss"] = val
                entry["sgo_prob_next"] = schedule.update(val)
            with open(log_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4g}", src=source)
            if step % config.checkpoint_every == 0 or step == total:
                checkpoint()
            if stop_after is not None and done_this_call >= stop_after and step < total:
                raise RunInterrupted(f"stopped after {done_this_call} steps (step {step} of {total})")
    finally:
        if bar is not None:
            bar.close()
    student.eval()
    _atomic_save_pretrained(student, tokenizer, out / "student")
    losses = [json.loads(line)["loss"] for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    result = DistillRun(out_dir=str(out), steps=step, seconds=round(elapsed, 3),
                        first_loss=losses[0] if losses else first_loss, last_loss=losses[-1] if losses else last_loss,
                        sgo_batches=sgo_batches, seqkd_cache_reused=cache_reused)
    record = json.loads(run_json.read_text())
    record["result"] = dataclasses.asdict(result)
    _write_json(run_json, record)
    if not config.keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return result
