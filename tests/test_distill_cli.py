"""`kdi distill` end to end on tiny models saved to a temporary directory, including a run killed with SIGKILL
in the middle and resumed, and the errors it gives for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from kdi_fast.cli import main

PAIRS = [("Spell this word backward: table", "elbat"), ("Calculate 2 + 3.", "5"),
         ("Reverse this list of words: red, green, blue", "blue, green, red"), ("Calculate 7 - 4.", "3"),
         ("What day of the week was May 1, 2020?", "Friday"), ("Spell this word backward: stone", "enots"),
         ("Calculate 1 + 1.", "2"), ("Spell this word backward: lamp", "pmal")]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from kdi_fast.models import load_tokenizer, tiny_causal_lm

    folder = tmp_path_factory.mktemp("teacher")
    tiny_causal_lm("llama", hidden_size=32, num_layers=2, num_heads=4, seed=1).save_pretrained(folder)
    load_tokenizer("smollm2").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    return path


def _args(teacher_dir, data_file, out, *extra):
    return ["distill", "--teacher", str(teacher_dir), "--student", "layers:1", "--data", str(data_file),
            "--eval-size", "2", "--batch-size", "2", "--lr", "1e-2", "--max-new-tokens", "4", "--out", str(out),
            "--no-progress", *extra]


def test_cli_distills_and_evaluates(teacher_dir, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(_args(teacher_dir, data_file, out, "--method", "gkd", "--steps", "2", "--temperature", "2",
                    "--interaction-prompts", "2", "--n-players", "4"))  # M = 15: K = floor(0.1 M) = 1
    assert rc == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student_before", "student_after"}
    assert summary["examples"] == 2
    for name in ("student_before", "student_after"):
        scores = summary["models"][name]
        assert {"rouge_l", "accuracy", "agreement", "fidelity"} <= set(scores)
        assert 0 <= scores["agreement"] <= 1 and 0 <= scores["rouge_l"] <= 100
        assert 0 <= scores["overlap"] <= 1 and 0 <= scores["gini"] <= 1
    assert summary["interaction_prompts"] == 2 and "overlap" not in summary["models"]["teacher"]
    assert (out / "eval" / "report" / "report.md").is_file()
    assert len(list((out / "eval" / "interactions" / "student_after").iterdir())) >= 2
    rows = [json.loads(line) for line in (out / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [r for _, r in PAIRS[-2:]]  # the held-out tail of the file
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method"] == "gkd" and run["config"]["temperature"] == 2.0
    assert run["train_examples"] == len(PAIRS) - 2 and run["result"]["steps"] == 2
    assert "distilled with gkd" in capsys.readouterr().out
    # The trained student loads as a plain Hugging Face model.
    from kdi_fast.models import load_model

    assert load_model(out / "student").config.num_hidden_layers == 1


def _launch(teacher_dir, data_file, out):
    command = [sys.executable, "-m", "kdi_fast", *_args(teacher_dir, data_file, out, "--method", "distillm",
                                                         "--steps", "8", "--checkpoint-every", "1", "--no-eval")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_cli_run_killed_mid_way_resumes_to_the_same_weights(teacher_dir, data_file, tmp_path):
    killed = tmp_path / "killed"
    process = _launch(teacher_dir, data_file, killed)
    log = killed / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3 and (killed / "checkpoint.pt").is_file():
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert json.loads((killed / "run.json").read_text())["result"] is None
    assert not (killed / "student").exists()

    resumed = _launch(teacher_dir, data_file, killed)
    straight = _launch(teacher_dir, data_file, tmp_path / "straight")
    for p in (resumed, straight):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    a = load_file(killed / "student" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


@pytest.mark.parametrize("extra, message", [
    (["--student", "layers:x"], "bad student recipe"),
    (["--data", "/no/such/file.jsonl"], "neither a file nor a built-in set"),
    (["--eval-size", "20"], "too few to hold out"),
    (["--method", "sft", "--teacher-noise", "1"], "never sees the teacher's logits"),
    (["--steps", "0"], "steps must be a positive integer"),
])
def test_cli_bad_input(extra, message, teacher_dir, data_file, tmp_path, capsys):
    args = _args(teacher_dir, data_file, tmp_path / "out")
    for i in range(0, len(extra), 2):  # later options override the defaults of _args
        args += extra[i:i + 2]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_method_is_an_argparse_error(teacher_dir, data_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_args(teacher_dir, data_file, tmp_path / "out", "--method", "nope"))
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
