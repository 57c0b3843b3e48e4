"""Which implementation runs each op: the compiled module (_C), Triton, or plain torch.

Automatic choice, per op and per tensor device (quiet fallback):
  CUDA tensor: cuda (the _C extension built with CUDA) -> triton -> torch
  CPU tensor:  cpp  (the _C extension)                  -> torch
Triton on a CPU tensor (TRITON_INTERPRET=1, the interpreter) is used only when forced: it is a test vehicle.
KDI_FAST_BACKEND=<cuda|triton|cpp|torch> forces one backend for every op that implements it and raises when it
is not usable for the tensor at hand; ops without such an implementation keep their automatic choice.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("cuda", "triton", "cpp", "torch")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}

# op name -> the backends it implements; filled by the modules in kdi_fast.ops as they are imported.
OPS: dict[str, tuple[str, ...]] = {}


def register_op(name: str, backends: tuple[str, ...]) -> None:
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"op {name!r}: unknown backends {sorted(unknown)}; known: {BACKENDS}")
    OPS[name] = tuple(backends)


@functools.lru_cache(maxsize=None)
def _compiled() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("kdi_fast._C"), ""
    except ImportError as err:  # not built (e.g. a source checkout without `pip install -e .`)
        return None, f"kdi_fast._C could not be imported ({err}); build it with `pip install -e .`"


def compiled() -> ModuleType | None:
    """The compiled module kdi_fast._C, or None when it was not built."""
    return _compiled()[0]


def build_info() -> dict:
    """What _C was compiled with: version, openmp, openmp_threads, cuda, cuda_archs, compiler ({} if absent)."""
    module = compiled()
    return dict(module.build_info()) if module is not None else {}


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton() -> tuple[str | None, str]:
    try:
        import triton  # noqa: F401

        return triton.__version__, ""
    except Exception as err:  # a broken triton install must not break kdi_fast
        return None, f"triton is not importable ({type(err).__name__}: {err}); install it with `pip install triton`"


def triton_version() -> str | None:
    return _triton()[0]


def usable(backend: str, device: torch.device) -> tuple[bool, str]:
    """Whether `backend` can run on tensors of `device`, and if not, why (a sentence that says what to do)."""
    device = torch.device(device)
    if backend == "torch":
        return True, ""
    if backend == "cpp":
        if device.type != "cpu":
            return False, f"the cpp backend runs on CPU tensors only (got a {device.type} tensor)"
        return compiled() is not None, _compiled()[1]
    if backend == "cuda":
        if device.type != "cuda":
            return False, f"the cuda backend needs a CUDA tensor (got a {device.type} tensor)"
        if compiled() is None:
            return False, _compiled()[1]
        if not build_info().get("cuda"):
            return False, "kdi_fast._C was built without CUDA; rebuild with KDI_FAST_CUDA=1 pip install -e ."
        return True, ""
    if backend == "triton":
        if triton_version() is None:
            return False, _triton()[1]
        if device.type == "cuda":
            return True, ""
        if device.type == "cpu" and triton_interpreting():
            return True, ""
        return False, "triton needs a CUDA tensor, or TRITON_INTERPRET=1 (set before import) for CPU tensors"
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def forced() -> str | None:
    name = os.environ.get("KDI_FAST_BACKEND", "").strip().lower()
    if not name or name == "auto":
        return None
    if name not in BACKENDS:
        raise ValueError(f"KDI_FAST_BACKEND={name!r} is not a backend; use one of {', '.join(BACKENDS)} or auto")
    return name


def choose(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that runs `op` on tensors of `device`: `backend` if given, else KDI_FAST_BACKEND, else auto."""
    implemented = OPS[op]
    wanted = backend or forced()
    if wanted is not None and (backend is not None or wanted in implemented):
        if wanted not in implemented:
            raise ValueError(f"op {op!r} has no {wanted!r} implementation; it has {implemented}")
        ok, why = usable(wanted, device)
        if not ok:
            raise RuntimeError(f"backend {wanted!r} was asked for op {op!r} but is not usable: {why}")
        return wanted
    device = torch.device(device)
    for name in _AUTO_ORDER.get(device.type, ("torch",)):
        if name in implemented and usable(name, device)[0]:
            return name
    return "torch"
