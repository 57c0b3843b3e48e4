"""Checks of command-line values shared by every subcommand: each raises a one-line ValueError that names the
option and says what to give instead (kdi's main turns it into `kdi CMD: error: ...`, exit status 2).

    check_number("--lr", args.lr, low=0, low_open=True)        # finite and > 0
    check_number("--salient", args.salient, low=0, high=1, high_open=True)
    check_seed("--seed", args.seed); device = parse_device("--device", args.device)
    check_model_dir("--teacher", args.teacher)                # config and whole weight files, before loading
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["check_number", "check_seed", "parse_device", "check_model_dir"]

_SEED_LIMIT = 2**63  # torch.manual_seed takes seeds in [0, 2^64); numpy's and Python's are happy below 2^63


def check_number(flag: str, value: float | int | None, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError unless value is None or a finite number in [low, high] (open ends when *_open)."""
    if value is None:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    within = ""
    if bounds:
        within = " " + " and ".join(bounds)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{flag} must be a finite number{within}, got {value}")


def check_seed(flag: str, value: int | None) -> None:
    """A seed is an int in [0, 2^63)."""
    if value is not None and not (isinstance(value, int) and 0 <= value < _SEED_LIMIT):
        raise ValueError(f"{flag} must be an integer in [0, 2^63), got {value}")


def parse_device(flag: str, text: str | None):
    """'cpu', 'cuda', 'cuda:N' (or 'mps' where available) -> torch.device; None -> cuda when available, else cpu.
    Under torchrun a bare 'cuda' becomes cuda:LOCAL_RANK."""
    import torch

    if text is None:
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {text!r}: use cpu, cuda or cuda:N")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {text!r}: no MPS (Apple GPU) device is available here; use {flag} cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {text!r}: no CUDA device is available here; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        if device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def check_model_dir(flag: str, spec: str | os.PathLike) -> None:
    """A model argument: the default model's name and hub ids pass; a directory must hold a readable config and whole
    weight files (kdi_fast.models.check_model_dir); the error names the option."""
    from ..models import DEFAULT_MODEL, check_model_dir as check, is_hub_id

    if str(spec).lower() in (DEFAULT_MODEL, "default") or is_hub_id(spec):
        return  # a hub id is checked by from_pretrained (its error says how to use a local directory)
    if not Path(spec).is_dir():
        raise ValueError(f"{flag} {str(spec)!r} is not a directory; give a Hugging Face model directory (saved "
                         f"with save_pretrained), a hub id (org/name) or '{DEFAULT_MODEL}' for "
                         f"SmolLM2-135M-Instruct")
    try:
        check(spec)
    except ValueError as err:
        raise ValueError(f"{flag} {err}") from None
