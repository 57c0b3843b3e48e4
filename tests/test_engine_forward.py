"""engine.forward: log p(y*) with the LM head at the target positions only, against full logits of the model."""

import pytest
import torch

from kdi_fast.engine.forward import target_logprobs
from kdi_fast.engine.value import value_bound, values_from_logprobs


def _full_logits_reference(model, ids, target, start, **kw):
    logits = model(input_ids=ids, **kw).logits.double().log_softmax(-1)
    positions = torch.arange(start - 1, start - 1 + target.shape[-1])
    rows = torch.arange(ids.shape[0])[:, None]
    return logits[rows, positions[None], target.expand(ids.shape[0], -1)]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_matches_full_logits(tiny_lm, arch):
    model = tiny_lm(arch, vocab_size=300, seed=1)
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 12))
    target = ids[0, 8:]  # y* = the last 4 tokens of row 0, scored in every row
    got = target_logprobs(model, target, input_ids=ids)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _full_logits_reference(model, ids, target, 8), atol=1e-5, rtol=1e-5)


def test_embeds_mask_positions_and_explicit_start(tiny_lm):
    model = tiny_lm("llama", vocab_size=300, seed=2)
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 2] = 0
    target = torch.randint(3, 300, (2, 3))  # per-row targets at positions 6..8, sequence continues after them
    embeds = model.get_input_embeddings()(ids)
    got = target_logprobs(model, target, inputs_embeds=embeds, attention_mask=mask, target_start=6)
    ref = _full_logits_reference(model, ids, target, 6, attention_mask=mask)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_gradients_flow_to_embeddings(tiny_lm):
    model = tiny_lm("gpt2", vocab_size=200, seed=3)
    ids = torch.randint(3, 200, (1, 8))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    lp = target_logprobs(model, ids[0, 5:], inputs_embeds=embeds)
    values_from_logprobs(lp).sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_bad_input(tiny_lm):
    model = tiny_lm("llama", vocab_size=100)
    ids = torch.randint(3, 100, (1, 5))
    with pytest.raises(ValueError, match="exactly one"):
        target_logprobs(model, ids[0, 3:])
    with pytest.raises(ValueError, match="L >= 1"):
        target_logprobs(model, ids[0, :0], input_ids=ids)
    with pytest.raises(ValueError, match="outside a sequence"):
        target_logprobs(model, ids[0, 1:], input_ids=ids, target_start=3)


def test_values_are_the_logodds_of_the_geometric_mean():
    lp = torch.log(torch.tensor([[0.5, 0.2], [0.9, 0.9]]))
    p = torch.tensor([0.1 ** 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(values_from_logprobs(lp), torch.log(p / (1 - p)))
    extreme = values_from_logprobs(torch.tensor([[0.0], [-1e4]]))  # p = 1 and p ~ 0: clamped, finite
    assert torch.isfinite(extreme).all()
    torch.testing.assert_close(extreme.abs(), torch.full((2,), value_bound(), dtype=torch.float64))
