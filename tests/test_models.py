"""Model loading and students made from a teacher."""

import pytest
import torch

from kdi_fast import models


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_tiny_models_are_deterministic(arch):
    a, b = models.tiny_causal_lm(arch, seed=3), models.tiny_causal_lm(arch, seed=3)
    ids = torch.tensor([[5, 17, 300, 9]])
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits)
    assert a(ids).logits.shape == (1, 4, 49152)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_student_keeps_chosen_layers(arch):
    teacher = models.tiny_causal_lm(arch, num_layers=4, seed=1)
    student = models.student_from_teacher(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    ids = torch.tensor([[5, 17, 300, 9, 41]])
    # The student equals the teacher with layers 1 and 2 removed: compare with a manual forward.
    layers = models._decoder_layers(teacher)
    with torch.no_grad():
        got = student(ids).logits
        kept_only = models.student_from_teacher(teacher, [0, 1, 2, 3])
        torch.testing.assert_close(kept_only(ids).logits, teacher(ids).logits)
        # generation with a KV cache works (layer_idx renumbered)
        out = student.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert out.shape == (1, 8)
    assert not torch.allclose(got, teacher(ids).logits)
    assert len(models._decoder_layers(student)) == 2 and models._decoder_layers(student)[1] is not layers[3]


def test_student_even_spacing_and_errors():
    teacher = models.tiny_causal_lm("llama", num_layers=6)
    assert models.student_from_teacher(teacher, 3).config.num_hidden_layers == 3
    with pytest.raises(ValueError, match="between 1 and"):
        models.student_from_teacher(teacher, 7)
    with pytest.raises(ValueError, match="increasing distinct"):
        models.student_from_teacher(teacher, [2, 1])


def test_fresh_student_config():
    teacher = models.tiny_causal_lm("llama", num_layers=3, hidden_size=64)
    student = models.fresh_student(teacher, num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    assert student.config.num_hidden_layers == 1 and student.config.vocab_size == teacher.config.vocab_size
    assert student(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 49152)
    with pytest.raises(ValueError, match="no field"):
        models.fresh_student(teacher, not_a_field=1)


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hugging Face model id"):
        models.load_model(tmp_path / "nope")


def test_smollm2_tokenizer(smollm_tokenizer):
    assert len(smollm_tokenizer) == 49152
    assert smollm_tokenizer.chat_template
    enc = smollm_tokenizer("green hand", return_offsets_mapping=True)
    assert enc["offset_mapping"][0][0] == 0


@pytest.mark.slow
def test_smollm2_real_model_generates():
    model = models.load_model("smollm2")
    tok = models.load_tokenizer("smollm2")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_hub_ids_go_to_from_pretrained_with_the_users_cache(tmp_path, smollm_tokenizer):
    """A model id is loaded by from_pretrained from the user's hub cache (offline here), in a fresh process so
    that HF_HUB_CACHE and HF_HUB_OFFLINE are read as a user's environment sets them."""
    import os
    import subprocess
    import sys

    from kdi_fast.cli.checks import check_model_dir

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someorg--tiny-lm"
    snapshot = repo / "snapshots" / commit
    models.tiny_causal_lm("llama", hidden_size=16, num_layers=1, seed=2).save_pretrained(snapshot)
    smollm_tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "from kdi_fast import models\n"
        "m, t = models.load_model('someorg/tiny-lm'), models.load_tokenizer('someorg/tiny-lm')\n"
        "print('LOADED', m.config.hidden_size, m.config.num_hidden_layers, len(t), m.training)\n"
        "try:\n    models.load_model('someorg/not-cached')\nexcept OSError as e:\n    print('ERROR', e)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED 16 1 49152 False" in out.stdout
    error = [line for line in out.stdout.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1 and "'someorg/not-cached'" in error[0] and "local directory" in error[0], out.stdout
    check_model_dir("--model", "someorg/tiny-lm")  # the CLI lets ids through to from_pretrained
    with pytest.raises(ValueError, match="hub id"):
        check_model_dir("--model", str(tmp_path / "missing"))


def test_smollm2_tokenizer_alone_writes_no_model(tmp_path, monkeypatch):
    monkeypatch.setenv("KDI_FAST_CACHE", str(tmp_path))
    tokenizer = models.load_tokenizer("smollm2")
    assert len(tokenizer) == 49152 and tokenizer.chat_template
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".safetensors", ".bin")) or f == "config.json"], files


def test_fresh_student_with_a_value_of_the_wrong_type_is_a_clear_error():
    from kdi_fast.distill import build_student
    from kdi_fast.models import fresh_student, tiny_causal_lm

    teacher = tiny_causal_lm("llama", vocab_size=64, num_layers=4)
    for recipe, field in (("fresh:hidden_size=abc", "hidden_size"), ("fresh:rms_norm_eps=small", "rms_norm_eps"),
                          ("fresh:num_hidden_layers=2.5", "num_hidden_layers")):
        with pytest.raises(ValueError, match=rf"{field}=.*must be an? (int|number)"):
            build_student(teacher, recipe)
    with pytest.raises(ValueError, match="hidden_size=0"):
        fresh_student(teacher, hidden_size=0)
    student = fresh_student(teacher, num_hidden_layers=2, rms_norm_eps=1e-5)
    assert student.config.num_hidden_layers == 2 and student.config.rms_norm_eps == 1e-5
