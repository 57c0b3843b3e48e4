"""One run per output directory: a second `kdi interactions` on the same --out is refused with the holder's pid
and host; the lock of a run killed on this host is taken over; a lock held on another host is reported, not
taken. Real processes throughout (the lock is about processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kdi_fast.cli import main

LOCK_NAME = ".kdi.lock"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm_tokenizer):
    from kdi_fast.models import tiny_causal_lm

    path = tmp_path_factory.mktemp("tiny-llama-lock")
    tiny_causal_lm("llama", seed=3).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


def _argv(model_dir, out, *extra):
    return ["interactions", "--model", str(model_dir), "--data", "builtin", "--n", "10", "--target-tokens", "2",
            "--device", "cpu", "--out", str(out), "--quiet", *extra]


def _kdi(*argv) -> list[str]:
    return [sys.executable, "-m", "kdi_fast", *map(str, argv)]


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_second_run_is_refused_and_a_killed_holder_is_taken_over(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    first = subprocess.Popen(_kdi(*_argv(model_dir, out)), env=_ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "manifest.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()[-2000:]  # started computing (40 prompts: a minute)
        second = subprocess.run(_kdi(*_argv(model_dir, out)), env=_ENV, capture_output=True, text=True,
                                timeout=300)
        first_was_running = first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert first_was_running
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdi interactions: error:"), second.stderr
    assert f"pid {first.pid}" in err[0] and socket.gethostname() in err[0] and str(out) in err[0]

    # The killed run left its lock file behind; a rerun on this host takes it over and resumes.
    assert f'"pid": {first.pid}' in (out / LOCK_NAME).read_text()
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {first.pid}"):
        assert main(_argv(model_dir, out, "--limit", "1")) == 0
    assert "1 prompts: 0 computed, 1 already done" in capsys.readouterr().out
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_lock_of_another_host_is_reported_not_taken(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": "other-host.example", "pid": 4242,
                                             "command": "kdi interactions", "started": "2026-01-01T00:00:00"}))
    assert main(_argv(model_dir, out, "--limit", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pid 4242" in err and "other-host.example" in err and LOCK_NAME in err
    assert not (out / "manifest.json").exists()  # nothing written


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, model_dir, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                             "command": "kdi interactions", "started": "2026-01-01T00:00:00"}))
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {dead.pid} on host"):
        assert main(_argv(model_dir, out, "--limit", "1")) == 0
    assert "1 prompts: 1 computed" in capsys.readouterr().out
    assert not (out / LOCK_NAME).exists()


def test_lock_is_reentrant_in_a_process_and_refused_to_another(tmp_path):
    """The CLI and the runner both take the lock in one process; a second process is refused while it is held,
    and the directory the lock created is removed when nothing was written into it."""
    from kdi_fast._lock import OutputLocked, output_lock

    out = tmp_path / "new" / "out"
    probe = ("import sys; from kdi_fast._lock import output_lock\n"
             "try:\n    output_lock(sys.argv[1], command='probe').__enter__()\n"
             "except ValueError as e:\n    print(e); sys.exit(3)\n")
    with output_lock(out, command="outer") as lock:
        with output_lock(out, command="inner"):
            assert json.loads(lock.read_text())["command"] == "outer"
        assert lock.exists()  # still held by the outer block
        other = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=60)
        assert other.returncode == 3 and f"pid {os.getpid()} on host {socket.gethostname()}" in other.stdout
    assert not lock.exists() and not out.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out .*file/sub: a file is in the way") as caught:
        with output_lock(tmp_path / "file" / "sub", command="x"):
            pass
    assert not isinstance(caught.value, OutputLocked)
