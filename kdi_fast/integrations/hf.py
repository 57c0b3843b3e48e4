"""The CIP loss in the Hugging Face Trainer: a mixin that adds weight * CIP to whatever loss the trainer computes
and logs it as `cip`, and CIPTrainer = the mixin on transformers.Trainer.

    trainer = CIPTrainer(model=student, args=args, train_dataset=data, data_collator=collator,
                         cip=CIP(m=3, weight=0.1, tokenizer=tokenizer))
    trainer.train()

The batches need input_ids, attention_mask and labels (-100 on the prompt and padding), as for any causal LM, or
prompt_ids/completion_ids (+ masks) as TRL's generating trainers pass them; any other batch raises a ValueError
naming what it lacks (override cip_batch for other layouts, e.g. DPO's). In chat-formatted rows the players are the
words of the user's messages, found from the tokenizer's chat template for every batch (kdi_fast.engine.chat).
Details: the penalty is spent on training batches only (evaluation skips it); the partitions are seeded by the
trainer's global step, so every micro-batch of an accumulated step and every DDP rank draws them the same way;
the penalty is a per-micro-batch mean, divided by the accumulation steps exactly when the trainer itself does not
divide the loss (its loss is then already normalised by num_items_in_batch); under DDP the model is called
through its wrapper, so gradients are synchronised as usual. The logged `cip` is the term added to the loss
(weight * mean |I| over complex subsets), averaged over the micro-batches since the last log and over ranks.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..losses.cip import CIP, IGNORE_INDEX

_BATCH_KEYS = ("input_ids", "attention_mask", "labels", "player_mask")


class CIPTrainerMixin:
    """Adds the CIP term in compute_loss and logs `cip`. Put it before the trainer class: class T(CIPTrainerMixin,
    Trainer). Keyword argument cip: a CIP module (default: CIP(tokenizer=processing_class))."""

    cip_reuses_outputs = True
    """Whether the parent's compute_loss returns the student's outputs (with logits and gradients) for CIP to reuse
    as the full-input forward; subclasses whose outputs are not that (e.g. a fused LM head) set False."""

    def __init__(self, *args, cip: CIP | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if cip is not None and not isinstance(cip, CIP):
            raise TypeError(f"cip must be a kdi_fast.losses.CIP module, got {type(cip).__name__}")
        tokenizer = getattr(self, "processing_class", None)
        self.cip = cip if cip is not None else (CIP(tokenizer=tokenizer) if tokenizer is not None else CIP())
        self._cip_logged: list[torch.Tensor] = []

    def cip_batch(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch CIP works on, from the trainer's inputs: input_ids, attention_mask and labels (Hugging Face
        convention) as they are, or built from prompt_ids/completion_ids (+ masks) as TRL's generating trainers
        pass them (labels = the completion tokens). Raises ValueError naming what the batch lacks; override it for
        other layouts (README: DPO with CIP on the chosen responses)."""
        if "input_ids" in inputs and "labels" in inputs:
            batch = {k: inputs[k] for k in _BATCH_KEYS if k in inputs}
            mask = batch.get("player_mask")
            if mask is not None and tuple(mask.shape) != tuple(batch["input_ids"].shape):
                warnings.warn("player_mask no longer fits input_ids (the trainer rebuilt the batch, e.g. by on-policy "
                              "generation) and is left out: CIP finds the user's words from the chat template",
                              UserWarning, stacklevel=3)
                batch.pop("player_mask")
            return batch
        if all(k in inputs for k in ("prompt_ids", "completion_ids")):
            prompt, completion = inputs["prompt_ids"], inputs["completion_ids"]
            prompt_mask = inputs.get("prompt_mask", torch.ones_like(prompt))
            completion_mask = inputs.get("completion_mask", torch.ones_like(completion))
            labels = completion.masked_fill(completion_mask == 0, IGNORE_INDEX)
            return {"input_ids": torch.cat([prompt, completion], 1),
                    "attention_mask": torch.cat([prompt_mask, completion_mask], 1),
                    "labels": torch.cat([torch.full_like(prompt, IGNORE_INDEX), labels], 1)}
        keys = ", ".join(sorted(map(str, inputs))) or "none"
        lacks = "labels" if "input_ids" in inputs else "input_ids and labels (or prompt_ids and completion_ids)"
        raise ValueError(f"{type(self).__name__}: CIP needs the batch's {lacks}, and this trainer's batch has "
                         f"only {keys}; override cip_batch(inputs) to return input_ids, attention_mask and labels "
                         f"(-100 off the response), as the README's DPO recipe does")

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        use_cip = model.training and self.cip.weight != 0.0
        batch = self.cip_batch(inputs) if use_cip else None  # before the parent, which may pop labels
        if use_cip and self.cip_reuses_outputs:
            # the final hidden states let CIP reuse this forward cheaply (trainers that call the model with
            # explicit arguments ignore the key, and CIP then reads the logits)
            inputs = {**inputs, "output_hidden_states": True}
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        else:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            loss, outputs = result if return_outputs else (result, None)
        if use_cip:
            reusable = getattr(outputs, "logits", None) is not None or getattr(outputs, "hidden_states", None)
            same_rows = batch["input_ids"] is inputs.get("input_ids")
            reuse = outputs if self.cip_reuses_outputs and reusable and same_rows else None
            term = self.cip(model, batch, reuse, step=self.state.global_step)
            self._cip_logged.append(term.detach())
            if not self._trainer_divides_by_accumulation(num_items_in_batch):
                term = term / self.current_gradient_accumulation_steps
            loss = loss + term.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _trainer_divides_by_accumulation(self, num_items_in_batch) -> bool:
        """Whether Trainer.training_step divides the returned loss by the accumulation steps (its own rule)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) or \
                getattr(self, "compute_loss_func", None) is not None
        return not scaled

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._cip_logged and "loss" in logs:
            value = torch.stack(self._cip_logged).float().mean()
            accelerator = getattr(self, "accelerator", None)
            if accelerator is not None and accelerator.num_processes > 1:
                value = accelerator.reduce(value.to(accelerator.device), reduction="mean")
            logs["cip"] = round(float(value), 6)
            self._cip_logged.clear()
        super().log(logs, *args, **kwargs)


def _trainer_class():
    try:
        from transformers import Trainer
    except ImportError as error:  # pragma: no cover - transformers is in the models extra
        raise ImportError("CIPTrainer needs transformers: pip install 'kdi_fast[models]'") from error
    return Trainer


class CIPTrainer(CIPTrainerMixin, _trainer_class()):
    """transformers.Trainer with the CIP term added to its loss (see the module docstring)."""
