"""The dataset runner: per-prompt files, resume after a kill (nothing lost, nothing computed twice), the run
manifest, teacher/student runs that share y* and masks, and the summary. Tiny Llama-shaped models throughout."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import kdi_fast.engine as engine
from kdi_fast.data import PromptRecord
from kdi_fast.engine import InteractionResult, compute_interactions
from kdi_fast.engine.runner import MANIFEST, SUMMARY, load_results, result_path, run_interactions

RECORDS = [
    PromptRecord("a", "The small cat sat on the mat"),
    PromptRecord("b", "Birds can fly and fish can swim", target=" well"),
    PromptRecord("c", "Paris is the capital of France", players=[0, 3, 5]),
    PromptRecord("d", "She opened the door with a key", players=[[0, 1], [2], [5, 6]]),
    PromptRecord("e", "Two plus three makes five"),
]
SETTINGS = dict(n_players=3, max_target_tokens=2, progress=False)


@pytest.fixture(scope="module")
def lm():
    from kdi_fast.models import load_tokenizer, tiny_causal_lm

    return tiny_causal_lm("llama", seed=0), load_tokenizer("smollm2")


class CountingCompute:
    """Wraps the real compute_interactions: records each prompt computed; raises KeyboardInterrupt (a kill)
    instead of starting call number `kill_at` (0-based)."""

    def __init__(self, kill_at: int | None = None):
        self.real, self.kill_at, self.prompts = compute_interactions, kill_at, []

    def __call__(self, model, tokenizer, prompts, **kwargs):
        if self.kill_at is not None and len(self.prompts) == self.kill_at:
            raise KeyboardInterrupt
        self.prompts.extend(prompts)
        return self.real(model, tokenizer, prompts, **kwargs)


def _stamp(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_run_writes_one_result_per_prompt_and_a_summary(tmp_path, lm):
    model, tok = lm
    summary = run_interactions(model, tok, RECORDS, tmp_path, **SETTINGS)
    assert (summary.prompts, summary.computed, summary.skipped) == (5, 5, 0)
    report = json.loads((tmp_path / SUMMARY).read_text())
    assert [e["id"] for e in report["results"]] == [r.id for r in RECORDS]
    results = load_results(tmp_path)
    assert list(results) == [r.id for r in RECORDS]
    for record, entry in zip(RECORDS, report["results"]):
        res = results[record.id]
        direct = compute_interactions(model, tok, [record.prompt], targets=[record.target] if record.target else None,
                                      players=[record.players] if record.players else None, n_players=3,
                                      max_target_tokens=2, progress=False)[0]
        assert res.prompt == record.prompt and res.target_ids == direct.target_ids
        torch.testing.assert_close(res.values, direct.values, rtol=0, atol=1e-12)
        assert entry["file"] == result_path(tmp_path, record.id).name and entry["n"] == res.n == 3
        assert entry["matching_error"] == pytest.approx(res.matching_error()) and entry["matching_error"] < 1e-9
        assert entry["v_full"] == pytest.approx(float(res.values[-1]))
        assert entry["computed_by_rank"] == 0 and entry["seconds"] > 0
    assert results["b"].target_text == " well"
    assert results["c"].players == [(0,), (3,), (5,)]
    assert results["d"].players == [(0, 1), (2,), (5, 6)]
    assert summary.max_matching_error == max(e["matching_error"] for e in report["results"])


def test_killed_run_resumes_where_it_stopped(tmp_path, lm, monkeypatch):
    model, tok = lm
    killed = CountingCompute(kill_at=3)
    monkeypatch.setattr(engine, "compute_interactions", killed)
    with pytest.raises(KeyboardInterrupt):
        run_interactions(model, tok, RECORDS, tmp_path, **SETTINGS)
    assert killed.prompts == [r.prompt for r in RECORDS[:3]]
    done = [r.id for r in RECORDS if result_path(tmp_path, r.id).exists()]
    assert done == ["a", "b", "c"]
    assert not (tmp_path / SUMMARY).exists()  # an unfinished run has no summary
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_results(tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if "tmp" in p.name]  # no half-written files left
    before = {i: _stamp(result_path(tmp_path, i)) for i in done}

    stale = tmp_path / ".d.safetensors.x1y2.tmp"  # as a kill in the middle of a save leaves it
    stale.write_bytes(b"partial")

    again = CountingCompute()
    monkeypatch.setattr(engine, "compute_interactions", again)
    summary = run_interactions(model, tok, RECORDS, tmp_path, **SETTINGS)
    assert not stale.exists()
    assert again.prompts == [r.prompt for r in RECORDS[3:]]  # each remaining prompt once, the done ones never
    assert (summary.computed, summary.skipped) == (2, 3)
    assert {i: _stamp(result_path(tmp_path, i)) for i in done} == before  # untouched
    entries = json.loads((tmp_path / SUMMARY).read_text())["results"]
    assert [e["computed_by_rank"] for e in entries] == [None, None, None, 0, 0]

    monkeypatch.setattr(engine, "compute_interactions", compute_interactions)
    fresh = run_interactions(model, tok, RECORDS, tmp_path / "fresh", **SETTINGS)
    assert fresh.computed == 5
    resumed, uninterrupted = load_results(tmp_path), load_results(tmp_path / "fresh")
    for key in resumed:
        torch.testing.assert_close(resumed[key].values, uninterrupted[key].values, rtol=0, atol=1e-12)


def test_unreadable_result_is_computed_again(tmp_path, lm, monkeypatch):
    model, tok = lm
    run_interactions(model, tok, RECORDS[:3], tmp_path, **SETTINGS)
    path = result_path(tmp_path, "b")
    path.write_bytes(path.read_bytes()[:20])  # e.g. damaged by a copy
    again = CountingCompute()
    monkeypatch.setattr(engine, "compute_interactions", again)
    summary = run_interactions(model, tok, RECORDS[:3], tmp_path, **SETTINGS)
    assert again.prompts == [RECORDS[1].prompt] and summary.computed == 1
    assert InteractionResult.load(path).prompt == RECORDS[1].prompt


def test_limit_then_more_computes_only_the_new_prompts(tmp_path, lm, monkeypatch):
    model, tok = lm
    first = run_interactions(model, tok, RECORDS, tmp_path, limit=2, **SETTINGS)
    assert first.prompts == 2 and sorted(load_results(tmp_path)) == ["a", "b"]
    again = CountingCompute()
    monkeypatch.setattr(engine, "compute_interactions", again)
    second = run_interactions(model, tok, RECORDS, tmp_path, limit=4, **SETTINGS)
    assert again.prompts == [RECORDS[2].prompt, RECORDS[3].prompt]
    assert (second.prompts, second.computed, second.skipped) == (4, 2, 2)


def test_restart_with_other_settings_is_refused_unless_overwrite(tmp_path, lm, monkeypatch):
    model, tok = lm
    run_interactions(model, tok, RECORDS[:2], tmp_path, **SETTINGS)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["settings"]["n_players"] == 3 and manifest["dtype"] == "float32"
    with pytest.raises(ValueError, match=r"settings.n_players: 3 -> 2.*--overwrite"):
        run_interactions(model, tok, RECORDS[:2], tmp_path, **{**SETTINGS, "n_players": 2})
    with pytest.raises(ValueError, match="settings.masking: 'embedding' -> 'token'"):
        run_interactions(model, tok, RECORDS[:2], tmp_path, masking="token", **SETTINGS)
    with pytest.raises(ValueError, match="prompt.prompt: 'The small cat"):
        run_interactions(model, tok, [PromptRecord("a", "Another prompt entirely")], tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match="model.name: "):
        run_interactions(model, tok, RECORDS[:2], tmp_path, model_name="another-model", **SETTINGS)
    with pytest.raises(ValueError, match="dtype: 'float32' -> 'float64'"):
        run_interactions(copy.deepcopy(model).double(), tok, RECORDS[:2], tmp_path, **SETTINGS)

    again = CountingCompute()
    monkeypatch.setattr(engine, "compute_interactions", again)
    summary = run_interactions(model, tok, RECORDS[:2], tmp_path, overwrite=True, **{**SETTINGS, "n_players": 2})
    assert again.prompts == [r.prompt for r in RECORDS[:2]] and summary.computed == 2
    assert all(r.n == 2 for r in load_results(tmp_path).values())
    assert json.loads((tmp_path / MANIFEST).read_text())["settings"]["n_players"] == 2


def test_student_run_reuses_the_teacher_targets_and_masks(tmp_path, lm):
    from kdi_fast.models import tiny_causal_lm

    teacher, tok = lm
    student = tiny_causal_lm("llama", seed=1)
    records = [RECORDS[0], RECORDS[2]]
    run_interactions(teacher, tok, records, tmp_path / "teacher", **SETTINGS)
    run_interactions(student, tok, records, tmp_path / "student", like_dir=tmp_path / "teacher", **SETTINGS)
    teacher_results, student_results = load_results(tmp_path / "teacher"), load_results(tmp_path / "student")
    for key, t in teacher_results.items():
        s = student_results[key]
        assert s.target_ids == t.target_ids and s.players == t.players
        assert not torch.allclose(s.values, t.values)  # another model, same inputs
    manifest = json.loads((tmp_path / "student" / MANIFEST).read_text())
    assert manifest["like"]["dir"] == str((tmp_path / "teacher").resolve())

    with pytest.raises(ValueError, match="no result for 1 prompt"):
        run_interactions(student, tok, [RECORDS[1]], tmp_path / "s2", like_dir=tmp_path / "teacher", **SETTINGS)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        run_interactions(student, tok, records, tmp_path / "s3", like_dir=tmp_path / "nowhere", **SETTINGS)


def test_bad_prompt_error_names_the_prompt(tmp_path, lm):
    model, tok = lm
    with pytest.raises(ValueError, match="prompt 'far': "):
        run_interactions(model, tok, [PromptRecord("far", "Only four words here", players=[0, 9])], tmp_path,
                         **SETTINGS)
    with pytest.raises(ValueError, match="empty"):
        run_interactions(model, tok, [], tmp_path, **SETTINGS)


def test_default_players_apply_to_records_without_their_own(tmp_path, lm):
    model, tok = lm
    run_interactions(model, tok, [RECORDS[0], RECORDS[2]], tmp_path, players=[[1, 2], [5]], **SETTINGS)
    results = load_results(tmp_path)
    assert results["a"].players == [(1, 2), (5,)] and results["a"].player_texts[1] == "the"
    assert results["c"].players == [(0,), (3,), (5,)]  # its own
