"""The experiment script runs end to end (--quick) on a tiny teacher and writes its JSON, CSV, tables and plots."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_experiment_quick_on_a_tiny_teacher(tmp_path, monkeypatch):
    from kdi_fast.models import load_tokenizer, tiny_causal_lm

    teacher = tmp_path / "teacher"
    tiny_causal_lm("llama", hidden_size=32, num_layers=2, num_heads=4, seed=1).save_pretrained(teacher)
    load_tokenizer("smollm2").save_pretrained(teacher)
    spec = importlib.util.spec_from_file_location("experiment_kd", ROOT / "benchmarks" / "experiment_kd.py")
    experiment = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "experiment_kd", experiment)  # its dataclasses look their module up
    spec.loader.exec_module(experiment)
    args = ["--quick", "--teacher", str(teacher), "--student", "layers:1", "--methods", "kd,gkd",
            "--cip-methods", "kd", "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    assert experiment.main(args) == 0
    report = json.loads((tmp_path / "results" / "experiment_kd_quick.json").read_text())
    names = [r["run"]["name"] for r in report["runs"]]
    assert names == ["kd", "kd+cip", "gkd", "kd-noise1", "kd-noise2", "kd-noise5", "kd-T2", "kd-T5"]
    for run in report["runs"]:
        assert run["agreement"] is not None and run["fidelity"] is not None
        if run["run"]["part"] == "methods":  # interactions only where part 1 needs them
            assert "gini" in run and "overlap" in run
        else:
            assert "gini" not in run
    assert "gini" in report["teacher"] and "overlap" in report["student_before"]
    rows = list(csv.DictReader((tmp_path / "results" / "experiment_kd_quick.csv").open()))
    assert [r["model"] for r in rows] == ["teacher", "student_before", *names]
    table = (tmp_path / "results" / "experiment_kd_quick.md").read_text()
    assert "| kd+cip |" in table and "teacher noise sigma" in table and "| T |" in table
    for png in ("interactions", "noise_temperature"):
        assert (tmp_path / "results" / f"experiment_kd_quick_{png}.png").stat().st_size > 0
    # Run again: everything is found done and the results are rewritten the same.
    assert experiment.main(args) == 0
    again = json.loads((tmp_path / "results" / "experiment_kd_quick.json").read_text())
    assert [r["rouge_l"] for r in again["runs"]] == [r["rouge_l"] for r in report["runs"]]
