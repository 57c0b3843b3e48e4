"""distill(): one distillation run in an output directory, on DistillTrainer, resumable and keyed on its identity.

Files in the output directory:
  run.json             the run's identity (settings, digests of the teacher's and the initial student's weights,
                       of the tokenizer and of the data) and, when done, its result
  student_before/      the student before training (a Hugging Face model directory)
  student/             the trained student (written when the run completes)
  checkpoints/         Trainer's checkpoints (safetensors weights, optimizer/scheduler/RNG states loaded with
                       weights_only=True, JSON states); a checkpoint counts once its kdi_checkpoint.json is written,
                       others (a kill mid-save) are removed at the next start; removed at the end unless kept
  train_log.jsonl      one line per step: step, loss, kd, cip, lr, source of the responses, SGO probability,
                       seconds (wall time since the previous step ended)
  teacher_outputs.json SeqKD's cached teacher responses (or the path given as seqkd_cache)
  .kdi.lock            held while a run writes here (kdi_fast._lock)

Run again with the same inputs to resume (from the last complete checkpoint) or to get the finished run back.
Other inputs are refused with what differs, unless overwrite=True, which starts afresh. A directory that holds no
checkpoint and no finished run (a run that failed early) never blocks a new run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .._io import write_json_atomic, write_text_atomic
from .._lock import LOCK_FILE, output_lock
from .config import RESUMABLE_CHANGES, DistillConfig
from .datasets import Example, end_of_turn_id, tokenize_examples
from .identity import differences, examples_digest, model_digest
from .methods import get_method
from .trainer import COMPLETE_MARKER, DistillTrainer, RunInterrupted

__all__ = ["DistillRun", "distill"]


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


def _identity(config: DistillConfig, teacher, student, tokenizer, train, validation, processes: int) -> dict:
    from ..engine.compute import tokenizer_fingerprint

    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    return {"settings": settings, "processes": processes,
            "teacher": {"name": str(getattr(teacher.config, "name_or_path", "")), "digest": model_digest(teacher)},
            "student": {"name": str(getattr(student.config, "name_or_path", "")), "digest": model_digest(student)},
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "data": {"train": examples_digest(train), "train_examples": len(train),
                     "validation": examples_digest(validation)}}


def _complete_checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _remove_incomplete(folder: Path) -> None:
    for p in folder.glob("checkpoint-*"):
        if not (p / COMPLETE_MARKER).is_file():
            warnings.warn(f"removing {p}: a checkpoint whose writing was interrupted", stacklevel=3)
            shutil.rmtree(p, ignore_errors=True)
    for p in folder.parent.glob(".student.*"):
        shutil.rmtree(p, ignore_errors=True)


def _clear(out: Path) -> None:
    """Everything a previous run wrote in out (not the lock, not other files the user put there)."""
    for name in ("checkpoints", "student", "student_before", "eval"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("run.json", "train_log.jsonl", "checkpoint.pt"):
        (out / name).unlink(missing_ok=True)


def _read_log(path: Path, up_to: int | None) -> list[str]:
    """The lines of train_log.jsonl for steps <= up_to; a damaged last line (a kill mid-write) is dropped with a
    warning, a damaged line elsewhere is an error naming the file."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            step = int(entry["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if number == len(lines):
                warnings.warn(f"{path}: dropped its damaged last line (a run killed while writing it)", stacklevel=3)
                break
            raise ValueError(f"{path} line {number} is damaged: delete the file's lines from {number} on (they are "
                             f"rewritten on resume) or rerun with --overwrite") from None
        if up_to is None or step <= up_to:
            kept.append(line)
    return kept


def _save_student(trainer: DistillTrainer, final: Path) -> None:
    """The trained student to `final` via a temporary folder renamed at the end (Trainer gathers FSDP/DeepSpeed
    shards; every process calls it)."""
    tmp = final.parent / f".student.{os.getpid()}"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle of Trainer's arguments: nothing reads it
        os.chmod(tmp, 0o755)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    trainer.accelerator.wait_for_everyone()


def _save_pretrained_atomic(model: nn.Module, tokenizer, final: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_weights(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no safetensors weights: delete it or rerun with --overwrite")
    state = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder} does not hold this student's weights; rerun with --overwrite")


def _training_arguments(config: DistillConfig, checkpoints: Path, total: int, device: str, progress: bool):
    from transformers import TrainingArguments

    report_to = [r.strip() for r in config.report_to.split(",") if r.strip()] or ["none"]
    return TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear", max_steps=total, max_grad_norm=config.max_grad_norm, seed=config.seed,
        bf16=config.precision == "bf16", fp16=config.precision == "fp16",
        activation_checkpointing=config.gradient_checkpointing, save_strategy="steps",
        save_steps=config.checkpoint_every, save_total_limit=None, logging_steps=config.logging_steps,
        report_to=report_to, eval_strategy="steps" if config.eval_every else "no",
        eval_steps=config.eval_every or None, use_cpu=device == "cpu", dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=not progress, average_tokens_across_devices=True,
        dataloader_drop_last=False, ddp_find_unused_parameters=False)


def distill(teacher: nn.Module, student: nn.Module, tokenizer, train_examples: Sequence[Example],
            out_dir: str | Path, config: DistillConfig | None = None, *,
            validation_examples: Sequence[Example] | None = None, seqkd_cache: str | Path | None = None,
            teacher_logits_cache: dict | None = None, progress: bool = True, stop_after: int | None = None,
            overwrite: bool = False) -> DistillRun:
    """Distil `teacher` into `student` (trained in place) on `train_examples`, writing to `out_dir`.

    Resumes from the last complete checkpoint of out_dir when the run there has the same identity (settings,
    weights of teacher and initial student, tokenizer, data); returns the finished run when it is done; refuses
    another identity with the fields that differ (ValueError) unless overwrite=True. validation_examples feed
    DistiLLM's SGO schedule and the evaluation during training (default: the first 16 training examples).
    teacher_logits_cache: a dict that keeps the teacher's logits of data batches, shared by runs that see the same
    batches; it trades memory for teacher forwards and changes no result. stop_after: raise RunInterrupted after
    that many steps of this call (for tests). Under torchrun / accelerate launch every process calls this.
    """
    config = config or DistillConfig()
    method = get_method(config.method)
    if not train_examples:
        raise ValueError("no training examples")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher vocabulary {teacher.config.vocab_size} != student vocabulary "
                         f"{student.config.vocab_size}: distillation here needs a shared tokenizer")
    out = Path(out_dir)
    _process_group(str(next(teacher.parameters()).device))
    with output_lock(out, command="kdi distill"):
        return _distill_locked(teacher, student, tokenizer, list(train_examples), out, config, method,
                               list(validation_examples or train_examples[:16])[:16], seqkd_cache,
                               teacher_logits_cache, progress, stop_after, overwrite)


def _process_group(device: str):
    """accelerate's process state (under torchrun / accelerate launch: the process group, gloo on CPU), set up
    before the lock so that one lock is taken per launch."""
    from accelerate import PartialState

    return PartialState(cpu=device.startswith("cpu"))


def _distill_locked(teacher, student, tokenizer, train_examples, out, config, method, validation_examples,
                    seqkd_cache, teacher_logits_cache, progress, stop_after, overwrite) -> DistillRun:
    from accelerate import PartialState

    state = PartialState()
    main = state.is_main_process
    device = str(next(teacher.parameters()).device)
    run_json, log_path, checkpoints = out / "run.json", out / "train_log.jsonl", out / "checkpoints"
    identity = _identity(config, teacher, student, tokenizer, train_examples, validation_examples,
                         state.num_processes)
    previous = None
    if run_json.is_file():
        try:
            previous = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{run_json} is damaged: rerun with --overwrite to start afresh") from None
    complete = _complete_checkpoints(checkpoints) if checkpoints.is_dir() else []
    if (out / "checkpoint.pt").is_file():
        warnings.warn(f"{out / 'checkpoint.pt'} is a checkpoint of an older kdi_fast: it is never loaded (pickles "
                      f"can run code); delete it", stacklevel=3)
    finished = previous is not None and previous.get("result") is not None and (out / "student").is_dir()
    if previous is not None and (finished or complete) and not overwrite:
        changed = differences(previous.get("identity", {}), identity)
        if changed:
            raise ValueError(f"{out} holds a run of other inputs ({', '.join(changed)} differ): rerun with the same "
                             f"options to resume it, choose another --out, or pass --overwrite to replace it")
        if finished:
            _load_weights(student, out / "student")  # the caller gets the trained student, as after a run
            return DistillRun(**previous["result"])
    state.wait_for_everyone()
    resume = None
    if main:
        if overwrite or previous is None or not complete:
            _clear(out)
            complete = []
        else:
            _remove_incomplete(checkpoints)
    state.wait_for_everyone()
    if complete:
        resume = complete[-1]
        marker = json.loads((resume / COMPLETE_MARKER).read_text())
        changed = differences(marker.get("identity", {}), identity)
        if changed:
            raise ValueError(f"{resume} was written by a run of other inputs ({', '.join(changed)} differ): delete "
                             f"{checkpoints} or rerun with --overwrite")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_id(tokenizer)
    eot_id = end_of_turn_id(tokenizer)
    train = tokenize_examples(tokenizer, train_examples, max_length=config.max_length)
    cache_reused = None
    if method.responses == "teacher":
        from .generation import cached_teacher_responses

        with state.main_process_first():
            responses, cache_reused = cached_teacher_responses(
                teacher, [t.prompt_ids for t in train], seqkd_cache or out / "teacher_outputs.json", pad_id=pad_id,
                eot_id=eot_id, max_new_tokens=config.max_new_tokens)
        train = [t.with_response(r[:max(1, config.max_length - len(t.prompt_ids))]) for t, r in zip(train, responses)]
    validation = tokenize_examples(tokenizer, validation_examples, max_length=config.max_length)
    total = config.total_steps(len(train), state.num_processes)

    if resume is None and main:
        _save_pretrained_atomic(student, tokenizer, out / "student_before")
        log_path.unlink(missing_ok=True)
        write_json_atomic(run_json, {"identity": identity, "config": asdict(config), "result": None,
                                     "train_examples": len(train)}, default=str)
    elif resume is not None and main:
        kept = _read_log(log_path, int(resume.name.split("-")[-1]))
        write_text_atomic(log_path, "".join(line + "\n" for line in kept))
    state.wait_for_everyone()

    from ..losses.cip import CIP

    cip = None
    if config.cip_weight > 0:
        cip = CIP(m=config.cip_m, weight=config.cip_weight, seed=config.seed, tokenizer=tokenizer,
                  batch_share=config.cip_batch_share, max_target_tokens=config.cip_max_target_tokens)
    args = _training_arguments(config, checkpoints, total, device.split(":")[0], progress)
    global_batch = config.batch_size * config.grad_accum * state.num_processes
    try:
        trainer = DistillTrainer(model=student, teacher=teacher, config=config, args=args, tokenizer=tokenizer,
                                 train_items=train, total_positions=total * global_batch, pad_id=pad_id,
                                 eot_id=eot_id, validation_items=validation, cip=cip,
                                 teacher_logits_cache=teacher_logits_cache, log_path=log_path, stop_after=stop_after)
    except (ImportError, RuntimeError) as err:  # a tracker of --report-to that is not installed
        if config.report_to == "none":
            raise
        raise ValueError(f"--report-to {config.report_to}: {str(err).splitlines()[0]}") from None

    def on_complete(folder: Path) -> None:
        write_json_atomic(folder / COMPLETE_MARKER, {"identity": identity, "step": trainer.state.global_step},
                          default=str)
        for old in _complete_checkpoints(checkpoints)[:-config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        for p in checkpoints.glob("checkpoint-*"):
            if not (p / COMPLETE_MARKER).is_file():
                shutil.rmtree(p, ignore_errors=True)

    trainer.on_checkpoint_complete = on_complete
    if not progress:  # without a progress bar the Trainer prints every log dict; run.log keeps them
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    if resume is not None:
        trainer.load_state_extra(resume)
    try:
        output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except RunInterrupted:
        raise
    except Exception as err:  # a checkpoint that cannot be loaded safely (a pickle, damaged files)
        import pickle

        if resume is not None and isinstance(err, (pickle.UnpicklingError, RuntimeError, OSError, EOFError)) and \
                "pickle" in f"{type(err).__name__} {err}".lower() or isinstance(err, pickle.UnpicklingError):
            raise ValueError(f"a file of {resume} could not be loaded safely ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]}); checkpoints are loaded with weights_only=True and "
                             f"never as general pickles: delete {resume} or rerun with --overwrite") from None
        raise
    student.eval()
    _save_student(trainer, out / "student")
    entries = [json.loads(line) for line in _read_log(log_path, None)] if main else []
    sgo = sum(1 for e in entries if e.get("source") in ("student", "replay"))
    result = DistillRun(out_dir=str(out), steps=trainer.state.global_step,
                        seconds=round(float(output.metrics.get("train_runtime", 0.0)), 3),
                        first_loss=entries[0]["loss"] if entries else None,
                        last_loss=entries[-1]["loss"] if entries else None, sgo_batches=sgo,
                        seqkd_cache_reused=cache_reused)
    if main:
        record = json.loads(run_json.read_text())
        record["result"] = dataclasses.asdict(result)
        write_json_atomic(run_json, record, default=str)
        if not config.keep_checkpoint:
            shutil.rmtree(checkpoints, ignore_errors=True)
    state.wait_for_everyone()
    return result
