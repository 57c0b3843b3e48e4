"""One run per output directory: OUT/.kdi.lock, held for the whole run, records who holds it.

The lock is an flock(2) on OUT/.kdi.lock; the file holds the holder's host, pid, command and start time, which
is what another run is told when it finds the directory taken. The kernel drops an flock when its process dies,
so the lock of a run killed on this host is free at once: its record is left behind and taken over (with a
warning). A record naming another host is not taken over, since whether that process still runs cannot be
checked from here (and not every shared file system carries flocks between hosts): the message says to delete
the file once that run is over. A run that ends (normally or by an exception) removes the file.

Under torch.distributed there is one lock per launch: rank 0 takes it (the ranks share the directory) and every
rank learns the outcome, so all ranks fail alike. Within a process the lock is reentrant: the CLI takes it
before loading a model, the runner takes it again around its writes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOCK_FILE", "OutputLocked", "output_lock"]

LOCK_FILE = ".kdi.lock"


class OutputLocked(ValueError):
    """The output directory is held by another run (a ValueError: the CLI reports it as one line, exit 2)."""


@dataclass
class _Held:
    fd: int
    path: Path
    created_dir: bool
    depth: int = 1


_HELD: dict[Path, _Held] = {}  # lock file -> what this process holds


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike, *, command: str, option: str = "--out") -> Iterator[Path]:
    """Hold OUT/.kdi.lock for the duration of the block (creating OUT); yields the lock file's path.

    command: what is running (recorded, e.g. "kdi interactions"); option: the name of the output option in
    messages. Raises OutputLocked when another live run holds OUT (or a run on another host left its record),
    ValueError when OUT cannot be created or written (a file, read-only, ...).
    """
    out_dir = Path(out_dir).resolve()
    dist = _distributed()
    held, error = None, None
    if dist is None or dist.get_rank() == 0:
        try:
            held = _acquire(out_dir, command, option)
        except ValueError as err:
            error = err
    if dist is not None:  # rank 0 tells every rank whether it got the lock
        outcome = [None if error is None else (isinstance(error, OutputLocked), str(error))]
        dist.broadcast_object_list(outcome, src=0)
        if error is None and outcome[0] is not None:
            locked, message = outcome[0]
            error = (OutputLocked if locked else ValueError)(message)
    if error is not None:
        raise error
    try:
        yield out_dir / LOCK_FILE
    finally:
        if held is not None:
            _release(held)


def _distributed():
    dist = sys.modules.get("torch.distributed")  # only if torch is in use; this module does not need torch
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _acquire(out_dir: Path, command: str, option: str) -> _Held:
    path = out_dir / LOCK_FILE
    held = _HELD.get(path)
    if held is not None:
        held.depth += 1
        return held
    created = _make_dir(out_dir, option)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX (Windows): no flock to hold
        warnings.warn(f"kdi_fast: no file locks on this platform; make sure no other run writes to {out_dir}")
        return _remember(_Held(fd=-1, path=path, created_dir=created))
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"{option} {out_dir}: cannot create files there ({err.strerror}); choose a "
                             f"writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read_record(fd)
            os.close(fd)
            raise OutputLocked(f"{option} {out_dir} is in use by {_describe(record)} (lock file {path}); wait for "
                               f"it to finish, or write to another {option} directory") from None
        except OSError as err:
            os.close(fd)
            raise ValueError(f"{option} {out_dir}: the file system does not support file locks ({err.strerror}); "
                             f"write to a directory on a local disk") from None
        try:  # the holder we waited for may have removed the file between our open and our flock
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _read_record(fd)
    here = socket.gethostname()
    if previous and previous.get("host") not in (None, here):
        os.close(fd)
        raise OutputLocked(f"{option} {out_dir} is locked by {_describe(previous)} (lock file {path}); from "
                           f"{here} it cannot be checked whether that run still goes on: if it is over, delete "
                           f"{path}, else write to another {option} directory")
    if previous:
        warnings.warn(f"kdi_fast: taking over the lock of {_describe(previous)} in {out_dir}: that process no "
                      f"longer runs (killed?)", stacklevel=4)
    record = {"host": here, "pid": os.getpid(), "command": command,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return _remember(_Held(fd=fd, path=path, created_dir=created))


def _remember(held: _Held) -> _Held:
    _HELD[held.path] = held
    return held


def _release(held: _Held) -> None:
    held.depth -= 1
    if held.depth:
        return
    del _HELD[held.path]
    try:
        held.path.unlink(missing_ok=True)  # before the flock is dropped: nobody else can hold this file now
    finally:
        if held.fd >= 0:
            os.close(held.fd)
    if held.created_dir:
        with contextlib.suppress(OSError):  # a run that wrote nothing leaves no empty directory behind
            held.path.parent.rmdir()


def _make_dir(out_dir: Path, option: str) -> bool:
    """Create out_dir (and its parents); True if it did not exist. Errors name the option."""
    if out_dir.is_dir():
        return False
    if out_dir.exists() or any(p.exists() and not p.is_dir() for p in out_dir.parents):
        raise ValueError(f"{option} {out_dir}: a file is in the way (not a directory); give a directory path")
    try:
        out_dir.mkdir(parents=True)
    except FileExistsError:  # created meanwhile by another process
        return False
    except OSError as err:
        raise ValueError(f"{option} {out_dir}: cannot create the directory ({err.strerror}); choose a writable "
                         f"location") from None
    return True


def _read_record(fd: int) -> dict:
    """The holder's record in the lock file ({} when empty or unreadable)."""
    try:
        size = os.fstat(fd).st_size
        record = json.loads(os.pread(fd, min(size, 1 << 16), 0).decode()) if size else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict) -> str:
    if not record.get("pid"):
        return "another process (it has not recorded itself yet)"
    text = f"pid {record['pid']} on host {record.get('host', '?')}"
    if record.get("command") or record.get("started"):
        text += f" ({record.get('command', 'a run')}, started {record.get('started', '?')})"
    return text
