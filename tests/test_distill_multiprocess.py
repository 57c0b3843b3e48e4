"""kdi distill in several processes on CPU (gloo): `torchrun --nproc_per_node 2` with per-process batch b ends with
the weights of one process with batch 2b (kd, gkd on-policy, kd + CIP), on examples of uneven lengths, so that the
token normalisation across processes and the process-independent on-policy sampling are both exercised; the same
for `accelerate launch` with the shipped FSDP config on CPU; and one process with 2 accumulated micro-batches of b
equals one batch of 2b."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

PAIRS = [("Spell this word backward: table", "elbat"), ("Calculate 2 + 3.", "5"),
         ("Reverse this list of words: red, green, blue, yellow, purple", "purple, yellow, blue, green, red"),
         ("Calculate 7 - 4.", "3"), ("What day of the week was May 1, 2020?", "Friday"),
         ("Spell this word backward: stone", "enots"), ("Calculate 11 + 1.", "12"),
         ("Spell this word backward: lamp", "pmal"), ("Name the colour of the sky on a clear day.", "blue")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from kdi_fast.models import load_tokenizer, tiny_causal_lm

    folder = tmp_path_factory.mktemp("mp")
    tiny_causal_lm("llama", hidden_size=32, num_layers=2, num_heads=4, seed=1).save_pretrained(folder / "teacher")
    load_tokenizer("smollm2").save_pretrained(folder / "teacher")
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    return folder / "teacher", data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(inputs, out, processes: int, batch: int, *extra, launcher: list[str] | None = None) -> dict:
    teacher, data = inputs
    args = ["distill", "--teacher", str(teacher), "--student", "layers:1", "--data", str(data), "--eval-size", "1",
            "--batch-size", str(batch), "--lr", "1e-2", "--max-new-tokens", "4", "--max-length", "40", "--steps", "2",
            "--out", str(out), "--no-progress", "--no-eval", *extra]
    if launcher is not None:
        command = [sys.executable, *launcher, "-m", "kdi_fast", *args]
    elif processes == 1:
        command = [sys.executable, "-m", "kdi_fast", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(_free_port()), "-m", "kdi_fast", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out / "student" / "model.safetensors")


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--method", "kd"], ["--method", "gkd"], ["--method", "kd", "--cip", "1.0"]],
                         ids=["kd", "gkd", "kd+cip"])
def test_two_processes_equal_one_with_the_double_batch(extra, inputs, tmp_path):
    one = _run(inputs, tmp_path / "one", 1, 4, *extra)
    two = _run(inputs, tmp_path / "two", 2, 2, *extra)
    _assert_close(one, two)
    log = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]
    if extra[1] == "gkd":  # the coin is drawn from the step: the same sources in both runs
        one_log = [json.loads(x) for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
        assert [e["source"] for e in log] == [e["source"] for e in one_log]
        assert "student" in {e["source"] for e in log}
    if "--cip" in extra:
        assert all(e["cip"] > 0 for e in log)


def test_accumulated_micro_batches_equal_one_batch(inputs, tmp_path):
    from kdi_fast.distill import DistillConfig, distill
    from kdi_fast.distill.datasets import load_examples
    from kdi_fast.models import load_model, load_tokenizer

    teacher_dir, data = inputs
    tokenizer, examples = load_tokenizer(teacher_dir), load_examples(data)
    weights = {}
    for name, batch, accum in (("one", 4, 1), ("accum", 2, 2)):
        student = load_model(teacher_dir)
        config = DistillConfig("kd", steps=2, batch_size=batch, grad_accum=accum, lr=1e-2, max_length=40)
        distill(load_model(teacher_dir), student, tokenizer, examples, tmp_path / name, config, progress=False)
        weights[name] = {k: v.clone() for k, v in student.state_dict().items()}
    _assert_close(weights["one"], weights["accum"])


@pytest.mark.slow
def test_accelerate_launch_with_the_shipped_fsdp_config_on_cpu(inputs, tmp_path):
    """examples/accelerate/fsdp.yaml (FSDP2, full shard) with its GPU settings switched to 2 CPU processes: the same
    weights as one process with the double batch."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = yaml.safe_load(open(os.path.join(root, "examples", "accelerate", "fsdp.yaml")))
    config.update(use_cpu=True, num_processes=2, mixed_precision="no", main_process_port=_free_port())
    path = tmp_path / "fsdp_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    one = _run(inputs, tmp_path / "one", 1, 4, "--method", "kd")
    sharded = _run(inputs, tmp_path / "fsdp", 2, 2, "--method", "kd", launcher=["-m", "accelerate.commands.launch",
                                                                                "--config_file", str(path)])
    assert json.loads((tmp_path / "fsdp" / "run.json").read_text())["identity"]["processes"] == 2
    _assert_close(one, sharded)
