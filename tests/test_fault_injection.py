"""Fault injection: `kdi interactions` SIGKILLed at seeded random points (at a random moment, or inside a file
write: after part of the bytes, or with the whole temporary file written but not yet renamed) and then run
again to completion gives results bitwise equal to an uninterrupted run, and leaves no temporary file behind."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import result_contents

PROMPTS = [
    {"id": "cat", "prompt": "The small cat sat on the warm mat", "target": " today"},
    {"id": "sky", "prompt": "Why is the sky blue during the day?"},
    {"id": "key", "prompt": "She lost her key and could not open the door", "players": [[0], [2, 3], [8]]},
    {"id": "sum", "prompt": "Tom has four marbles and buys three more", "target": " seven"},
]

# Runs `kdi interactions` with every atomic file write counted; at write number KDI_KILL_WRITE (or the first write
# of a file named KDI_KILL_NAME) the process kills itself with SIGKILL, either after writing half of the temporary
# file (partial) or with the whole temporary file written but not renamed (before_rename). KDI_KILL_AFTER_S
# instead kills it that many seconds after the imports.
_DRIVER = '''
import os, signal, sys, threading
from pathlib import Path
from kdi_fast import _io

kill_write = int(os.environ.get("KDI_KILL_WRITE", "0"))
kill_name = os.environ.get("KDI_KILL_NAME")
stage = os.environ.get("KDI_KILL_STAGE", "before_rename")
writes = [0]
original = _io.atomic_write

def atomic_write(path, write):
    def counted(tmp):
        write(tmp)
        writes[0] += 1
        if writes[0] == kill_write or Path(path).name == kill_name:
            if stage == "partial":
                data = Path(tmp).read_bytes()
                Path(tmp).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return original(path, counted)

_io.atomic_write = atomic_write
from kdi_fast.cli import main
if float(os.environ.get("KDI_KILL_AFTER_S", "0")) > 0:  # counted from here: after the imports
    threading.Timer(float(os.environ["KDI_KILL_AFTER_S"]), os.kill, (os.getpid(), signal.SIGKILL)).start()
sys.exit(main(sys.argv[1:]))
'''


def _contents(out: Path) -> dict:
    """Every result, bitwise (conftest.result_contents), and the summary's results but their timings."""
    summary = json.loads((out / "summary.json").read_text())
    entries = [{k: v for k, v in e.items() if k not in ("seconds", "computed_by_rank")} for e in summary["results"]]
    return {**result_contents(out), "summary": entries}


@pytest.mark.slow
def test_sigkill_at_seeded_random_points_then_resume_is_bitwise_equal(tmp_path, smollm_tokenizer):
    from kdi_fast.models import tiny_causal_lm

    model = tmp_path / "model"
    tiny_causal_lm("llama", num_layers=2, seed=0).save_pretrained(model)
    smollm_tokenizer.save_pretrained(model)
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)

    def argv(out):
        return ["interactions", "--model", str(model), "--data", str(data), "--out", str(out), "--n", "4",
                "--target-tokens", "2", "--quiet"]

    def run_cli(out):  # a fresh process, like the killed ones: no state left by other tests in this one
        proc = subprocess.run([sys.executable, "-m", "kdi_fast", *argv(out)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]

    run_cli(tmp_path / "reference")
    reference = _contents(tmp_path / "reference")

    rng = random.Random(20261201)
    out = tmp_path / "killed"
    kills = 0
    # a run writes the manifest, one file per prompt it computes, then the summary: kill inside each kind of write
    # (write 2 and 3 are results whenever prompts remain), and at two random moments; in a seeded random order
    stages = ["partial", "before_rename"]
    plans = [{"KDI_KILL_NAME": "manifest.json", "KDI_KILL_STAGE": rng.choice(stages)},
             {"KDI_KILL_WRITE": "2", "KDI_KILL_STAGE": "partial"},
             {"KDI_KILL_WRITE": "3", "KDI_KILL_STAGE": "before_rename"},
             {"KDI_KILL_NAME": "summary.json", "KDI_KILL_STAGE": rng.choice(stages)}]
    plans += [{"KDI_KILL_AFTER_S": f"{rng.uniform(0.2, 4.0):.3f}"} for _ in range(2)]
    rng.shuffle(plans)
    for plan in plans:
        env = {**os.environ, **plan}
        proc = subprocess.run([sys.executable, str(driver), *argv(out)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode in (0, -9), proc.stderr[-2000:]
        kills += proc.returncode == -9
    assert kills >= 2  # the manifest and summary kills always fire (the others when prompts remain, or in time)
    run_cli(out)
    assert _contents(out) == reference
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
