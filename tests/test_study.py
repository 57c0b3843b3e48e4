"""The study (kdi_fast.study): task, statistics, and the --quick lab grid end to end (every method, both
maskings, resumption, report)."""

import json
import math

import numpy as np
import pytest

from kdi_fast.study import analysis
from kdi_fast.study.lab import KD_METHODS, grid, quick_config, run_lab, tuning_jobs
from kdi_fast.study.measure import answer_of, chance_overlap
from kdi_fast.study.task import digit_players, make_problem, make_splits, make_tokenizer


def test_problem_text_is_little_endian_addition():
    ex = make_problem(47, 589)
    assert ex.prompt == "7 4 _ _ + 9 8 5 _ ="
    assert ex.response == "6 3 6"
    words = ex.prompt.split()
    assert [words[i] for i in digit_players()] == ["7", "4", "_", "_", "9", "8", "5", "_"]
    with pytest.raises(ValueError, match="operands"):
        make_problem(10_000, 1)


def test_splits_are_disjoint_and_tokenizer_round_trips():
    sp = make_splits(teacher_train=300, train=100, val=50, test=50, seed=3)
    key = lambda e: tuple(sorted(e.id.split("+")))  # noqa: E731
    held = {key(e) for e in sp.val + sp.test}
    assert not held & {key(e) for e in sp.teacher_train}
    assert len(held) == 100 and {key(e) for e in sp.train} <= {key(e) for e in sp.teacher_train}
    tok = make_tokenizer()
    ids = tok(sp.test[0].prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) == 10 and tok.unk_token_id not in ids
    assert tok.decode(ids) == sp.test[0].prompt
    assert tok.pad_token == "_"
    assert answer_of("6 3 6 <eos> 1") == "6 3 6"


def test_chance_overlap_counts_subsets():
    c = chance_overlap(8)
    assert c["simple"] == pytest.approx(16 / 162) and c["complex"] == pytest.approx(9 / 93)


def test_bootstrap_interval_and_verdicts():
    ci = analysis.bootstrap_mean([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci["mean"] == 3.0 and 1.0 < ci["lo"] < 3.0 < ci["hi"] < 5.0
    assert analysis.verdict(ci) == "confirmed"
    assert analysis.verdict(ci, direction=-1) == "refuted"
    assert analysis.verdict(analysis.bootstrap_mean([-1.0, 1.0, -2.0, 2.0])) == "not separable"
    assert math.isnan(analysis.bootstrap_mean([1.0])["lo"])


def test_holm_adjusts_in_order():
    adjusted = analysis._holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_grid_has_every_method_with_and_without_cip_and_the_sweeps():
    cells = grid(quick_config())
    names = {c.name for c in cells}
    for size in ("student_s", "student_m"):
        for m in ("sft", *KD_METHODS):
            assert f"{size}_{m}" in names and f"{size}_{m}_cip0.5" in names
    assert {"student_s_kd_sigma5", "student_s_kd_T2"} <= names
    assert len(names) == len(cells)


def test_student_steps_are_given_per_size():
    from kdi_fast.study.lab import LabConfig

    assert [LabConfig().steps_for(size) for size in LabConfig().sizes] == list(LabConfig().student_steps)
    with pytest.raises(ValueError, match="one value per size"):
        LabConfig(student_steps=(350,))


def test_quick_lab_runs_every_method_and_masking_and_resumes(tmp_path, capsys):
    from kdi_fast.cli import main

    out = tmp_path / "lab"
    assert main(["study", "lab", "--out", str(out), "--quick", "--no-plots", "--workers", "2"]) == 0
    config = quick_config()
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == len(grid(config)) * len(config.seeds)
    # every method's lr is the one with the lowest val answer NLL of its tuning runs (one tune seed here)
    tunes = [json.loads(p.read_text()) for p in (out / "tuning").glob("*.json")]
    assert len(tunes) == len(tuning_jobs(config)) * len(config.tune_seeds)
    for p in runs:
        r = json.loads(p.read_text())
        nll = {t["lr"]: t["val_nll"] for t in tunes
               if (t["size"], t["method"]) == (r["cell"]["size"], r["cell"]["method"])}
        assert sorted(nll) == sorted(config.tune_lrs)
        assert r["config"]["lr"] == min(nll, key=nll.get)
        assert r["config"]["steps"] == config.steps_for(r["cell"]["size"]) == {"student_s": 2, "student_m": 3}[
            r["cell"]["size"]]
    record = json.loads(runs[0].read_text())
    assert set(record["interactions"]) == {"embedding", "attention"}
    assert {"gini_complex", "overlap_simple", "salient_complex_overlap"} <= set(record["interactions"]["attention"])
    methods = {json.loads(p.read_text())["cell"]["method"] for p in runs}
    assert methods == {"sft", *KD_METHODS}
    found = json.loads((out / "report" / "findings.json").read_text())["findings"]
    assert {"sparsity", "simple_vs_complex", "cip", "noise_collapse", "best_temperature", "kd_helps_smaller"} <= \
        set(found)
    assert "| claim |" in (out / "report" / "REPORT.md").read_text()
    # resumption: nothing is computed twice
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    records = run_lab(out, config, progress=False, log=lambda *_: None)
    assert len(records) == len(runs) and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # a different configuration in the same directory is refused
    with pytest.raises(ValueError, match="another configuration"):
        run_lab(out, quick_config().__class__(seeds=(0,)), progress=False)
    np.testing.assert_allclose(found["sparsity"]["rows"][0]["n"], len(config.seeds))


def test_spearman_interval_brackets_the_point_and_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    ci = analysis._spearman_ci(x, y)
    assert ci["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert ci["lo"] < ci["rho"] < ci["hi"] and ci["lo"] > 0


def test_update_readme_replaces_only_the_findings_block(tmp_path):
    from kdi_fast.study.report import README_BEGIN, README_END, update_readme

    found = {"sparsity": {"claim": "sparser", "verdict": "confirmed",
                          "rows": [{"masking": "embedding", "size": "both", "mean": 0.1, "lo": 0.05, "hi": 0.2}]}}
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    update_readme(readme, found, runs=3, command="kdi study report --lab L --out O")
    text = readme.read_text()
    assert text.startswith("# x\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old table" not in text and "| sparser | embedding: 0.100 [0.050, 0.200] | **confirmed** |" in text
    assert "(3 runs, from `kdi study report --lab L --out O`" in text
    calib = {"teacher": {"val_accuracy": 1.0, "test_accuracy": 0.995},
             "students": {"student_s": {"parameters": 75000, "test_accuracy": {"mean": 0.6, "lo": 0.3, "hi": 0.8}}}}
    update_readme(readme, found, runs=3, command="c", calib=calib)
    text = readme.read_text()
    assert "Teacher: val accuracy 1.000, test 0.995. No-KD (sft) students, test accuracy" in text
    assert "student_s (75000 parameters): 0.600 [0.300, 0.800]." in text and text.endswith(f"{README_END}\nafter\n")
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="study-findings"):
        update_readme(readme, found, runs=3, command="c")


def test_answer_nll_is_the_mean_teacher_forced_nll_of_answer_and_end_token():
    import torch

    from kdi_fast.study.measure import answer_nll
    from kdi_fast.study.models import make_model

    tok = make_tokenizer()
    model = make_model("student_s", tok, seed=3).eval()
    examples = [make_problem(47, 589), make_problem(3, 5), make_problem(9999, 1)]  # answers of 3, 1, 5 digits
    total, count = 0.0, 0
    for e in examples:
        prompt = tok(e.prompt, add_special_tokens=False)["input_ids"]
        answer = tok(e.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
        for i, token in enumerate(answer):
            total -= logp[len(prompt) - 1 + i, token].item()
            count += 1
    assert answer_nll(model, tok, examples) == pytest.approx(total / count, rel=1e-5)


def test_sft_calibration_writes_val_rows_and_a_rerun_replaces_its_own(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "study_calibration.py"
    spec = importlib.util.spec_from_file_location("study_calibration", path)
    calibration = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, calibration)  # its dataclass looks its module up there
    spec.loader.exec_module(calibration)
    out = tmp_path / "calibration.json"
    args = ["--size", "student_s", "--steps", "2", "--lrs", "0.01", "--seeds", "100", "--output", str(out)]
    assert calibration.main(args) == 0
    first = json.loads(out.read_text())["rows"]
    assert calibration.main(args + ["--steps", "2,3"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["steps"], r["lr"], r["seed"]) for r in rows] == [("student_s", 2, 0.01, 100),
                                                                         ("student_s", 3, 0.01, 100)]
    assert rows[0] == first[0] | {"train_seconds": rows[0]["train_seconds"]}  # same seed, same student
    for row in rows:
        assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["train_accuracy"] <= 1.0
        assert math.isfinite(row["val_nll"]) and row["val_nll"] > 0
    with pytest.raises(SystemExit, match="student_s, student_m"):
        calibration.main(["--size", "student_x", "--steps", "2", "--lrs", "0.01", "--output", str(out)])
