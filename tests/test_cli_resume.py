"""Resuming `kdi interactions` never mixes runs: every result carries the identity of what produced it (model and
its weights' digest, tokenizer, prompt, every setting) and a checksum; it is reused only on an exact match, else
refused naming what differs (or recomputed under --overwrite); a damaged result is recomputed; a run that failed
on bad input does not block the corrected rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import result_contents

from kdi_fast.cli import main
from kdi_fast.engine import InteractionResult

PROMPTS = [
    {"id": "cat", "prompt": "The small cat sat on the warm mat", "target": " today"},
    {"id": "sky", "prompt": "Why is the sky blue during the day?", "target": " Light"},
    {"id": "key", "prompt": "She lost her key and could not open the door", "target": " again"},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm_tokenizer):
    from kdi_fast.models import tiny_causal_lm

    root = tmp_path_factory.mktemp("resume")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        tiny_causal_lm("llama", num_layers=2, seed=seed).save_pretrained(root / name)
        smollm_tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


def _data(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def _run(capsys, model, data, out, *extra):
    rc = main(["interactions", "--model", str(model), "--data", str(data), "--out", str(out), "--n", "3",
               "--quiet", *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_results_carry_their_identity_and_a_checksum(tmp_path, capsys, models):
    data = _data(tmp_path / "p.jsonl")
    assert _run(capsys, models["a"], data, tmp_path / "out")[0] == 0
    result = InteractionResult.load(tmp_path / "out" / "cat.safetensors")
    identity = result.identity
    assert identity["prompt"] == {"id": "cat", "prompt": PROMPTS[0]["prompt"], "target": " today", "players": None}
    assert len(identity["model"]["weights_sha256"]) == 64 and len(identity["tokenizer"]["sha256"]) == 64
    assert identity["settings"]["masking"] == "embedding" and identity["settings"]["n_players"] == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["identity"]["model"] == identity["model"] and manifest["identity"]["tokenizer"] == \
        identity["tokenizer"]


def test_an_interrupted_overwrite_with_other_settings_is_not_resumed_with_old_results(tmp_path, capsys, models):
    data, out = _data(tmp_path / "p.jsonl"), tmp_path / "out"
    assert _run(capsys, models["a"], data, out)[0] == 0
    # --overwrite with new settings, killed after the first prompt (as --limit 1 leaves it)
    assert _run(capsys, models["a"], data, out, "--masking", "token", "--overwrite", "--limit", "1")[0] == 0
    rc, text = _run(capsys, models["a"], data, out, "--masking", "token")
    assert rc == 2 and "2 result(s)" in text and "masking" in text and "--overwrite" in text, text
    assert _run(capsys, models["a"], data, out, "--masking", "token", "--overwrite")[0] == 0
    fresh = tmp_path / "fresh"
    assert _run(capsys, models["a"], data, fresh, "--masking", "token")[0] == 0
    assert result_contents(out) == result_contents(fresh)


def test_other_weights_in_the_same_directory_are_refused(tmp_path, capsys, models):
    import shutil

    data, out, model = _data(tmp_path / "p.jsonl"), tmp_path / "out", tmp_path / "model"
    shutil.copytree(models["a"], model)
    assert _run(capsys, model, data, out)[0] == 0
    shutil.copy(models["b"] / "model.safetensors", model / "model.safetensors")  # retrained in place
    rc, text = _run(capsys, model, data, out)
    assert rc == 2 and "weights" in text and "--overwrite" in text, text
    assert _run(capsys, model, data, out, "--overwrite")[0] == 0
    fresh = tmp_path / "fresh"
    assert _run(capsys, model, data, fresh)[0] == 0
    assert result_contents(out) == result_contents(fresh)


def test_a_run_that_failed_on_bad_input_does_not_block_the_corrected_rerun(tmp_path, capsys, models):
    bad = [*PROMPTS[:2], {**PROMPTS[2], "players": [0, 99]}]
    data, out = _data(tmp_path / "p.jsonl", bad), tmp_path / "out"
    rc, text = _run(capsys, models["a"], data, out)
    assert rc == 2 and "'key'" in text and "out of range" in text
    _data(data)  # the corrected file
    rc, text = _run(capsys, models["a"], data, out)
    assert rc == 0 and "3 prompts: 1 computed, 2 already done" in text, text


def test_a_bit_flipped_result_is_detected_and_recomputed(tmp_path, capsys, models):
    data, out = _data(tmp_path / "p.jsonl"), tmp_path / "out"
    assert _run(capsys, models["a"], data, out)[0] == 0
    before = result_contents(out)
    path = out / "sky.safetensors"
    damaged = bytearray(path.read_bytes())
    damaged[-20] ^= 0x04  # one bit of the stored values
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="checksum"):
        InteractionResult.load(path)
    rc, text = _run(capsys, models["a"], data, out)
    assert rc == 0 and "3 prompts: 1 computed, 2 already done" in text, text
    assert result_contents(out) == before


def test_compare_reuses_a_cached_generation_only_for_the_same_weights(tmp_path, models):
    from kdi_fast.models import load_model, load_tokenizer
    from kdi_fast.pipeline import generate_outputs

    prompts = [p["prompt"] for p in PROMPTS[:2]]
    tok = load_tokenizer(models["a"])
    a, b = load_model(models["a"]), load_model(models["b"])
    cache = tmp_path / "generations.json"
    generate_outputs(a, tok, prompts, max_new_tokens=4, cache=cache)
    stored = json.loads(cache.read_text())
    cache.write_text(json.dumps({k: {**v, "text": "from the cache"} for k, v in stored.items()}))
    assert generate_outputs(a, tok, prompts, max_new_tokens=4, cache=cache) == ["from the cache"] * 2  # same weights
    # other weights in the same cache (as a --teacher retrained in place would be): generated afresh
    assert "from the cache" not in generate_outputs(b, tok, prompts, max_new_tokens=4, cache=cache)


def test_sparse_results_are_reused_only_for_the_same_identity(tmp_path, capsys, models):
    from kdi_fast.engine import SparseInteractionResult

    long_prompt = ("Anna bought seven red pencils and four blue pens at the small shop near the old station, then "
                   "she gave two pencils to her friend Ben before the train left.")
    data, out = _data(tmp_path / "p.jsonl", [{"id": "anna", "prompt": long_prompt, "target": " noon"}]), tmp_path / "o"
    sparse = ["--n", "20", "--budget", "250"]
    assert _run(capsys, models["a"], data, out, *sparse)[0] == 0
    first = SparseInteractionResult.load(out / "anna.sparse.safetensors")
    rc, text = _run(capsys, models["a"], data, out, *sparse, "--masking", "token")
    assert rc == 2 and "masking" in text and "--overwrite" in text, text
    rc, text = _run(capsys, models["b"], data, out, *sparse)
    assert rc == 2 and "model" in text and "--overwrite" in text, text
    assert _run(capsys, models["a"], data, out, *sparse)[0] == 0  # the same identity: reused
    again = SparseInteractionResult.load(out / "anna.sparse.safetensors")
    assert torch.equal(again.interactions, first.interactions)
    assert json.loads((out / "summary.json").read_text())["prompts"][0]["resumed"]
    assert _run(capsys, models["b"], data, out, *sparse, "--overwrite")[0] == 0
