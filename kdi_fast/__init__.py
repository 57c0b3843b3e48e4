"""kdi_fast: explain and improve knowledge distillation of language models through interactions.

The core op: `mobius(v)` turns the outputs v(x_T) of a model on all 2^n masked inputs into the Harsanyi
interactions I_S, and `zeta(I)` turns them back. `python -m kdi_fast info` reports what was built.
"""

from ._version import __version__
from .ops import MAX_DENSE_PLAYERS, mobius, num_subsets, subsets, zeta

__all__ = ["__version__", "MAX_DENSE_PLAYERS", "mobius", "num_subsets", "subsets", "zeta"]

# Names imported on first use (name -> submodule), so `import kdi_fast` stays light.
_LAZY = {
    **dict.fromkeys(("gini", "entropy", "overlap_at_k", "by_order", "simple_complex", "normalise", "agreement",
                     "fidelity", "rouge_l", "mean_ci", "spearman"), "metrics"),
    "compare_models": "metrics.comparison",
    **dict.fromkeys(("compute_interactions", "InteractionResult", "SparseInteractionResult", "compute_values"),
                    "engine"),
    "write_report": "report",
    **dict.fromkeys(("CIP", "KDLoss", "kd_loss", "HiddenStateL2"), "losses"),
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
