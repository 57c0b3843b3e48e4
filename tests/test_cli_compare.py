"""`kdi compare` end to end on tiny models: the files, their numbers (= the metric functions' on the saved
results), resuming, input errors; and one slow run of the embedded default on the real SmolLM2 model."""

import csv
import json
import math

import pytest

from kdi_fast.cli import main
from kdi_fast.metrics import entropy, gini, overlap_at_k, simple_complex
from kdi_fast.report.markdown import fmt


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm_tokenizer):
    from kdi_fast.models import tiny_causal_lm

    root = tmp_path_factory.mktemp("compare")
    dirs = {}
    for name, seed in (("teacher", 0), ("other", 1)):
        model = tiny_causal_lm("llama", num_layers=2, seed=seed)
        model.save_pretrained(root / name)
        smollm_tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    data = root / "prompts.jsonl"
    data.write_text(
        '{"id": "cat", "prompt": "The small black cat slept all day on the warm mat", "target": " today"}\n'
        '{"id": "sum", "prompt": "Tom has 4 marbles and buys 3 more marbles", "target": " 7"}\n')
    return root, dirs, data


def _args(root, dirs, data, out):
    return ["compare", "--teacher", str(dirs["teacher"]), "--student", "layers:1", str(dirs["other"]),
            "--data", str(data), "--out", str(out), "--n", "3", "--gen-tokens", "3", "--ks", "0.3,0.5,1",
            "--k", "0.5", "--max-simple-order", "1", "--quiet"]


@pytest.fixture(scope="module")
def run_once(setup):
    root, dirs, data = setup
    out = root / "out"
    assert main(_args(root, dirs, data, out)) == 0
    return out


def test_files_and_numbers_are_the_metric_functions(setup, run_once):
    from kdi_fast.engine.runner import load_results

    out = run_once
    for name in ("report.md", "summary.json", "per_prompt.csv", "figures/overlap_at_k.png",
                 "figures/top_interactions.png", "figures/strength_by_order.png", "figures/sorted_strength.png",
                 "figures/simple_vs_complex.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == "teacher" and summary["students"] == ["student-1L", "other"]
    teacher = load_results(out / "runs" / "teacher")
    student = load_results(out / "runs" / "other")
    assert list(teacher) == ["cat", "sum"]
    with open(out / "per_prompt.csv", newline="") as f:
        rows = {(r["id"], r["model"]): r for r in csv.DictReader(f)}
    for pid in ("cat", "sum"):
        t, s = teacher[pid], student[pid]
        assert t.n == 3 and s.players == t.players and s.target_ids == t.target_ids  # like=teacher
        assert float(rows[pid, "teacher"]["gini"]) == gini(t).item()
        assert float(rows[pid, "other"]["entropy"]) == entropy(s).item()
        assert float(rows[pid, "other"]["overlap@0.5"]) == overlap_at_k(t, s, 0.5).item()
        parts = simple_complex(s, t, max_simple_order=1, k=0.5)
        assert float(rows[pid, "other"]["overlap_complex@0.5"]) == parts["overlap_complex"].item()
    ginis = [gini(student[p]).item() for p in ("cat", "sum")]
    assert summary["models"]["other"]["metrics"]["gini"]["mean"] == pytest.approx(sum(ginis) / 2, abs=1e-15)
    text = (out / "report.md").read_text()
    assert f"| cat | 3 | {fmt(gini(teacher['cat']).item())} |" in text
    assert "student-1L" in text and "1 of the teacher's 2 layers" in text
    assert summary["interaction_settings"]["n_players"] == 3 and summary["timings_s"]["total"] > 0
    assert summary["settings"]["extractor"] == "last_number"  # the default for a prompt file


def test_second_run_resumes(setup, run_once):
    root, dirs, data = setup
    before = json.loads((run_once / "summary.json").read_text())
    assert main(_args(root, dirs, data, run_once)) == 0
    for label in ("teacher", "student-1L", "other"):
        run = json.loads((run_once / "runs" / label / "summary.json").read_text())
        assert run["computed"] == 0 and run["skipped"] == 2
    after = json.loads((run_once / "summary.json").read_text())
    assert after["models"]["other"]["metrics"] == before["models"]["other"]["metrics"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ks", "0,0.5"], "--ks"),
        (["--student", "layers:x"], "layers:K"),
        (["--teacher", "/nonexistent/model"], "not a directory"),
        (["--k", "2"], "--k"),
        (["--n", "0"], "--n"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    assert main(["compare", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_student_labels():
    from kdi_fast.cli.compare import parse_layers, student_labels

    assert parse_layers("layers:12") == 12 and parse_layers("layers:0,5") == [0, 5] and parse_layers("m") is None
    assert student_labels(["layers:12", "a/b/model", "x/model", "layers:0,5"]) == [
        "student-12L", "model", "model-2", "student-2L"]


@pytest.mark.slow
def test_default_run_on_smollm2(tmp_path):
    """The embedded default (SmolLM2-135M-Instruct and a student made of its layers), cut to two prompts."""
    from kdi_fast.engine.runner import load_results

    out = tmp_path / "default"
    assert main(["compare", "--out", str(out), "--limit", "2", "--gen-tokens", "8", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    teacher = load_results(out / "runs" / "teacher")
    student = load_results(out / "runs" / summary["students"][0])
    assert list(teacher) == ["green-hand", "doctor-visit"]  # the first two default prompts
    for pid in teacher:
        assert teacher[pid].n == 8 and teacher[pid].model_name != student[pid].model_name
        assert teacher[pid].matching_error() < 1e-8
    assert summary["settings"]["extractor"] == "first_word"  # built-in prompts are short completions
    k = summary["settings"]["k_main"]
    overlaps = [overlap_at_k(teacher[p], student[p], k).item() for p in teacher]
    got = summary["models"][summary["students"][0]]["metrics"][f"overlap@{k:g}"]["mean"]
    assert got == pytest.approx(sum(overlaps) / 2, abs=1e-15)
    assert not any(math.isnan(x) for x in overlaps)
    text = (out / "report.md").read_text()
    assert fmt(gini(teacher["green-hand"]).item()) in text
