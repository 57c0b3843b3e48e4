"""`kdi interactions` and its inputs: prompt files, the built-in prompts, option parsing, errors, end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdi_fast.cli import main
from kdi_fast.cli.interactions import parse_players
from kdi_fast.data import PromptRecord, load_gsm_symbolic, load_prompts, records_digest

# ----------------------------------------------------------------------------------------------------------
# Prompt files
# ----------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_prompts_are_packaged_and_well_formed():
    records = load_prompts()
    assert records == load_prompts("builtin")
    assert 20 <= len(records) <= 50
    assert len({r.id for r in records}) == len(records)
    assert all(r.prompt.strip() and (r.target is None or r.target.strip()) for r in records)
    assert any(r.target is None for r in records) and any(r.target for r in records)


def test_jsonl_fields_and_default_ids(tmp_path):
    path = _write(tmp_path / "p.jsonl", "\n".join([
        json.dumps({"prompt": "The cat sat", "target": " down", "id": "cat"}),
        "",
        json.dumps({"prompt": "Dogs bark loudly", "players": [0, 2]}),
        json.dumps({"prompt": "A b c d", "players": [[0, 1], [3]], "id": 7}),
    ]))
    assert load_prompts(path) == [
        PromptRecord(id="cat", prompt="The cat sat", target=" down"),
        PromptRecord(id="00003", prompt="Dogs bark loudly", players=[0, 2]),
        PromptRecord(id="7", prompt="A b c d", players=[[0, 1], [3]]),
    ]


def test_plain_text_one_prompt_per_line(tmp_path):
    path = _write(tmp_path / "p.txt", "first prompt here\n\n  second one \nthird\n")
    assert [(r.id, r.prompt, r.target, r.players) for r in load_prompts(path)] == [
        ("00001", "first prompt here", None, None), ("00003", "  second one ", None, None),
        ("00004", "third", None, None)]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "ok"}', '{"prompt": "broken"', '{"prompt": "x"}'], "line 2: not valid JSON"),
    (['{"prompt": "ok"}', '', '{"target": "no prompt"}'], "line 3: missing or empty \"prompt\""),
    (['{"prompt": "   "}'], "line 1: missing or empty \"prompt\""),
    (['["a list"]'], "line 1: expected a JSON object"),
    (['{"prompt": "a", "target": ""}'], "\"target\" must be a non-empty string"),
    (['{"prompt": "a", "players": [0, -1]}'], "\"players\" must be"),
    (['{"prompt": "a", "players": [[0], 1]}'], "\"players\" must be"),
    (['{"prompt": "a", "players": []}'], "\"players\" must be"),
    (['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x"}'], "line 2: id 'x' repeats the id of line 1"),
    (['{"prompt": "a", "id": "../escape"}'], "cannot name a file"),
])
def test_bad_jsonl_says_which_line_and_what(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_prompts(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_prompts(tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(_write(tmp_path / "empty.txt", "\n \n"))


def test_records_digest_changes_with_any_field():
    a = [PromptRecord("x", "The cat sat")]
    assert records_digest(a) == records_digest([PromptRecord("x", "The cat sat")])
    for other in (PromptRecord("y", "The cat sat"), PromptRecord("x", "The cat sits"),
                  PromptRecord("x", "The cat sat", target=" down"), PromptRecord("x", "The cat sat", players=[0])):
        assert records_digest([other]) != records_digest(a)


def test_gsm_symbolic_is_reproducible_word_problems():
    problems = load_gsm_symbolic(3, seed=5)
    assert problems == load_gsm_symbolic(3, seed=5)
    assert [p["question"] for p in problems] != [p["question"] for p in load_gsm_symbolic(3, seed=6)]
    assert len(problems) == 3 and len({p["id"] for p in problems}) == 3
    for p in problems:
        assert p["question"].rstrip().endswith(".") or "?" in p["question"]
        float(p["answer"])  # the answer is a number
    with pytest.raises(ValueError, match="positive int"):
        load_gsm_symbolic(0)


# ----------------------------------------------------------------------------------------------------------
# Option parsing
# ----------------------------------------------------------------------------------------------------------


def test_parse_players():
    assert parse_players("auto") is None and parse_players(None) is None
    assert parse_players("0,2,5") == [0, 2, 5]
    assert parse_players("0+1,3,5+6") == [[0, 1], [3], [5, 6]]
    for bad in ("a,b", "0,,1", "0,-1"):
        with pytest.raises(ValueError, match="--players"):
            parse_players(bad)


def test_settings_flags_parse_sizes_and_baselines():
    import argparse

    from kdi_fast.engine.settings import InteractionSettings

    parser = argparse.ArgumentParser()
    InteractionSettings.add_arguments(parser)
    parse = lambda *argv: InteractionSettings.from_args(parser.parse_args(list(argv)))  # noqa: E731
    assert parse().memory_budget is None and parse().dtype == "float32" and parse().device is None
    assert parse("--memory-budget", "2GB").memory_budget == 2 * 1024**3
    assert parse("--memory-budget", "512MiB").memory_budget == 512 * 1024**2
    assert parse("--memory-budget", "1.5g").memory_budget == int(1.5 * 1024**3)
    assert parse("--memory-budget", "1000").memory_budget == 1000
    for bad in ("lots", "-1GB", "0", "2PB"):
        with pytest.raises(ValueError, match="--memory-budget"):
            parse(f"--memory-budget={bad}")
    assert [parse("--baseline", b).baseline for b in ("pad", "unk", "zeros", "mean", "7")] == \
        ["pad", "unk", "zeros", "mean", 7]
    for bad in ("eos", "-3"):
        with pytest.raises(ValueError, match="--baseline"):
            parse(f"--baseline={bad}")
    assert parse("--n", "3").n_players == parse("--n-players", "3").n_players == 3
    with pytest.raises(ValueError, match="--n-players 0: n_players must be a positive int"):
        parse("--n", "0")


# ----------------------------------------------------------------------------------------------------------
# Errors before any model is loaded
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/missing.jsonl"], "missing.jsonl' does not exist"),
    (["--data", "{tmp}/bad.jsonl"], "line 2: missing or empty \"prompt\""),
    (["--model", "{tmp}/no_model_here"], "is not a directory"),
    (["--n", "0"], "--n-players 0: n_players must be a positive int"),
    (["--target-tokens", "0"], "--target-tokens 0: max_target_tokens must be a positive int"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--players", "1,x"], "--players '1,x'"),
    (["--memory-budget", "a lot"], "--memory-budget"),
    (["--baseline", "eos"], "--baseline 'eos'"),
])
def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    _write(tmp_path / "bad.jsonl", '{"prompt": "fine"}\n{"id": "no-prompt"}\n')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["interactions", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdi interactions: error:") and message in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# End to end on a tiny model saved with save_pretrained
# ----------------------------------------------------------------------------------------------------------

PROMPTS = [
    {"id": "cat", "prompt": "The small cat sat on the warm mat"},
    {"id": "sky", "prompt": "Why is the sky blue during the day?", "target": " Light"},
    {"id": "key", "prompt": "She lost her key and could not open the door", "players": [[0], [2, 3], [8]]},
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer):
    from kdi_fast.models import tiny_causal_lm

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_causal_lm("llama", seed=3).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def prompt_file(tmp_path):
    return _write(tmp_path / "prompts.jsonl", "".join(json.dumps(p) + "\n" for p in PROMPTS))


def test_cli_end_to_end_matches_the_library(tmp_path, tiny_model_dir, prompt_file, capsys):
    from kdi_fast.engine import InteractionResult, compute_interactions
    from kdi_fast.models import load_model, load_tokenizer

    out = tmp_path / "out"
    argv = ["interactions", "--model", str(tiny_model_dir), "--data", str(prompt_file), "--n", "3",
            "--target-tokens", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 prompts: 3 computed, 0 already done" in printed and str(out / "summary.json") in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["manifest"]["model"] == str(tiny_model_dir.resolve())
    assert summary["manifest"]["settings"]["max_target_tokens"] == 2

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    for spec, entry in zip(PROMPTS, summary["results"]):
        result = InteractionResult.load(out / f"{spec['id']}.safetensors")
        assert entry["id"] == spec["id"] and result.prompt == spec["prompt"]
        direct = compute_interactions(model, tok, [spec["prompt"]], targets=[spec["target"]] if "target" in spec
                                      else None, players=[spec["players"]] if "players" in spec else None,
                                      n_players=3, max_target_tokens=2, progress=False)[0]
        assert result.target_ids == direct.target_ids and result.players == direct.players
        torch.testing.assert_close(result.values, direct.values, rtol=0, atol=1e-12)
        assert result.matching_error() < 1e-9

    # A second run finds everything done; other settings are refused until --overwrite.
    assert main(argv) == 0
    assert "3 prompts: 0 computed, 3 already done" in capsys.readouterr().out
    assert main([*argv, "--masking", "token"]) == 2
    assert "settings.masking: 'embedding' -> 'token'" in capsys.readouterr().err
    assert main([*argv, "--masking", "token", "--overwrite", "--limit", "1"]) == 0
    assert "1 prompts: 1 computed, 0 already done" in capsys.readouterr().out


def test_cli_tokenizer_missing_from_model_dir(tmp_path, capsys, prompt_file):
    from kdi_fast.models import tiny_causal_lm

    tiny_causal_lm("gpt2", seed=0).save_pretrained(tmp_path / "no-tokenizer")
    assert main(["interactions", "--model", str(tmp_path / "no-tokenizer"), "--data", str(prompt_file),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_the_real_default_model(tmp_path, capsys):
    """SmolLM2-135M-Instruct (the default --model) on two built-in prompts: the matching check holds and v(x_N)
    is the log-odds of the geometric-mean probability of y* that a plain forward of prompt + y* gives."""
    from kdi_fast.engine import InteractionResult
    from kdi_fast.models import load_model, load_tokenizer
    from kdi_fast.reference import logodds_from_mean_logprob

    out = tmp_path / "real"
    assert main(["interactions", "--limit", "2", "--n", "4", "--target-tokens", "4", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["manifest"]["model"] == "smollm2" and summary["prompts"] == 2
    assert summary["max_matching_error"] < 1e-9
    model, tok = load_model("smollm2"), load_tokenizer("smollm2")
    for entry in summary["results"]:
        result = InteractionResult.load(out / entry["file"])
        assert result.n == 4 and torch.isfinite(result.values).all()
        ids = torch.tensor([tok(result.prompt)["input_ids"] + result.target_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        L = len(result.target_ids)
        positions = torch.arange(ids.shape[1] - L - 1, ids.shape[1] - 1)
        mean_logprob = logp[positions, torch.tensor(result.target_ids)].mean()
        assert float(result.values[-1]) == pytest.approx(float(logodds_from_mean_logprob(mean_logprob)), abs=1e-3)
