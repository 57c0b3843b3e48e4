"""engine.scheduler: every scheduling path against the naive computation (a full Hugging Face forward of every
masked input, full logits, log-softmax), in float64 so that agreement is to ~1e-12."""

import copy

import pytest
import torch

from kdi_fast.engine.masking import MaskedSequence
from kdi_fast.engine.memory import TensorMemoryMeter
from kdi_fast.engine.scheduler import (ModelDims, all_mask_logprobs, masks_of_rows, plan_tree, run_tree,
                                       segment_bounds)

VOCAB = 300


def _sequence(model, owner, masking, *, prompt_len, seed=0, baseline="pad"):
    """A random prompt of prompt_len tokens + target; owner: players of the prompt tokens (-1: none)."""
    g = torch.Generator().manual_seed(seed)
    length = len(owner)
    target_len = length - prompt_len + 1
    ids = torch.randint(3, VOCAB, (length,), generator=g)
    target = torch.cat([ids[prompt_len:], torch.randint(3, VOCAB, (1,), generator=g)])
    assert target.shape[0] == target_len
    n = max(owner) + 1
    embeds, base = None, None
    if masking == "embedding":
        emb = model.get_input_embeddings()
        embeds = emb(ids).detach()
        base = torch.zeros(embeds.shape[1], dtype=embeds.dtype) if baseline == "zeros" else \
            emb(torch.tensor([2]))[0].detach()
    elif masking == "token":
        base = 2
    seq = MaskedSequence(input_ids=ids, owner=torch.tensor(owner), n=n, masking=masking, baseline=base,
                         embeds=embeds)
    prediction = list(range(prompt_len - 1, prompt_len - 1 + target_len))
    return seq, target, prediction


def _naive(model, seq, target, prediction):
    """For every mask: the masked input built token by token, one full forward, full logits."""
    rows = []
    ids = seq.input_ids.tolist()
    owner = seq.owner.tolist()
    positions = torch.arange(len(ids))[None]
    with torch.no_grad():
        for mask in range(1 << seq.n):
            present = [o < 0 or bool(mask >> o & 1) for o in owner]
            if seq.masking.name == "embedding":
                embeds = torch.stack([seq.embeds[t] if present[t] else seq.baseline for t in range(len(ids))])
                kwargs = dict(inputs_embeds=embeds[None])
            elif seq.masking.name == "token":
                kwargs = dict(input_ids=torch.tensor([[i if p else seq.baseline for i, p in zip(ids, present)]]))
            else:
                kwargs = dict(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([present]).long())
            logits = model(**kwargs, position_ids=positions).logits[0].double().log_softmax(-1)
            rows.append(logits[torch.tensor(prediction), target])
    return torch.stack(rows)


def _model(tiny_lm, arch, seed=0):
    return tiny_lm(arch, vocab_size=VOCAB, seed=seed).double()


# players spread (player 3 before the end), a scattered group out of position order with a player at position 0,
# adjacent players at the start, and players at the very end of the prompt.
LAYOUTS = {
    "spread": ([-1, 0, -1, 1, 1, -1, 2, -1, -1, 3, -1, -1], 12),
    "scattered_groups": ([2, -1, 0, 1, 2, -1, 0, -1, 3, -1], 10),
    "at_start": ([0, 1, 2, 3, -1, -1, -1, -1, -1, -1], 10),
    "at_end": ([-1, -1, -1, -1, -1, -1, 0, 1, 2, 3], 10),
}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("masking", ["embedding", "token", "attention"])
def test_prefix_tree_equals_naive(tiny_lm, arch, masking):
    model = _model(tiny_lm, arch)
    prompt_owner, prompt_len = LAYOUTS["spread"]
    seq, target, prediction = _sequence(model, prompt_owner + [-1] * 3, masking, prompt_len=prompt_len)
    got, stats = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30, path="prefix_tree")
    assert stats.path == "prefix_tree"
    torch.testing.assert_close(got, _naive(model, seq, target, prediction), rtol=0, atol=1e-10)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_and_batch_split(tiny_lm, layout):
    """max_tokens=1: one node per forward at every level; 6: levels split differently; 4096: whole levels."""
    model = _model(tiny_lm, "llama", seed=1)
    masking = "attention" if layout == "scattered_groups" else "embedding"
    prompt_owner, prompt_len = LAYOUTS[layout]
    seq, target, prediction = _sequence(model, prompt_owner + [-1] * 2, masking, prompt_len=prompt_len, seed=2)
    naive = _naive(model, seq, target, prediction)
    for max_tokens in (1, 6, 4096):
        got, stats = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30, path="prefix_tree",
                                       max_tokens=max_tokens)
        if max_tokens == 1:
            assert stats.rows_per_forward == [1] * (seq.n + 1)
        torch.testing.assert_close(got, naive, rtol=0, atol=1e-10)


def test_gpt2_scattered_groups_with_token_masking(tiny_lm):
    model = _model(tiny_lm, "gpt2", seed=3)
    prompt_owner, prompt_len = LAYOUTS["scattered_groups"]
    seq, target, prediction = _sequence(model, prompt_owner + [-1] * 4, "token", prompt_len=prompt_len, seed=4)
    got, _ = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30, path="prefix_tree", max_tokens=8)
    torch.testing.assert_close(got, _naive(model, seq, target, prediction), rtol=0, atol=1e-10)


def test_one_player_and_a_one_token_target(tiny_lm):
    model = _model(tiny_lm, "qwen2", seed=5)
    seq, target, prediction = _sequence(model, [-1, -1, 0, -1, -1], "embedding", prompt_len=5)
    got, _ = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30, path="prefix_tree")
    assert got.shape == (2, 1)
    torch.testing.assert_close(got, _naive(model, seq, target, prediction), rtol=0, atol=1e-10)


def test_float32_model_agrees_with_float64(tiny_lm):
    model64 = _model(tiny_lm, "llama", seed=6)
    model32 = copy.deepcopy(model64).float()
    owner, prompt_len = LAYOUTS["spread"]
    seq64, target, prediction = _sequence(model64, owner + [-1] * 3, "embedding", prompt_len=prompt_len)
    seq32, _, _ = _sequence(model32, owner + [-1] * 3, "embedding", prompt_len=prompt_len)
    got32, _ = all_mask_logprobs(model32, seq32, target, prediction, budget=1 << 30)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), _naive(model64, seq64, target, prediction), rtol=0, atol=1e-4)


def test_token_forwards_follow_the_tree(tiny_lm):
    """Segment k runs 2^k times: prefix once, the tail for every mask; fewer than the naive 2^n x S."""
    model = _model(tiny_lm, "gpt2")
    owner, prompt_len = LAYOUTS["spread"]
    seq, target, prediction = _sequence(model, owner + [-1] * 3, "embedding", prompt_len=prompt_len)
    bounds, order = segment_bounds(seq.owner, seq.n)
    assert bounds == [0, 1, 3, 6, 9, 15] and order == [0, 1, 2, 3]
    _, stats = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30)
    assert stats.token_forwards == 1 * 1 + 2 * 2 + 4 * 3 + 8 * 3 + 16 * 6
    assert stats.token_forwards < 16 * len(seq)


def test_masks_of_rows_puts_the_first_player_in_the_top_bit():
    rows = torch.arange(8)
    # order: the first player by position is the caller's player 2, then 0, then 1.
    masks = masks_of_rows(rows, 3, [2, 0, 1])
    expected = [((r >> 2 & 1) << 2) | ((r >> 1 & 1) << 0) | ((r & 1) << 1) for r in range(8)]
    assert masks.tolist() == expected
    assert sorted(masks.tolist()) == list(range(8))


def test_memory_budget_bounds_the_measured_working_memory(tiny_lm):
    model = tiny_lm("llama", vocab_size=VOCAB, hidden_size=64, num_layers=2)
    owner = [-1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, -1] + [-1] * 5
    seq, target, prediction = _sequence(model, owner, "embedding", prompt_len=12)
    dims = ModelDims.of(model)
    big = plan_tree(seq, prediction, dims, 1 << 30, 4096)
    small_budget = big.estimated_bytes // 4
    small = plan_tree(seq, prediction, dims, small_budget, 4096)
    assert small.rows[-1] < big.rows[-1] and small.estimated_bytes <= small_budget
    reference, _ = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30)
    with torch.no_grad(), TensorMemoryMeter() as meter:
        got, _ = run_tree(model, seq, target, small, dims, dims.head_chunk(small_budget))
    assert 0 < meter.peak <= small_budget
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="too small"):
        plan_tree(seq, prediction, dims, 1000, 4096)


@pytest.mark.parametrize("masking", ["embedding", "attention"])
def test_unsupported_attention_falls_back_to_full_forwards(tiny_lm, masking):
    """A sliding window shorter than the sequence: the prefix tree refuses, the flat path uses the model's own
    attention and still equals the naive computation (under attention masking it keeps the hidden tokens: a
    window counts sequence places, so dropping them would let farther tokens in)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                         max_window_layers=0, layer_types=["sliding_attention"] * 2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).double().eval()
    owner, prompt_len = LAYOUTS["spread"]
    seq, target, prediction = _sequence(model, owner + [-1] * 2, masking, prompt_len=prompt_len)
    with pytest.warns(UserWarning, match="sliding-window"):
        got, stats = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30)
    assert stats.path == "flat" and "sliding" in stats.fallback_reason
    torch.testing.assert_close(got, _naive(model, seq, target, prediction), rtol=0, atol=1e-10)
    assert model.config._attn_implementation != "kdi_fast_prefix_tree"  # restored


def test_a_layer_that_bypasses_the_attention_interface_is_detected(tiny_lm):
    model = _model(tiny_lm, "gpt2", seed=7)
    model.transformer.h[1].attn.config = copy.copy(model.config)  # this layer keeps its own (sdpa) setting
    owner, prompt_len = LAYOUTS["spread"]
    seq, target, prediction = _sequence(model, owner + [-1] * 2, "embedding", prompt_len=prompt_len)
    with pytest.raises(RuntimeError, match="1 of 2 attention layers"):
        all_mask_logprobs(model, seq, target, prediction, budget=1 << 30, path="prefix_tree")
    with pytest.warns(UserWarning, match="bypasses"):
        got, stats = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30)
    assert stats.path == "flat"
    torch.testing.assert_close(got, _naive(model, seq, target, prediction), rtol=0, atol=1e-10)


@pytest.mark.parametrize("path, max_tokens", [("prefix_tree", 1), ("prefix_tree", 4096), ("flat", 4096)])
def test_max_order_evaluates_only_the_small_subsets(tiny_lm, path, max_tokens):
    import kdi_fast

    model = _model(tiny_lm, "qwen2", seed=9)
    owner = [-1, 3, 0, -1, 4, 1, -1, 2, -1, -1, -1] + [-1] * 2
    seq, target, prediction = _sequence(model, owner, "embedding", prompt_len=11, seed=9)
    got, stats = all_mask_logprobs(model, seq, target, prediction, budget=1 << 30, path=path,
                                   max_tokens=max_tokens, max_order=2)
    layout = kdi_fast.subsets(5, 2)
    assert got.shape == (layout.shape[0], 3) and stats.path == path
    torch.testing.assert_close(got, _naive(model, seq, target, prediction)[layout], rtol=0, atol=1e-10)
    if path == "prefix_tree":
        assert stats.token_forwards < layout.shape[0] * len(seq)
