"""Sparse results in the metrics and the CLI: Overlap@K / Gini@K over recovered coefficients (definitions checked
by hand-countable cases), `kdi interactions --budget` and `kdi compare --budget` end to end on tiny models (files,
held-out R^2 in the summary and report, teacher and student on the same masks), and their input errors."""

import json
import math

import pytest
import torch

from kdi_fast.cli import main
from kdi_fast.engine import SparseInteractionResult
from kdi_fast.metrics.sparse import gini_top, order_shares, overlap_top, overlap_with_exact, top_subsets

PROMPT = ("Anna bought seven red pencils and four blue pens at the small shop near the old station, then she gave "
          "two pencils to her friend Ben before the train left for the city at noon.")


def _result(subsets, values, n=6):
    return SparseInteractionResult(prompt="p", words=[str(i) for i in range(n)], players=[(i,) for i in range(n)],
                                   player_texts=[str(i) for i in range(n)], target_text="t", target_ids=[1],
                                   subsets=subsets, interactions=torch.tensor(values, dtype=torch.float64),
                                   r2_held_out=0.9, model_name="m", settings={})


def test_overlap_and_gini_over_recovered_coefficients():
    a = _result([(), (0,), (1,), (0, 1), (2, 3, 4)], [5.0, 3.0, -1.0, 2.0, 0.5])
    b = _result([(), (1,), (0, 1), (5,)], [9.0, 4.0, -3.0, 0.1])
    assert top_subsets(a, 2) == [(0,), (0, 1)]  # the empty set is never ranked
    assert overlap_top(a, b, 2) == 0.5  # {(0,), (0,1)} vs {(1,), (0,1)}
    assert overlap_top(a, b, 50) == 2 / 50  # always divided by K: unrecovered terms count as 0
    # Gini of the K largest |I| padded with zeros: K = 4 -> u = [0.5, 1, 2, 3]
    u = torch.tensor([0.5, 1, 2, 3], dtype=torch.float64)
    expected = float(2 * (torch.arange(1, 5) * u).sum() / (4 * u.sum()) - 5 / 4)
    assert math.isclose(gini_top(a, 4), expected)
    assert math.isclose(gini_top(a, 6), float(2 * (torch.arange(1, 7) * torch.cat([torch.zeros(2), u])).sum()
                                              / (6 * u.sum()) - 7 / 6))
    shares = order_shares(a)
    assert math.isclose(shares[1], 4 / 6.5) and math.isclose(shares[3], 0.5 / 6.5)
    with pytest.raises(ValueError, match="K must be a positive int"):
        overlap_top(a, b, 0)


def test_overlap_with_exact_interactions():
    from kdi_fast.engine import InteractionResult

    n = 4
    interactions = torch.zeros(16, dtype=torch.float64)
    interactions[0b0011], interactions[0b0100], interactions[0b1000] = 3.0, -2.0, 0.5
    exact = InteractionResult(prompt="p", words=list("abcd"), players=[(i,) for i in range(n)],
                              player_texts=list("abcd"), target_text="t", target_ids=[1],
                              values=torch.zeros(16, dtype=torch.float64), interactions=interactions,
                              model_name="m", settings={})
    sparse = _result([(), (0, 1), (3,)], [1.0, 2.0, 1.0], n=4)
    assert overlap_with_exact(sparse, exact, 2) == 0.5  # top-2 exact: (0,1), (2,); sparse: (0,1), (3,)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, smollm_tokenizer):
    from kdi_fast.models import tiny_causal_lm

    root = tmp_path_factory.mktemp("sparse-cli")
    model = tiny_causal_lm("llama", num_layers=2, seed=4)
    model.save_pretrained(root / "teacher")
    smollm_tokenizer.save_pretrained(root / "teacher")
    data = root / "long.jsonl"
    data.write_text(json.dumps({"id": "anna", "prompt": PROMPT, "target": " noon"}) + "\n")
    return root, data


def test_interactions_budget_end_to_end(dirs, capsys):
    root, data = dirs
    out = root / "inter"
    argv = ["interactions", "--model", str(root / "teacher"), "--data", str(data), "--n", "24", "--budget", "300",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = SparseInteractionResult.load(out / "anna.sparse.safetensors")
    assert result.n == 24 and result.settings["budget"] == 300
    summary = json.loads((out / "summary.json").read_text())
    row = summary["prompts"][0]
    assert summary["held_out_masks_counted_in_budget"] and row["held_out_masks"] == 32
    assert row["train_masks"] + row["held_out_masks"] == 300
    assert math.isclose(row["r2_held_out"], result.r2_held_out)
    assert f"held-out R^2 = {result.r2_held_out:.3f}" in printed
    assert main(argv) == 0  # a second run resumes: same file, same numbers
    assert SparseInteractionResult.load(out / "anna.sparse.safetensors").r2_held_out == result.r2_held_out
    assert json.loads((out / "summary.json").read_text())["prompts"][0]["resumed"]


def test_compare_budget_same_masks_and_report(dirs):
    root, data = dirs
    out = root / "cmp"
    assert main(["compare", "--teacher", str(root / "teacher"), "--student", "layers:1", "--data", str(data),
                 "--n", "24", "--budget", "300", "--top-k", "20", "--out", str(out), "--quiet"]) == 0
    teacher = SparseInteractionResult.load(out / "runs" / "teacher" / "anna.sparse.safetensors")
    student = SparseInteractionResult.load(out / "runs" / "student-1L" / "anna.sparse.safetensors")
    assert student.players == teacher.players and student.target_ids == teacher.target_ids
    assert student.settings["seed"] == teacher.settings["seed"]  # the same masks
    summary = json.loads((out / "summary.json").read_text())
    row = summary["prompts"][0]
    assert math.isclose(row["overlap_student-1L"], overlap_top(teacher, student, 20))
    assert math.isclose(row["r2_teacher"], teacher.r2_held_out)
    report = (out / "report.md").read_text()
    assert "R^2 teacher" in report and "Overlap@20" in report and "coefficients not recovered count as 0" in report


@pytest.mark.parametrize("extra, message", [
    (["--n", "40", "--budget", "50"], "--budget 50 is too small for --n 40: sparse recovery needs at least 114"),
])
def test_budget_errors(dirs, tmp_path, capsys, extra, message):
    root, data = dirs
    code = main(["interactions", "--model", str(root / "teacher"), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--quiet", *extra])
    assert code == 2 and message in capsys.readouterr().err
