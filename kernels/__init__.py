"""Triton kernels of kdi_fast (installed as kdi_fast.kernels), one module per kernel family.

  mobius          the in-place subset/superset butterfly behind kdi_fast.mobius / zeta (backend "triton")
  masked_embed    the masked input batch built from mask bits, and its backward
  target_logprob  online log-sum-exp over the vocabulary + target gather, and grad_logits in place

Each kernel has a plain-torch twin in kdi_fast.reference; the autograd Functions that call these kernels live
in kdi_fast.ops. The kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set before this package is imported). Block sizes are picked in Python: large blocks
under the interpreter (it pays per program instance), register-sized ones on a GPU.
"""

from __future__ import annotations

import gc
import os

import torch


def interpreting() -> bool:
    """Whether Triton runs in its interpreter (TRITON_INTERPRET=1): CPU tensors, numpy semantics, slow."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(*tensors: torch.Tensor) -> None:
    """Raise if the tensors cannot be handed to a Triton kernel here (a CPU tensor without the interpreter)."""
    for t in tensors:
        if t.device.type != "cuda" and not (t.device.type == "cpu" and interpreting()):
            raise RuntimeError(f"Triton kernels need CUDA tensors (got a {t.device.type} tensor); for CPU tensors "
                               f"set TRITON_INTERPRET=1 before importing kdi_fast, or use the torch backend")


def release_interpreter_copies() -> None:
    """Under the interpreter, free what a launch left behind: triton 3.7's interpreter keeps each launch's argument
    storages in a reference cycle (a recursive closure in InterpretedFunction._init_args_hst), which only the cycle
    collector frees, so a loop of launches over [chunk, vocab] tensors would hold many chunks at once. Collecting
    after a launch gives interpreted runs the memory profile of compiled ones. No-op on a GPU."""
    if interpreting():
        gc.collect()
