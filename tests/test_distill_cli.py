"""`kdi distill` end to end on tiny models saved to a temporary directory, including a run killed with SIGKILL
in the middle and resumed, and the errors it gives for bad input."""

from __future__ import annotations

import json
import os
import shutil
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
@pytest.mark.parametrize("seed", [0, 1])
def test_cli_run_killed_mid_way_resumes_to_the_same_weights(seed, teacher_dir, data_file, tmp_path):
    import random

    rng = random.Random(seed)  # the kill point: after a seeded number of steps plus a seeded delay (maybe mid-save)
    after_steps, delay = rng.randint(2, 6), rng.uniform(0.0, 0.3)
    killed = tmp_path / "killed"
    process = _launch(teacher_dir, data_file, killed)
    log = killed / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= after_steps:
            break
        time.sleep(0.02)
    time.sleep(delay)
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
    assert not (killed / "checkpoints").exists() and not list(killed.glob(".student*"))


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


# ---------------------------------------------------------------------------------------------------------------
# Safety and run identity (issue 10's distill cases), each through the command line
# ---------------------------------------------------------------------------------------------------------------


class _Payload:
    """A pickle that creates a directory when loaded as a general pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _finished(teacher_dir, data_file, out, *extra):
    assert main(_args(teacher_dir, data_file, out, "--steps", "2", "--checkpoint-every", "1", "--no-eval",
                      *extra)) == 0


def test_cli_malicious_pickles_in_out_are_never_run(teacher_dir, data_file, tmp_path, capsys):
    import pickle

    out = tmp_path / "out"
    _finished(teacher_dir, data_file, out, "--keep-checkpoints")
    record = json.loads((out / "run.json").read_text())
    record["result"] = None  # as if killed after its last checkpoint: the rerun resumes from it
    (out / "run.json").write_text(json.dumps(record))
    shutil.rmtree(out / "student")
    marker = tmp_path / "code-ran"
    checkpoint = next((out / "checkpoints").glob("checkpoint-*"))
    for name in ("optimizer.pt", "rng_state.pth"):
        (checkpoint / name).write_bytes(pickle.dumps({"state": _Payload(marker)}))
    (out / "checkpoint.pt").write_bytes(pickle.dumps(_Payload(marker)))  # the old loop's checkpoint file
    assert main(_args(teacher_dir, data_file, out, "--steps", "2", "--checkpoint-every", "1", "--no-eval")) == 2
    err = capsys.readouterr().err
    assert "could not be loaded safely" in err and str(checkpoint) in err
    assert not marker.exists()


def test_cli_rerun_with_other_data_or_teacher_is_refused(teacher_dir, data_file, tmp_path, capsys):
    from kdi_fast.models import tiny_causal_lm

    out = tmp_path / "out"
    _finished(teacher_dir, data_file, out)
    other_data = tmp_path / "other.jsonl"
    other_data.write_text("".join(json.dumps({"prompt": p, "response": r + "!"}) + "\n" for p, r in PAIRS))
    other_teacher = tmp_path / "teacher2"
    tiny_causal_lm("llama", hidden_size=32, num_layers=2, num_heads=4, seed=5).save_pretrained(other_teacher)
    for src in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(teacher_dir / src, other_teacher / src)
    capsys.readouterr()
    assert main(_args(teacher_dir, other_data, out, "--steps", "2", "--checkpoint-every", "1", "--no-eval")) == 2
    assert "data.train" in capsys.readouterr().err
    assert main(_args(other_teacher, data_file, out, "--steps", "2", "--checkpoint-every", "1", "--no-eval")) == 2
    err = capsys.readouterr().err
    assert "teacher.digest" in err and "--overwrite" in err
    before = json.loads((out / "run.json").read_text())["identity"]
    _finished(teacher_dir, other_data, out, "--overwrite")
    assert json.loads((out / "run.json").read_text())["identity"]["data"] != before["data"]


def test_failed_or_killed_run_leaves_nothing_that_blocks_the_corrected_rerun(teacher_dir, data_file, tmp_path):
    from kdi_fast.distill import DistillConfig, RunInterrupted, distill
    from kdi_fast.distill.datasets import load_examples
    from kdi_fast.models import load_model, load_tokenizer

    out = tmp_path / "out"
    teacher, tokenizer = load_model(teacher_dir), load_tokenizer(teacher_dir)
    student = load_model(teacher_dir)
    config = DistillConfig("kd", steps=3, batch_size=2, lr=1e-3, max_length=48, checkpoint_every=100)
    with pytest.raises(RunInterrupted):  # stopped before its first checkpoint: nothing to resume
        distill(teacher, student, tokenizer, load_examples(data_file), out, config, progress=False, stop_after=1)
    assert (out / "run.json").is_file() and not list(out.glob("checkpoints/checkpoint-*/kdi_checkpoint.json"))
    _finished(teacher_dir, data_file, out, "--lr", "5e-3")  # other settings: not refused
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 5e-3


def test_resume_repairs_a_damaged_last_log_line_and_removes_unfinished_checkpoints(teacher_dir, data_file,
                                                                                   tmp_path):
    from kdi_fast.distill import DistillConfig, RunInterrupted, distill
    from kdi_fast.distill.datasets import load_examples
    from kdi_fast.models import load_model, load_tokenizer

    out = tmp_path / "out"
    tokenizer, examples = load_tokenizer(teacher_dir), load_examples(data_file)
    config = DistillConfig("kd", steps=4, batch_size=2, lr=1e-3, max_length=48, checkpoint_every=2)
    with pytest.raises(RunInterrupted):
        distill(load_model(teacher_dir), load_model(teacher_dir), tokenizer, examples, out, config, progress=False,
                stop_after=3)
    log = out / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 4, "lo')  # killed mid-line
    unfinished = out / "checkpoints" / "checkpoint-3"  # killed mid-save: no kdi_checkpoint.json
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")
    with pytest.warns(UserWarning) as caught:
        distill(load_model(teacher_dir), load_model(teacher_dir), tokenizer, examples, out, config, progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "damaged last line" in messages and str(log) in messages and "checkpoint-3" in messages
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4]
    assert not (out / "checkpoints").exists() and not list(out.glob(".student.*"))
    # A damaged line that is not the last cannot be a kill mid-write: reported with the file's name.
    record = json.loads((out / "run.json").read_text())
    record["result"] = None
    (out / "run.json").write_text(json.dumps(record))
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{oops", *lines[2:]]) + "\n")
    with pytest.raises(RunInterrupted):  # the run restarts from scratch (no checkpoint left): the log is rewritten
        distill(load_model(teacher_dir), load_model(teacher_dir), tokenizer, examples, out, config, progress=False,
                stop_after=3)
    lines = log.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    log.write_text("\n".join(["{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=f"{log} line 1 is damaged"):
        distill(load_model(teacher_dir), load_model(teacher_dir), tokenizer, examples, out, config, progress=False)


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--temperature", "inf"), ("--cip", "nan"),
                                           ("--teacher-noise", "nan"), ("--lr", "-1")])
def test_cli_numeric_options_are_validated(option, value, teacher_dir, data_file, tmp_path, capsys):
    assert main(_args(teacher_dir, data_file, tmp_path / "out", option, value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and (option in err or option[2:].replace("-", "_") in err)


def test_cli_refuses_an_out_held_by_another_run(teacher_dir, data_file, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kdi_fast._lock import output_lock\n"
                               f"with output_lock({str(out)!r}, command='kdi distill'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        assert main(_args(teacher_dir, data_file, out, "--steps", "1")) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_cli_trainer_options(teacher_dir, data_file, tmp_path, capsys):
    """--grad-accum, --gradient-checkpointing, --bf16, --eval-every, --save-total-limit and --keep-checkpoints reach
    the trainer and do what they say."""
    out = tmp_path / "out"
    assert main(_args(teacher_dir, data_file, out, "--steps", "3", "--checkpoint-every", "1", "--grad-accum", "2",
                      "--gradient-checkpointing", "--bf16", "--eval-every", "1", "--save-total-limit", "2",
                      "--keep-checkpoints", "--no-eval")) == 0
    kept = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [1, 2, 3]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(e["seconds"] > 0 for e in log)
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["grad_accum"] == 2 and config["precision"] == "bf16" and config["gradient_checkpointing"]
    assert not (out / "student" / "training_args.bin").exists()  # no pickle among the outputs
    # A tracker: its files where it is installed, else a one-line error naming --report-to.
    import importlib.util

    code = main(_args(teacher_dir, data_file, tmp_path / "tb", "--steps", "1", "--report-to", "tensorboard",
                      "--no-eval"))
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        assert code == 0 and list((tmp_path / "tb").rglob("events.out.tfevents*"))
    else:
        assert code == 2 and "--report-to tensorboard" in capsys.readouterr().err


def test_cli_student_recipe_beyond_the_teacher_names_the_flag(teacher_dir, data_file, tmp_path, capsys):
    """`--student layers:9` on a smaller teacher: one line naming --student, before any training (no student/)."""
    out = tmp_path / "out"
    assert main(_args(teacher_dir, data_file, out, "--student", "layers:9")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--student layers:9" in errors[0] and "2 layers" in errors[0]
    assert not (out / "student").exists()
