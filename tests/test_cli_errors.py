"""User mistakes on the command line are one-line errors with exit status 2 that name the option to fix, raised
before any computation: bad output directories, damaged model directories, unavailable devices, out-of-range
numbers, malformed data and student specs; a model that outputs NaN fails its prompt with a message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdi_fast.cli import main


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, smollm_tokenizer):
    """A good tiny model directory, damaged copies of it, a NaN model, and a one-prompt data file."""
    from safetensors.torch import load_file, save_file

    from kdi_fast.models import tiny_causal_lm

    root = tmp_path_factory.mktemp("cli-errors")
    good = root / "good"
    tiny_causal_lm("llama", num_layers=2, seed=0).save_pretrained(good)
    smollm_tokenizer.save_pretrained(good)
    out = {"root": root, "good": good}
    for name in ("bad_config", "no_weights", "truncated", "nan_model"):
        target = root / name
        target.mkdir()
        for f in good.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        out[name] = target
    (root / "bad_config" / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    (root / "no_weights" / "model.safetensors").unlink()
    weights = (root / "truncated" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    tensors = load_file(root / "nan_model" / "model.safetensors")
    name = next(k for k in tensors if k.endswith("norm.weight"))
    tensors[name] = torch.full_like(tensors[name], math.nan)
    save_file(tensors, root / "nan_model" / "model.safetensors", metadata={"format": "pt"})
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    data = root / "p.jsonl"
    data.write_text('{"id": "cat", "prompt": "The small cat sat on the mat", "target": " today"}\n'
                    '{"id": "dog", "prompt": "A big dog ran in the park", "target": " fast"}\n')
    out["data"] = data
    (root / "nested.jsonl").write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (root / "a_file").write_text("not a directory")
    out["a_file"] = root / "a_file"
    return out


def _run(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line_error(rc, err, command, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kdi {command}: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


INTERACTIONS_CASES = [
    (["--out", "{a_file}"], ["--out", "not a directory"]),
    (["--out", "/proc/kdi-test-out"], ["--out", "cannot create"]),
    (["--model", "{bad_config}"], ["--model", "config.json"]),
    (["--model", "{no_weights}"], ["--model", "no weights"]),
    (["--model", "{truncated}"], ["--model", "model.safetensors", "truncated"]),
    (["--tokenizer", "{empty}"], ["--tokenizer"]),
    (["--device", "meta"], ["--device 'meta'", "cpu"]),
    (["--device", "mps"], ["--device 'mps'"]),
    (["--device", "cuda:99"], ["--device"]),
    (["--seed", "-1"], ["--seed"]),
    (["--seed", str(2**64)], ["--seed"]),
    (["--data", "{root}/nested.jsonl"], ["line 1", "nested"]),
]


@pytest.mark.parametrize("argv, needles", INTERACTIONS_CASES, ids=[" ".join(a) for a, _ in INTERACTIONS_CASES])
def test_interactions_user_mistakes_are_one_line(tmp_path, capsys, dirs, argv, needles):
    if argv[:2] == ["--device", "mps"] and torch.backends.mps.is_available():
        pytest.skip("mps is available on this machine")
    if argv[:2] == ["--device", "cuda:99"] and torch.cuda.device_count() > 99:
        pytest.skip("this machine has a cuda:99")
    base = {"--model": str(dirs["good"]), "--data": str(dirs["data"]), "--out": str(tmp_path / "out")}
    argv = [a.format(**{k: str(v) for k, v in dirs.items()}) for a in argv]
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    full = ["interactions", *[x for kv in base.items() for x in kv], "--n", "3", "--quiet"]
    rc, err = _run(capsys, full)
    _assert_one_line_error(rc, err, "interactions", *needles)
    assert not list((tmp_path / "out").glob("*.safetensors"))


COMPARE_CASES = [
    (["--student", "layers:9"], ["--student layers:9", "2 layers"]),
    (["--student", "layers:0,5"], ["--student layers:0,5", "2 layers"]),
    (["--teacher", "{no_weights}"], ["--teacher", "no weights"]),
    (["--student", "{truncated}"], ["--student", "truncated"]),
    (["--tokenizer", "{empty}"], ["--tokenizer"]),
    (["--device", "meta"], ["--device 'meta'"]),
    (["--seed", "-3"], ["--seed"]),
    (["--k", "nan"], ["--k"]),
    (["--salient", "inf"], ["--salient"]),
]


@pytest.mark.parametrize("argv, needles", COMPARE_CASES, ids=[" ".join(a) for a, _ in COMPARE_CASES])
def test_compare_user_mistakes_are_one_line_and_before_any_computation(tmp_path, capsys, dirs, argv, needles):
    base = {"--teacher": str(dirs["good"]), "--student": "layers:1", "--data": str(dirs["data"]),
            "--out": str(tmp_path / "out")}
    argv = [a.format(**{k: str(v) for k, v in dirs.items()}) for a in argv]
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    full = ["compare", *[x for kv in base.items() for x in kv], "--n", "3", "--gen-tokens", "2", "--quiet"]
    rc, err = _run(capsys, full)
    _assert_one_line_error(rc, err, "compare", *needles)
    assert not list((tmp_path / "out").rglob("*.safetensors"))  # nothing was computed


def test_a_model_that_outputs_nan_fails_its_prompts_and_the_summary_stays_json(tmp_path, capsys, dirs):
    out = tmp_path / "out"
    rc, err = _run(capsys, ["interactions", "--model", str(dirs["nan_model"]), "--tokenizer", str(dirs["good"]),
                            "--data", str(dirs["data"]), "--out", str(out), "--n", "3", "--quiet"])
    _assert_one_line_error(rc, err, "interactions", "2 of 2 prompts failed", "'cat'", "NaN")
    assert not list(out.glob("*.safetensors"))

    def no_constants(name):
        raise AssertionError(f"summary.json holds the non-JSON constant {name}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=no_constants)
    assert [f["id"] for f in summary["failed"]] == ["cat", "dog"] and summary["results"] == []
    assert all("NaN" in f["error"] for f in summary["failed"])
