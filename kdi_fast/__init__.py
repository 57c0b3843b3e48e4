"""kdi_fast: explain and improve knowledge distillation of language models through interactions.

The core op: `mobius(v)` turns the outputs v(x_T) of a model on all 2^n masked inputs into the Harsanyi
interactions I_S, and `zeta(I)` turns them back. `python -m kdi_fast info` reports what was built.
"""

from ._version import __version__
from .ops import MAX_DENSE_PLAYERS, mobius, num_subsets, subsets, zeta

__all__ = ["__version__", "MAX_DENSE_PLAYERS", "mobius", "num_subsets", "subsets", "zeta"]
