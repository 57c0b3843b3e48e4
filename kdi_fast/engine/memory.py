"""Working memory: the budget of a run (its default and parsing) and a meter of the tensor memory a block allocates.

The budget bounds the engine's working memory beyond the weights: activations of one forward, the stored keys
and values of the prefix tree's current path, and the LM head's logits chunk.
"""

from __future__ import annotations

import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_GIB = 1 << 30


def parse_memory(value) -> int | None:
    """A memory size: None, a number of bytes, or a string like "512MB", "2GiB", "1.5G" (powers of 1024)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"memory_budget must be a number of bytes or a size like '2GB', got {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", value)
        if not match:
            raise ValueError(f"memory_budget {value!r}: give a size like '512MB', '2GB' or a number of bytes")
        scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
        size = int(float(match.group(1)) * scale)
    else:
        raise TypeError(f"memory_budget must be a number of bytes or a size like '2GB', got {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"memory_budget must be positive, got {value!r}")
    return size


def default_memory_budget(device: torch.device | str) -> int:
    """Half the free memory of a GPU; on CPU a quarter of the available RAM, at most 2 GiB."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(min(available * 0.25, 2 * _GIB))


class TensorMemoryMeter(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the block and alive at the same time (any device).

    Counts every fresh storage an aten op returns (views and in-place results share an input's storage and are
    not counted), until it is freed. Weights and other tensors made before the block are not counted; buffers
    that kernels allocate internally and free before returning are not seen. Slows every op a little:
    measure time separately.

        with TensorMemoryMeter() as meter:
            run()
        meter.peak  # bytes
    """

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self._live: dict[tuple[str, int], tuple[object, int]] = {}

    def current(self) -> int:
        """Bytes alive now (of the storages allocated inside the block)."""
        self._sweep()
        return sum(size for _, size in self._live.values())

    def _sweep(self) -> None:
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        fresh = []
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key is None or key in inputs or (key in self._live and not self._live[key][0].expired()):
                continue
            fresh.append((key, StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        if fresh:
            self._sweep()
            for key, ref, size in fresh:
                self._live[key] = (ref, size)
            self.peak = max(self.peak, sum(size for _, size in self._live.values()))
        return out


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
        return None
    if storage.nbytes() == 0:
        return None
    return (str(t.device), storage.data_ptr())
