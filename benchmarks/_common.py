"""What the benchmark scripts share: a description of the machine, and writing result files whole."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from kdi_fast import _backend
from kdi_fast._io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "results_dir", "cpu_name", "machine", "median_interval", "write_text_atomic"]


def results_dir(quick: bool) -> Path:
    """benchmarks/results, or benchmarks/results/quick for --quick runs (which never replace the quoted results)."""
    return RESULTS / "quick" if quick else RESULTS


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU, cores, platform, versions, torch threads, GPU (or None) and what kdi_fast._C was built with."""
    return {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "build": _backend.build_info()}


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median: order statistics (k, n - 1 - k) with binomial(n, 1/2) coverage."""
    n = len(values)
    ordered = sorted(values)
    best = (ordered[0], ordered[-1])
    for k in range(n // 2):
        coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        if coverage < confidence:
            break
        best = (ordered[k], ordered[n - 1 - k])
    return best
