"""Data parallel runs: `kdi interactions` under torchrun with 2 CPU processes (gloo) writes the same results as
one process, each rank computing its shard (prompts rank, rank + 2, ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdi_fast.cli import main

PROMPTS = ["The small cat sat on the mat", "Birds can fly and fish can swim", "Paris is the capital of France",
           "She opened the door with a key", "Two plus three makes five"]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, smollm_tokenizer):
    from kdi_fast.engine import InteractionResult
    from kdi_fast.models import tiny_causal_lm

    model_dir = tmp_path / "model"
    tiny_causal_lm("qwen2", seed=2).save_pretrained(model_dir)
    smollm_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(PROMPTS) + "\n")
    # --n-players, not --n: torchrun reads an abbreviated --n as one of its own options
    common = ["interactions", "--model", str(model_dir), "--data", str(data), "--n-players", "3",
              "--target-tokens", "2", "--device", "cpu", "--quiet"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same float reduction order
    try:
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "kdi_fast", *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "5 prompts: 5 computed, 0 already done" in run.stdout  # printed once, by rank 0

    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert [e["computed_by_rank"] for e in two["results"]] == [0, 1, 0, 1, 0]
    assert two["manifest"] == one["manifest"]
    for a, b in zip(one["results"], two["results"]):
        assert a["id"] == b["id"] and a["target"] == b["target"] and a["players"] == b["players"]
        ra = InteractionResult.load(tmp_path / "one" / a["file"])
        rb = InteractionResult.load(tmp_path / "two" / b["file"])
        assert ra.target_ids == rb.target_ids
        torch.testing.assert_close(ra.values, rb.values, rtol=0, atol=1e-9)
        torch.testing.assert_close(ra.interactions, rb.interactions, rtol=0, atol=1e-9)
