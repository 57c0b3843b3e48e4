"""The real-model tier of the study (kdi_fast.study.real): its prompt format is the same in training, generation and
interactions, and `kdi study real --quick` runs every cell under both maskings, resumes without recomputing, and
writes its report."""

import json
import math
from dataclasses import replace

import pytest
import torch

from kdi_fast.models import tiny_causal_lm
from kdi_fast.study.real import (RealConfig, cells, greedy_outputs, interactions_of, quick_config, real_tokenizer,
                                 run_real)
from kdi_fast.study.real_report import README_BEGIN, README_END, REAL_CLAIMS
from kdi_fast.study.task import make_problem


@pytest.fixture(scope="module")
def tok():
    return real_tokenizer()


def test_cells_are_sft_then_kd_and_gkd_without_and_with_cip():
    names = [c.name for c in cells(RealConfig())]
    assert names == ["layers15_sft", "layers15_kd", "layers15_kd_cip0.1", "layers15_gkd", "layers15_gkd_cip0.1"]


def test_interactions_score_the_sequence_the_model_is_trained_on(tok):
    """v(x_N) of the engine (all players present) is the log-odds of the mean log-probability of the answer's tokens
    in the very token sequence distill trains on (prompt, newline, answer)."""
    from kdi_fast.distill.datasets import collate, tokenize_examples

    model = tiny_causal_lm("llama", hidden_size=32, num_layers=2, seed=3).double()
    examples = [make_problem(47, 589), make_problem(9999, 1)]
    results = interactions_of(model, tok, examples, masking="embedding")
    batch = collate(tokenize_examples(tok, examples), tok.pad_token_id)
    with torch.no_grad():
        logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    for row, (example, result) in enumerate(zip(examples, results)):
        answer = tok(example.response, add_special_tokens=False)["input_ids"]
        positions = (batch["labels"][row] != -100).nonzero().flatten()[:len(answer)]  # the answer, not <|im_end|>
        assert batch["labels"][row, positions].tolist() == answer
        lp = logp[row, positions - 1, batch["labels"][row, positions]].mean().item()
        full = result.values[-1].item()  # mask 2^n - 1: every player present
        assert full == pytest.approx(lp - math.log(-math.expm1(lp)), rel=1e-5, abs=1e-5)


def test_greedy_outputs_of_a_padded_batch_match_one_prompt_at_a_time(tok):
    model = tiny_causal_lm("llama", hidden_size=32, num_layers=2, seed=1)
    examples = [make_problem(5, 0), make_problem(1234, 987), make_problem(40, 9)]  # 11, 17 and 14 prompt tokens
    together = greedy_outputs(model, tok, examples)
    alone = [greedy_outputs(model, tok, [e])[0] for e in examples]
    assert together == alone and len(together) == 3


def test_quick_real_tier_runs_every_cell_and_masking_resumes_and_reports(tmp_path):
    from kdi_fast.cli import main

    out = tmp_path / "real"
    assert main(["study", "real", "--out", str(out), "--quick", "--no-plots"]) == 0
    config = quick_config()
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == len(cells(config)) * len(config.seeds) == 10
    records = [json.loads(p.read_text()) for p in runs]
    assert {(r["cell"]["method"], r["cell"]["cip"] > 0) for r in records} == {
        ("sft", False), ("kd", False), ("kd", True), ("gkd", False), ("gkd", True)}
    for r in records:
        assert set(r["interactions"]) == {"embedding", "attention"}
        assert {"gini", "gini_simple", "gini_complex", "overlap_simple", "overlap_complex",
                "salient_complex_overlap"} <= set(r["interactions"]["attention"])
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["test_agreement"] <= 1.0
    report = out / "report"
    found = json.loads((report / "findings.json").read_text())
    assert set(found["findings"]) == set(REAL_CLAIMS) and found["status"] == "complete"
    assert all(f["verdict"].startswith("not separable") for f in found["findings"].values())  # 2 seeds
    assert len(list((report / "runs").glob("*.json"))) == 10 and "| claim |" in (report / "REPORT.md").read_text()
    # --readme writes status, findings and the 5 cells between the real tier's markers, nothing else
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_BEGIN}\nold\n{README_END}\nafter\n")
    assert main(["study", "real", "--out", str(out), "--report-only", "--no-plots", "--readme", str(readme)]) == 0
    text = readme.read_text()
    block = text.split(README_BEGIN)[1].split(README_END)[0]
    assert text.startswith(f"# x\n{README_BEGIN}") and text.endswith(f"{README_END}\nafter\n") and "old" not in block
    assert "**complete**" in block and block.count("| **not separable") == len(REAL_CLAIMS)
    assert sum(line.startswith(f"| {c.name} | 2 |") for line in block.splitlines() for c in cells(config)) == 5
    # resumption after a kill: a missing run is redone, nothing else is recomputed (teacher included)
    stamps = {p: p.stat().st_mtime_ns for p in runs[1:]}
    teacher_stamp = (out / "teacher.json").stat().st_mtime_ns
    runs[0].unlink()
    again = run_real(out, config, progress=False, log=lambda *_: None)
    assert len(again) == 10 and runs[0].is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (out / "teacher.json").stat().st_mtime_ns == teacher_stamp
    with pytest.raises(ValueError, match="another configuration"):  # another configuration, same directory
        run_real(out, RealConfig(model="tiny", seeds=(0,)), progress=False)
    with pytest.raises(ValueError, match=r"\(student_steps differ\)"):  # runs written: students fixed too
        run_real(out, replace(config, student_steps=3), progress=False)


def test_a_teacher_below_its_target_stops_the_tier_and_the_report_shows_its_stages(tmp_path):
    from kdi_fast.cli import main

    out = tmp_path / "real"
    config = replace(quick_config(), teacher_target=1.01, teacher_max_stages=2, teacher_stage_steps=1)
    with pytest.raises(RuntimeError, match="below the target 1.01"):
        run_real(out, config, progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="teacher_lr differ"):  # the teacher's settings never change
        run_real(out, replace(config, teacher_lr=1.0), progress=False)
    with pytest.raises(RuntimeError, match="below the target"):  # students' may, before any run: resumes
        run_real(out, replace(config, student_steps=5), progress=False, log=lambda *_: None)
    stages = json.loads((out / "teacher_stages.json").read_text())
    assert [s["steps"] for s in stages] == [1, 2] and all(0 <= s["val_accuracy"] < 1.01 for s in stages)
    assert not (out / "runs").exists() and not (out / "teacher.json").exists()
    assert main(["study", "real", "--out", str(out), "--report-only", "--no-plots"]) == 0
    report = (out / "report" / "REPORT.md").read_text()
    assert "partial: 0 of 10 runs" in report and "teacher stage 1: 2 steps" in report


def test_a_raised_teacher_target_trains_on_and_recomputes_what_the_teacher_made(tmp_path):
    """teacher_target may change until a student run is written: the stages done stay, and a teacher with another
    number of stages gets its teacher.json, outputs and interactions recomputed."""
    out = tmp_path / "real"
    config = replace(quick_config(), teacher_target=0.0, teacher_max_stages=2, teacher_stage_steps=1, seeds=())
    run_real(out, config, progress=False, log=lambda *_: None)
    assert json.loads((out / "teacher.json").read_text())["stages"] == 1
    stamp = (out / "teacher_outputs.json").stat().st_mtime_ns
    stages = json.loads((out / "teacher_stages.json").read_text())
    stages[0]["val_accuracy"] = -1.0  # stage 0 now misses the target, so the teacher trains one stage more
    (out / "teacher_stages.json").write_text(json.dumps(stages))
    run_real(out, replace(config, teacher_target=-0.5), progress=False, log=lambda *_: None)
    info = json.loads((out / "teacher.json").read_text())
    assert info["stages"] == 2 and info["steps"] == 2
    assert info["val_accuracy"] == json.loads((out / "teacher_stages.json").read_text())[1]["val_accuracy"]
    assert (out / "teacher_outputs.json").stat().st_mtime_ns != stamp
    assert len(list((out / "teacher_interactions" / "embedding").glob("*.safetensors"))) == 2
