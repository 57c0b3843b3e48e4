"""The CIP loss in TRL's trainers: CIPSFTTrainer (trl.SFTTrainer), CIPGKDTrainer (trl.experimental.gkd's
GKDTrainer) and CIPDistillationTrainer (trl.DistillationTrainer: on-policy completions, batches of
prompt_ids/completion_ids), each adding weight * CIP in compute_loss and logging `cip` beside TRL's own metrics.

    from kdi_fast.integrations.trl import CIPGKDTrainer
    trainer = CIPGKDTrainer(model=student, teacher_model=teacher, args=GKDConfig(...), train_dataset=chats,
                            processing_class=tokenizer, cip=CIP(m=3, weight=0.1, tokenizer=tokenizer))

TRL is an optional extra (pip install 'kdi_fast[trl]'); without it, using these classes raises an ImportError
that says so, and importing kdi_fast never fails. GKDTrainer's student outputs are reused as CIP's full-input
forward; SFTTrainer and DistillationTrainer compute their losses without returning logits, so CIP runs the full
input itself. Players are the words of the user's messages (from the tokenizer's chat template, per batch).
The rules of kdi_fast.integrations.hf (seeding, accumulation, DDP, logging) apply.
"""

from __future__ import annotations

from .hf import CIPTrainerMixin

_MISSING = ("{name} needs TRL (trl>=0.20, with trl.experimental.gkd for GKD), which is not installed: "
            "pip install 'kdi_fast[trl]'")


def _import_sft():
    try:
        from trl import SFTTrainer
    except ImportError as error:
        raise ImportError(_MISSING.format(name="CIPSFTTrainer")) from error
    return SFTTrainer


def _import_gkd():
    import warnings

    try:
        with warnings.catch_warnings():  # TRL's notice about trl.experimental; the user's environment is left alone
            warnings.filterwarnings("ignore", message=".*trl.experimental.*")
            from trl.experimental.gkd import GKDTrainer
    except ImportError as error:
        raise ImportError(_MISSING.format(name="CIPGKDTrainer")) from error
    return GKDTrainer


def _import_distillation():
    try:
        from trl import DistillationTrainer
    except ImportError as error:
        raise ImportError(_MISSING.format(name="CIPDistillationTrainer")) from error
    return DistillationTrainer


_PARENTS = {"CIPSFTTrainer": (_import_sft, "trl.SFTTrainer", False),
            "CIPGKDTrainer": (_import_gkd, "trl GKDTrainer", True),
            "CIPDistillationTrainer": (_import_distillation, "trl.DistillationTrainer", False)}
"""name -> (import of the parent, its name, whether its compute_loss returns the student's outputs)"""

_CLASSES: dict[str, type] = {}


def _build(name: str) -> type:
    if name not in _CLASSES:
        load, parent_name, reuses = _PARENTS[name]
        _CLASSES[name] = type(name, (CIPTrainerMixin, load()), {
            "__doc__": f"{parent_name} with the CIP term added to its loss and `cip` in its metrics.",
            "__module__": __name__, "cip_reuses_outputs": reuses})
    return _CLASSES[name]


def __getattr__(name: str):
    """The trainers are built on first access, so a missing TRL only matters when one is used."""
    if name in _PARENTS:
        return _build(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CIPDistillationTrainer", "CIPGKDTrainer", "CIPSFTTrainer"]
