"""The one masking layer: the CIP loss's v (its batched, differentiable forward) equals compute_interactions' v
(prefix tree and flat paths) for the same players (CIP's groups passed as the engine's players) and target, for
every masking strategy and baseline, on GPT-2, Llama and Qwen2 shapes in float64; and one baseline resolution."""

import copy

import pytest
import torch

from kdi_fast.engine import compute_interactions
from kdi_fast.engine.masking import (BASELINES, MASKINGS, MaskedSequence, baseline_token_id, check_masking,
                                     get_masking, tokens_present)
from kdi_fast.engine.players import encode_prompt
from kdi_fast.engine.target import tokenize_target
from kdi_fast.losses import CIP
from kdi_fast.models import tiny_causal_lm

from devices import DEVICES

PROMPT = "The quick brown fox jumps over the lazy dog near"
TARGET = " the river bank"
TOLERANCE = {"gpt2": 1e-10, "llama": 1e-7, "qwen2": 1e-7}  # Llama/Qwen2's RMSNorm rounds to float32
CASES = [("embedding", b) for b in (*BASELINES, 7)] + [("token", b) for b in ("pad", "unk", 7)] + [("attention", "pad")]


def _cip_batch(tokenizer, device="cpu"):
    prompt_ids = list(encode_prompt(tokenizer, PROMPT).input_ids)
    target_ids = tokenize_target(tokenizer, TARGET)
    ids = torch.tensor([prompt_ids + target_ids], device=device)
    labels = torch.tensor([[-100] * len(prompt_ids) + target_ids], device=device)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def _cip_and_engine(model, tokenizer, masking, baseline, *, path="auto", m=3):
    cip = CIP(m, masking=masking, baseline=baseline, tokenizer=tokenizer, seed=1)
    records = cip.interactions(model, _cip_batch(tokenizer, next(model.parameters()).device), step=0)
    assert len(records) == 1 and len(records[0].players) == m
    result = compute_interactions(model, tokenizer, [PROMPT], targets=[TARGET], players=[records[0].players],
                                  masking=masking, baseline=baseline, path=path, progress=False)[0]
    assert result.stats["path"] == ("prefix_tree" if path == "auto" else path)
    return records[0].values.detach().cpu(), result.values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(TOLERANCE))
@pytest.mark.parametrize("masking, baseline", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_cip_values_equal_the_engines(arch, masking, baseline, device, smollm_tokenizer):
    model = tiny_causal_lm(arch, hidden_size=16, seed=3).double().to(device)
    cip_v, engine_v = _cip_and_engine(model, smollm_tokenizer, masking, baseline)
    assert cip_v.dtype == engine_v.dtype == torch.float64
    assert cip_v.std() > 1e-3  # the masks change v: the comparison is not between constants
    torch.testing.assert_close(cip_v, engine_v, rtol=0, atol=TOLERANCE[arch])


@pytest.mark.parametrize("masking", sorted(MASKINGS))
def test_cip_values_equal_the_engines_flat_path(masking, smollm_tokenizer):
    model = tiny_causal_lm("gpt2", hidden_size=16, seed=4).double()
    cip_v, engine_v = _cip_and_engine(model, smollm_tokenizer, masking, "pad", path="flat", m=4)
    torch.testing.assert_close(cip_v, engine_v, rtol=0, atol=1e-10)


def test_a_model_without_pad_token_uses_the_config_pad_then_eos_in_both(smollm_tokenizer):
    tokenizer = copy.deepcopy(smollm_tokenizer)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None
    model = tiny_causal_lm("gpt2", hidden_size=16, seed=5).double()
    model.config.pad_token_id = 11
    assert baseline_token_id(tokenizer, "pad", 49152, model.config) == 11  # tokenizer pad -> config pad
    cip_v, engine_v = _cip_and_engine(model, tokenizer, "embedding", "pad")
    torch.testing.assert_close(cip_v, engine_v, rtol=0, atol=1e-10)
    model.config.pad_token_id = None
    assert baseline_token_id(tokenizer, "pad", 49152, model.config) == tokenizer.eos_token_id  # -> eos
    eos_v, engine_eos_v = _cip_and_engine(model, tokenizer, "token", "pad")
    torch.testing.assert_close(eos_v, engine_eos_v, rtol=0, atol=1e-10)
    same_as_id, _ = _cip_and_engine(model, tokenizer, "token", tokenizer.eos_token_id)
    torch.testing.assert_close(eos_v, same_as_id, rtol=0, atol=0)
    model.config.eos_token_id = None
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="pad_token_id or an eos_token_id"):
        CIP(2, baseline="pad")(model, _cip_batch(smollm_tokenizer), step=0)


def test_baseline_resolution_order():
    class Tok:
        pad_token_id, eos_token_id, unk_token_id = None, 9, None

    class Config:
        pad_token_id, eos_token_id, unk_token_id = None, [4, 5], 6

    assert baseline_token_id(Tok(), "pad", 100, Config()) == 9  # tokenizer eos before config eos
    assert baseline_token_id(None, "pad", 100, Config()) == 4  # the first of a list of eos ids
    assert baseline_token_id(Tok(), "unk", 100, Config()) == 6
    assert baseline_token_id(None, 42, 100) == 42
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        baseline_token_id(None, 100, 100)


def test_tokens_present_is_the_bit_of_the_owner():
    owner = torch.tensor([-1, 0, 1, 1, 2, -1])
    masks = torch.arange(8)
    got = tokens_present(owner, masks)
    want = torch.tensor([[o < 0 or bool(m >> o & 1) for o in owner.tolist()] for m in range(8)])
    assert torch.equal(got, want)
    batched = tokens_present(torch.stack([owner, owner.flip(0)]), torch.stack([masks, masks]))
    assert torch.equal(batched[0], want) and torch.equal(batched[1], want.flip(1))


def test_strategies_check_their_baselines():
    assert check_masking("embedding", "mean").needs_embeddings
    assert check_masking("attention", "anything").hides_keys  # no baseline used: any passes
    with pytest.raises(ValueError, match="masking must be one of"):
        get_masking("blank")
    with pytest.raises(ValueError, match="baseline='zeros' does not fit masking='token'"):
        check_masking("token", "zeros")
    for bad in ("blank", -1, True, 1.5):
        with pytest.raises(ValueError, match="baseline"):
            check_masking("embedding", bad)
    with pytest.raises(ValueError, match="needs embeds"):
        MaskedSequence(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 1, "embedding")
