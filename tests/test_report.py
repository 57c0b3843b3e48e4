"""The report renderer on synthetic results: every file is written, whole, and shows the comparison's numbers."""

import csv
import json
import math
from dataclasses import dataclass, field

import pytest
import torch

from kdi_fast.metrics import gini, overlap_at_k
from kdi_fast.metrics.comparison import compare_models, overlap_column
from kdi_fast.report import write_csv, write_report
from kdi_fast.report.markdown import fmt


@dataclass
class FakeResult:
    interactions: torch.Tensor
    player_texts: list
    players: list
    prompt: str
    target_text: str = " Paris"
    target_ids: list = field(default_factory=lambda: [3])
    model_name: str = "fake"


def _synthetic(n_prompts, n, students=("small",), seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher, studs = [], {s: [] for s in students}
    for i in range(n_prompts):
        words = [f"word{j}" for j in range(n)]
        inter = torch.randn(1 << n, generator=g, dtype=torch.float64) * 0.05
        inter[torch.randint(1, 1 << n, (4,), generator=g)] += 2.0  # a few strong effects
        teacher.append(FakeResult(inter, words, [(j,) for j in range(n)], f"the prompt number {i}"))
        for j, s in enumerate(students):
            noisy = inter + (j + 1) * 0.2 * torch.randn(1 << n, generator=g, dtype=torch.float64)
            studs[s].append(FakeResult(noisy, words, [(j,) for j in range(n)], f"the prompt number {i}"))
    return teacher, studs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    teacher, students = _synthetic(4, 6, students=("small", "tiny"))
    outputs = {"teacher": [" 42 apples", " Paris", " a | b", " 7"], "small": [" 42", " Rome", " a b", " 8"],
               "tiny": [" x", " y", " z", " 7"]}
    c = compare_models(teacher, students, outputs=outputs, ks=[0.05, 0.1, 0.5])
    out = tmp_path_factory.mktemp("report")
    files = write_report(c, out, run_info={"teacher": "T", "data": "synthetic"}, extra_summary={"seconds": 1.5})
    return c, files, out


def test_all_files_written_whole(report):
    c, files, out = report
    assert files.report == out / "report.md" and files.summary == out / "summary.json"
    assert set(files.figures) == {"sorted_strength", "overlap", "by_order", "simple_complex", "top_interactions"}
    import matplotlib.image

    for path in files.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 200 and width > 400
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in (files.report, files.summary, files.csv, *files.figures.values()):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # as open() would, not mkstemp's 0o600


def test_summary_json_is_the_comparison(report):
    c, files, _ = report
    data = json.loads(files.summary.read_text())
    assert data["seconds"] == 1.5
    del data["seconds"]
    assert data == json.loads(json.dumps(c.summary))


def test_csv_holds_every_row(report):
    c, files, _ = report
    with open(files.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(c.rows) == 4 * 3
    for got, want in zip(rows, c.rows):
        assert got["model"] == want["model"]
        assert float(got["gini"]) == want["gini"]  # repr round-trips floats exactly
        if want["role"] == "student":
            assert float(got["overlap@0.1"]) == want["overlap@0.1"]
        else:
            assert got["overlap@0.1"] == ""
    assert rows[0]["output"] == " 42 apples"


def test_markdown_shows_the_numbers_and_links(report):
    c, files, out = report
    text = files.report.read_text()
    for key, path in files.figures.items():
        assert f"]({path.relative_to(out).as_posix()})" in text
    teacher = c.summary["models"]["teacher"]["metrics"]["gini"]
    assert f"{fmt(teacher['mean'])} ± {fmt((teacher['high'] - teacher['low']) / 2)}" in text
    # the per-prompt table holds each prompt's Gini and Overlap@k computed by the metric functions
    t0, s0 = c.results["teacher"][0], c.results["small"][0]
    assert f"| 000 | 6 | {fmt(gini(t0).item())} |" in text
    assert fmt(overlap_at_k(t0, s0, 0.1).item()) in text
    assert "| teacher | T |" in text and "a \\| b" in text  # run info and escaped table cells
    assert "Overlap@0.1 within complex interactions" in text
    assert f"answer agreement {fmt(100 * c.summary['models']['small']['text']['agreement'], 1)}%" in text
    # the paired Gini difference (student - teacher over the same prompts) with its interval
    from kdi_fast.metrics import mean_ci

    d = mean_ci([gini(s).item() - gini(t).item() for t, s in zip(c.results["teacher"], c.results["tiny"])])
    assert f"paired difference {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" in text


def test_report_with_one_prompt_and_no_outputs(tmp_path):
    teacher, students = _synthetic(1, 3)
    c = compare_models(teacher, students, ks=[0.1, 0.5])
    files = write_report(c, tmp_path)
    text = files.report.read_text()
    assert "answer agreement" not in text
    overlap = c.summary["models"]["small"]["metrics"][overlap_column(0.1)]
    assert overlap["mean"] is None  # K = floor(0.1 * 7) = 0: NaN, shown as "-"
    assert math.isnan(c.column("small", overlap_column(0.1))[0])
    assert "| Overlap@0.1 with the teacher (chance 0.1) |  | - |" in text


def test_write_csv_union_of_columns(tmp_path):
    path = write_csv([{"a": 1, "b": None}, {"a": 2, "c": "x"}], tmp_path / "t.csv")
    assert path.read_text() == "a,b,c\n1,,\n2,,x\n"


def test_player_names_disambiguate_repeated_words():
    from kdi_fast.report.labels import player_names, subset_label

    r = FakeResult(torch.zeros(8), ["a", "cat", "a"], [(0,), (1,), (4, 5)], "p")
    names = player_names(r)
    assert names == ["a[0]", "cat", "a[4]"]
    assert subset_label(names, 0b101) == "{a[0], a[4]}"
    assert player_names(FakeResult(torch.zeros(4), [], [], "p")) == ["0", "1"]
