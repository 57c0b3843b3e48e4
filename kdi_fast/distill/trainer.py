"""DistillTrainer: transformers.Trainer whose loss is the method's (kd_loss, MiniLLM's) plus CIP, for every method.

What a method adds to the plain Trainer lives here, on top of Trainer's own loop (accelerate, DDP/FSDP/DeepSpeed,
mixed precision, accumulation, checkpoints, trackers):
  data order   a stream dataset: position p of the run is example perm_e[p mod N] of epoch e = p div N (perm_e
               seeded by (seed, e)), read in order, so one step's global batch is the same examples whatever the
               number of processes (accelerate hands process i the i-th per-device batch of each step);
  responses    get_batch_samples replaces a step's micro-batches by student / teacher-mixed samples when the step's
               coin (drawn from (seed, step)) says so, each sample from a generator seeded by (seed, example, step);
               DistiLLM's replay buffer and adaptive schedule, ImitKD's ramp; SeqKD's teacher outputs are in the data;
  loss         summed over tokens and divided by the step's token count over all micro-batches and processes
               (exact token normalisation under accumulation and DDP); CIP added per micro-batch;
  state        the schedule and replay buffer are saved as JSON next to Trainer's checkpoint files
               (kdi_state-RANK.json) and a checkpoint counts only once kdi_checkpoint.json (its identity) is written.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainerCallback

from .._io import write_json_atomic
from .config import DistillConfig
from .datasets import TokenizedExample, collate
from .methods import get_method
from .minillm import minillm_loss, mixed_samples
from .replay import AdaptiveSGOSchedule, ReplayBuffer

__all__ = ["DistillTrainer", "RunInterrupted", "StreamDataset", "ItemsDataset", "seed_of", "COMPLETE_MARKER"]

COMPLETE_MARKER = "kdi_checkpoint.json"


class RunInterrupted(RuntimeError):
    """Raised by distill(stop_after=k) after k steps, as if the process had been killed (used by tests)."""


def seed_of(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class StreamDataset(Dataset):
    """The run's data stream: item p is {"item", "index"} of example perm_e[p mod N], e = p div N."""

    def __init__(self, items: Sequence[TokenizedExample], length: int, seed: int):
        self.items, self.length, self.seed = list(items), int(length), int(seed)
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.length

    def index(self, position: int) -> int:
        epoch = position // len(self.items)
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(len(self.items), generator=generator).tolist()
        return self._perms[epoch][position % len(self.items)]

    def __getitem__(self, position: int) -> dict:
        i = self.index(position)
        return {"item": self.items[i], "index": i}


class ItemsDataset(Dataset):
    """Tokenised examples in their order (evaluation during training)."""

    def __init__(self, items: Sequence[TokenizedExample]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"item": self.items[i], "index": i}


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = collate([r["item"] for r in rows], self.pad_id)
        batch["example_index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return batch


class _StepCallback(TrainerCallback):
    """Writes train_log.jsonl (main process) after every optimizer step; raises RunInterrupted for stop_after."""

    def __init__(self, trainer: "DistillTrainer", log_path: Path | None, stop_after: int | None):
        self.trainer, self.log_path, self.stop_after, self.done = trainer, log_path, stop_after, 0
        self.last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        entry = self.trainer._finish_step_record()
        now = time.perf_counter()
        entry["seconds"], self.last = round(now - self.last, 6), now  # since the previous step ended
        if self.log_path is not None and self.trainer.is_world_process_zero():
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        self.done += 1
        if self.stop_after is not None and self.done >= self.stop_after and state.global_step < state.max_steps:
            raise RunInterrupted(f"stopped after {self.done} steps (step {state.global_step} of {state.max_steps})")


class DistillTrainer(Trainer):
    """transformers.Trainer for a distillation method of kdi_fast.distill (module docstring).

    teacher: the teacher model (run without gradients, on the student's device); config: the run's DistillConfig;
    train_items: the tokenised training examples (SeqKD: with the teacher's responses); validation_items: held-out
    examples for DistiLLM's schedule and eval during training; cip: a kdi_fast.losses.CIP or None;
    teacher_logits_cache: dict shared between runs that see the same data batches; log_path: train_log.jsonl.
    """

    def __init__(self, *, model: nn.Module, teacher: nn.Module, config: DistillConfig, args, tokenizer,
                 train_items: Sequence[TokenizedExample], total_positions: int, pad_id: int, eot_id: int,
                 validation_items: Sequence[TokenizedExample] = (), cip=None, teacher_logits_cache: dict | None = None,
                 log_path: Path | None = None, stop_after: int | None = None):
        self.config, self.method = config, get_method(config.method)
        self.pad_id, self.eot_id = pad_id, eot_id
        self.train_items, self.validation_items = list(train_items), list(validation_items)
        eval_dataset = ItemsDataset(self.validation_items) if config.eval_every and self.validation_items else None
        super().__init__(model=model, args=args, train_dataset=StreamDataset(train_items, total_positions, config.seed),
                         eval_dataset=eval_dataset, data_collator=_Collator(pad_id), processing_class=tokenizer)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        sharded = self.is_fsdp_enabled or (plugin is not None and getattr(plugin, "zero_stage", 0) == 3)
        if sharded and self.method.on_policy:
            raise ValueError(f"method {config.method!r} samples from the student, which needs its full parameters: "
                             f"launch it with DDP or DeepSpeed ZeRO-2, not FSDP or ZeRO-3")
        self.teacher = teacher.to(self.args.device).eval()
        self.cip = cip
        self.teacher_logits_cache = teacher_logits_cache
        self.model_accepts_loss_kwargs = False  # Trainer counts no tokens: get_batch_samples does it (after sampling)
        self.loss_is_scaled_for_ga = True  # compute_loss normalises by the whole step's tokens itself
        self.schedule = AdaptiveSGOSchedule(initial=config.sgo_initial, increment=config.sgo_increment,
                                            max_prob=config.sgo_max_prob)
        self.buffer = ReplayBuffer(config.replay_capacity)
        self._validated_at: int | None = None
        self._record: dict = {}
        self._micro = 0
        self.add_callback(_StepCallback(self, log_path, stop_after))

    # ------------------------------------------------------------------------------------------------------
    # Data: the stream in order; on-policy responses decided per step
    # ------------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def sgo_probability(self, step: int) -> float:
        """Probability that `step` (0-based) trains on student-generated responses."""
        responses = self.method.responses
        if responses == "student_share":
            return self.config.student_share
        if responses == "student_ramp":
            return step / max(1, self.state.max_steps - 1)
        if responses == "adaptive":
            return self.schedule.prob
        return 1.0 if responses == "teacher_mixed" else 0.0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        step = self.state.global_step
        self._maybe_validate(step)
        prob = self.sgo_probability(step)
        source = "data"
        if self.method.on_policy and random.Random(seed_of(self.config.seed, step, "coin")).random() < prob:
            source = "student"
            if self.method.responses == "adaptive" and len(self.buffer) >= self.config.batch_size and \
                    random.Random(seed_of(self.config.seed, step, "replay")).random() < self.config.replay_ratio:
                source = "replay"
            batches = [self._resampled(b, step, source, i) for i, b in enumerate(batches)]
        count = sum(b["labels"][:, 1:].ne(-100).sum() for b in batches) if batches else torch.tensor(0)
        count = torch.as_tensor(count, device=device)
        if self.args.world_size > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        self._micro = 0
        self._record = {"step": step + 1, "lr": float(self.lr_scheduler.get_last_lr()[0]), "source": source,
                        "sgo_prob": prob, "loss": [], "kd": [], "cip": [], "pt": []}
        return batches, count

    def _resampled(self, batch: dict, step: int, source: str, micro: int) -> dict:
        indices = batch["example_index"].tolist()
        if source == "replay":
            rng = random.Random(seed_of(self.config.seed, step, micro, self.args.process_index, "replay-draw"))
            items = self.buffer.sample(len(indices), rng)
        else:
            student = self.accelerator.unwrap_model(self.model)
            mix = self.config.minillm_teacher_mix if self.method.responses == "teacher_mixed" else 0.0
            batch_items = [self.train_items[i] for i in indices]
            generators = [torch.Generator().manual_seed(seed_of(self.config.seed, i, step, "sample")) for i in indices]
            responses = mixed_samples(student, self.teacher if mix > 0 else None,
                                      [item.prompt_ids for item in batch_items], teacher_mix=mix,
                                      max_new_tokens=self.config.max_new_tokens, eot_id=self.eot_id,
                                      generators=generators)
            items = [item.with_response(response[:max(1, self.config.max_length - len(item.prompt_ids))])
                     for item, response in zip(batch_items, responses)]
            if self.method.responses == "adaptive":
                self.buffer.add(items)
        new = collate(items, self.pad_id)
        new["example_index"] = batch["example_index"].cpu()
        new = {k: v.to(batch["input_ids"].device) for k, v in new.items()}
        if self.method.responses == "teacher_mixed":  # the LM term trains on the data's own responses
            new.update({f"pt_{k}": batch[k] for k in ("input_ids", "attention_mask", "labels")})
        return new

    def _maybe_validate(self, step: int) -> None:
        """DistiLLM: the validation loss every validate_every steps drives the SGO schedule (same on every rank)."""
        every = self.config.validate_every
        if self.method.responses != "adaptive" or step == 0 or step % every or self._validated_at == step:
            return
        self._validated_at = step
        student = self.accelerator.unwrap_model(self.model)
        items = self.validation_items or self.train_items[:16]
        batch = {k: v.to(self.args.device) for k, v in collate(items[:16], self.pad_id).items()}
        was_training = student.training
        student.eval()
        with torch.no_grad():
            loss = self._method_loss(student, batch, step, noise=False)[0]
        student.train(was_training)
        value = float(loss.sum / loss.count.clamp(min=1))
        self._record_validation = (value, self.schedule.update(value))

    # ------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------

    def _teacher_logits(self, batch: dict, cacheable: bool) -> torch.Tensor:
        def forward():
            with torch.no_grad():
                return self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    use_cache=False).logits
        if self.teacher_logits_cache is None or not cacheable:
            return forward()
        digest = hashlib.sha256(batch["input_ids"].cpu().numpy().tobytes())
        digest.update(batch["attention_mask"].cpu().numpy().tobytes())
        digest.update(str(tuple(batch["input_ids"].shape)).encode())
        key = digest.hexdigest()
        if key not in self.teacher_logits_cache:
            self.teacher_logits_cache[key] = forward()
        return self.teacher_logits_cache[key]

    def _method_loss(self, model: nn.Module, batch: dict, step: int, *, noise: bool = True, hidden: bool = False,
                     cacheable: bool = False):
        """(KDLossOutput of the method on `batch`, the student's outputs)."""
        from ..losses import kd_loss

        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                        output_hidden_states=hidden)
        teacher = self._teacher_logits(batch, cacheable) if self.method.uses_teacher_logits else None
        if self.method.responses == "teacher_mixed":
            c = self.config
            return minillm_loss(outputs.logits, teacher, batch["labels"], teacher_mix=c.minillm_teacher_mix,
                                clip=c.minillm_clip, length_norm=c.minillm_length_norm), outputs
        options = self.config.loss_options()
        if not noise:
            options.pop("noise_std", None)
        generator = torch.Generator().manual_seed(seed_of(self.config.seed, step, self._micro,
                                                          self.args.process_index, "noise"))
        return kd_loss(outputs.logits, teacher, batch["labels"], shift_labels=True, generator=generator,
                       **options), outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        inputs.pop("example_index", None)
        pt = {k[3:]: inputs.pop(k) for k in list(inputs) if k.startswith("pt_")}
        training = model.training and num_items_in_batch is not None
        use_cip = self.cip is not None and training
        step = self.state.global_step
        result, outputs = self._method_loss(model, inputs, step, hidden=use_cip,
                                            cacheable=self._record.get("source") == "data")
        if training:
            loss = result.sum / torch.as_tensor(num_items_in_batch, device=result.sum.device).clamp(min=1)
            loss = loss * self.args.world_size  # DDP averages the processes' gradients
        else:
            loss = result.mean()
        record = self._record if training else {}
        if training:
            record["kd"].append(loss.detach())
        if pt and self.config.minillm_pt_weight > 0:
            from ..losses import kd_loss

            logits = model(input_ids=pt["input_ids"], attention_mask=pt["attention_mask"], use_cache=False).logits
            term = self.config.minillm_pt_weight * kd_loss(logits, None, pt["labels"], divergence="cross_entropy",
                                                           shift_labels=True).mean()
            term = term / self.current_gradient_accumulation_steps
            record["pt"].append(term.detach()) if training else None
            loss = loss + term
        if use_cip:
            batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels", "player_mask") if k in inputs}
            term = self.cip(model, batch, outputs, step=step) / self.current_gradient_accumulation_steps
            record["cip"].append(term.detach())
            loss = loss + term.to(loss.dtype)
        if training:
            record["loss"].append(loss.detach())
            self._micro += 1
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------------------
    # The step's log line, checkpoints' own state
    # ------------------------------------------------------------------------------------------------------

    def _finish_step_record(self) -> dict:
        """The finished step's log entry: loss, kd, cip (sums over micro-batches, means over processes), lr, ..."""
        record, entry = self._record, {}
        for key in ("loss", "kd", "cip", "pt"):
            values = record.get(key) or []
            if not values:
                entry[key] = None
                continue
            value = torch.stack([v.float() for v in values]).sum()
            if self.args.world_size > 1:
                value = self.accelerator.reduce(value.to(self.args.device), reduction="mean")
            entry[key] = float(value)
        if entry["pt"] is None:
            entry.pop("pt")
        entry.update(step=self.state.global_step, lr=record.get("lr"), source=record.get("source"),
                     sgo_prob=record.get("sgo_prob"))
        validation = getattr(self, "_record_validation", None)
        if validation is not None:
            entry["validation_loss"], entry["sgo_prob_next"] = validation
            self._record_validation = None
        return entry

    def state_dict_extra(self) -> dict:
        return {"sgo_schedule": self.schedule.state_dict(), "replay_buffer": self.buffer.state_dict(),
                "validated_at": self._validated_at}

    def load_state_extra(self, checkpoint: Path) -> None:
        path = Path(checkpoint) / f"kdi_state-{self.args.process_index}.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: the checkpoint was written by another number of processes or is "
                             f"damaged; delete {checkpoint} (or rerun with --overwrite)")
        try:
            state = json.loads(path.read_text())
            self.schedule.load_state_dict(state["sgo_schedule"])
            self.buffer.load_state_dict(state["replay_buffer"])
            self._validated_at = state["validated_at"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is damaged ({err}); delete {checkpoint} to resume from the one before") from None

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        write_json_atomic(folder / f"kdi_state-{self.args.process_index}.json", self.state_dict_extra())
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            self.on_checkpoint_complete(folder)
        self.accelerator.wait_for_everyone()

    def on_checkpoint_complete(self, folder: Path) -> None:
        """Set by distill(): writes the completion marker and removes older checkpoints beyond the limit."""
