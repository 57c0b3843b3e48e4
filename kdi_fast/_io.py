"""Atomic file writes: a temporary file in the target's directory, renamed over the target, so a reader (or a
resumed run) sees the old file or the new one, never half of one. Every file kdi_fast writes goes through here."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic"]


def _file_mode() -> int:
    """The mode a plain open() would give a new file (0o666 less the umask); mkstemp would give 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary path beside `path`, then rename it to `path` (ordinary permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def write_json_atomic(path: str | Path, obj, **dumps) -> Path:
    """json.dumps(obj, indent=2, ensure_ascii=False, **dumps) + newline, written to `path` atomically."""
    return write_text_atomic(path, json.dumps(obj, **{"indent": 2, "ensure_ascii": False, **dumps}) + "\n")


def read_safetensors(path: str | Path, fmt: str, what: str) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors file written with metadata format=`fmt`; ValueError naming `what`
    the file should hold when its format is another."""
    from ._extras import needs

    with needs("models"):
        from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != fmt:
            raise ValueError(f"{path} is not a{'n' if what[0] in 'AEIOU' else ''} {what} file "
                             f"(format {meta.get('format')!r})")
        return meta, {name: f.get_tensor(name) for name in f.keys()}
