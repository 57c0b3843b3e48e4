"""The CIP loss in TRL's trainers: CIPSFTTrainer (trl.SFTTrainer) and CIPGKDTrainer (trl.experimental.gkd's
GKDTrainer), each adding weight * CIP in compute_loss and logging `cip` beside TRL's own metrics.

    from kdi_fast.integrations.trl import CIPGKDTrainer
    trainer = CIPGKDTrainer(model=student, teacher_model=teacher, args=GKDConfig(...), train_dataset=chats,
                            processing_class=tokenizer, cip=CIP(m=3, weight=0.1, tokenizer=tokenizer))

TRL is an optional extra (pip install 'kdi_fast[trl]'); without it, using these classes raises an ImportError
that says so, and importing kdi_fast never fails. GKDTrainer's student outputs are reused as CIP's full-input
forward; SFTTrainer computes its loss through a fused LM head without logits, so CIP runs the full input itself.
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


_CLASSES: dict[str, type] = {}


def _build(name: str) -> type:
    if name not in _CLASSES:
        if name == "CIPSFTTrainer":
            parent = _import_sft()
            cls = type(name, (CIPTrainerMixin, parent), {
                "__doc__": "trl.SFTTrainer with the CIP term added to its loss and `cip` in its metrics.",
                "__module__": __name__, "cip_reuses_outputs": False})
        else:
            parent = _import_gkd()
            cls = type(name, (CIPTrainerMixin, parent), {
                "__doc__": "trl GKDTrainer with the CIP term added to its loss and `cip` in its metrics.",
                "__module__": __name__})
        _CLASSES[name] = cls
    return _CLASSES[name]


def __getattr__(name: str):
    """CIPSFTTrainer and CIPGKDTrainer are built on first access, so a missing TRL only matters when used."""
    if name in ("CIPSFTTrainer", "CIPGKDTrainer"):
        return _build(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CIPGKDTrainer", "CIPSFTTrainer"]
