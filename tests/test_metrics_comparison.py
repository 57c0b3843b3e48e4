"""compare_models: its per-prompt rows and dataset summary are exactly the tested metric functions' numbers."""

import math
from dataclasses import dataclass, field

import pytest
import torch

from kdi_fast.metrics import (
    agreement,
    by_order,
    entropy,
    fidelity,
    gini,
    mean_ci,
    number_or_word,
    overlap_at_k,
    rouge_l,
    simple_complex,
)
from kdi_fast.metrics.comparison import compare_models, json_ready, overlap_column


@dataclass
class FakeResult:
    """The fields of engine.InteractionResult that the comparison reads."""

    interactions: torch.Tensor
    player_texts: list = field(default_factory=list)
    players: list = field(default_factory=list)
    target_ids: list = field(default_factory=lambda: [7, 8])
    target_text: str = " y"
    prompt: str = "p"
    model_name: str = "fake"


def _results(ns, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(ns):
        words = [f"w{j}" for j in range(n)]
        out.append(FakeResult(scale * torch.randn(1 << n, generator=g, dtype=torch.float64), words,
                              [(j,) for j in range(n)], prompt=f"prompt {i}"))
    return out


@pytest.fixture
def pair():
    teacher = _results([5, 5, 4], seed=0)
    student = [FakeResult(t.interactions + 0.5 * torch.randn_like(t.interactions), t.player_texts, t.players,
                          prompt=t.prompt) for t in teacher]
    return teacher, student


def test_rows_are_the_metric_functions(pair):
    teacher, student = pair
    ks = [0.1, 0.3]
    c = compare_models(teacher, {"s": student}, ks=ks, k_main=0.3, max_simple_order=2)
    assert c.models == ["teacher", "s"] and c.prompt_ids == ["000", "001", "002"]
    for i in range(3):
        t_row, s_row = c.rows[2 * i], c.rows[2 * i + 1]
        assert (t_row["model"], s_row["model"]) == ("teacher", "s")
        assert t_row["gini"] == gini(teacher[i]).item() and s_row["entropy"] == entropy(student[i]).item()
        assert s_row["overlap@0.1"] == overlap_at_k(teacher[i], student[i], 0.1).item()
        assert t_row["overlap@0.1"] is None  # the teacher is not compared with itself
        parts = simple_complex(student[i], teacher[i], max_simple_order=2, k=0.3)
        assert s_row["gini_complex"] == parts["gini_complex"].item()
        assert s_row[overlap_column(0.3, "simple")] == parts["overlap_simple"].item()
        norm = student[i].interactions[1:].abs() / student[i].interactions[1:].abs().max()
        assert s_row["salient"] == int((norm > 0.05).sum())
        assert s_row["n"] == (5 if i < 2 else 4)


def test_summary_is_mean_ci_of_rows(pair):
    teacher, student = pair
    c = compare_models(teacher, {"s": student}, ks=[0.1], confidence=0.9)
    g = [gini(s).item() for s in student]
    expected = mean_ci(g, 0.9)
    got = c.summary["models"]["s"]["metrics"]["gini"]
    assert (got["mean"], got["low"], got["high"], got["n"]) == (expected.mean, expected.low, expected.high, 3)
    assert c.column("s", "gini") == g


def test_order_profile_averages_over_prompts_that_have_the_order(pair):
    teacher, student = pair
    c = compare_models(teacher, {"s": student})
    prof = c.summary["models"]["teacher"]["by_order"]
    assert prof["order"] == [1, 2, 3, 4, 5] and prof["prompts"] == [3, 3, 3, 3, 2]
    shares = [by_order(t).share for t in teacher]
    assert prof["share"][0] == pytest.approx(float(sum(s[0] for s in shares) / 3))
    assert prof["share"][4] == pytest.approx(float((shares[0][4] + shares[1][4]) / 2))  # n = 4 has no order 5
    curve = c.summary["models"]["s"]["sorted_strength"]
    assert curve["mean"][0] == pytest.approx(1.0)  # the strongest normalised effect is 1 on every prompt


def test_text_metrics_match_the_functions(pair):
    teacher, student = pair
    outputs = {"teacher": [" Paris.", "so 12", "a cat"], "s": [" paris is nice", "it is 13", "a cat"]}
    c = compare_models(teacher, {"s": student}, outputs=outputs, extractor=number_or_word)
    text = c.summary["models"]["s"]["text"]
    assert text["agreement"] == agreement(outputs["teacher"], outputs["s"], number_or_word) == pytest.approx(2 / 3)
    assert text["fidelity_bleu"] == fidelity(outputs["teacher"], outputs["s"])
    assert text["rouge_l"] == pytest.approx(rouge_l(outputs["teacher"], outputs["s"]))
    assert [r["answer"] for r in c.rows if r["model"] == "s"] == ["paris", 13.0, "a"]
    assert c.summary["settings"]["extractor"] == "number_or_word"


def test_misaligned_students_are_rejected(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="like=teacher_results"):
        compare_models(teacher, {"s": [student[0], student[1], _results([5], 3)[0]]})
    other_target = [FakeResult(s.interactions, s.player_texts, s.players, target_ids=[1]) for s in student]
    with pytest.raises(ValueError, match="like=teacher_results"):
        compare_models(teacher, {"s": other_target})
    with pytest.raises(ValueError, match="3 prompts"):
        compare_models(teacher, {"s": student[:2]})
    with pytest.raises(ValueError, match="distinct"):
        compare_models(teacher, {"teacher": student})
    with pytest.raises(ValueError, match="outputs lack"):
        compare_models(teacher, {"s": student}, outputs={"teacher": ["a", "b", "c"]})


def test_json_ready_and_nan_columns():
    # n = 1: the simple part is empty (n // 2 = 0), so its Gini is NaN and the summary holds None for it.
    teacher = _results([1, 1], seed=1)
    student = _results([1, 1], seed=2)
    for t, s in zip(teacher, student):
        s.players, s.player_texts = t.players, t.player_texts
    c = compare_models(teacher, {"s": student}, ks=[1.0], k_main=1.0)
    assert c.summary["models"]["s"]["metrics"]["gini_simple"]["mean"] is None
    assert c.summary["models"]["s"]["metrics"]["overlap@1"]["mean"] == 1.0
    assert math.isnan(c.column("s", "gini_simple")[0])
    assert json_ready({"a": [float("nan"), 1.0], "b": torch.tensor([2.0])}) == {"a": [None, 1.0], "b": [2.0]}


def test_paired_differences(pair):
    teacher, student = pair
    c = compare_models(teacher, {"s": student})
    diff = [gini(s).item() - gini(t).item() for t, s in zip(teacher, student)]
    got = c.summary["models"]["s"]["difference"]["gini"]
    expected = mean_ci(diff)
    assert got["mean"] == pytest.approx(expected.mean, abs=1e-15) and got["low"] == pytest.approx(expected.low)
    assert "difference" not in c.summary["models"]["teacher"]
