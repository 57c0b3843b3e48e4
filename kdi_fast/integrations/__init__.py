"""Drop-in CIP for the trainers people already use: hf (transformers.Trainer) and trl (SFTTrainer, GKDTrainer).

Import the submodules (kdi_fast.integrations.hf / .trl); nothing here imports transformers or TRL eagerly.
"""

_LAZY = {"CIPTrainer": "hf", "CIPTrainerMixin": "hf", "CIPSFTTrainer": "trl", "CIPGKDTrainer": "trl"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
