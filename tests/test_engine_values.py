"""engine.values: v(x_T) for arbitrary mask sets (any n) through the mask trie, against full forwards of each
masked input built token by token, in float64; the trie's cuts and sharing; bad input."""

import pytest
import torch

from kdi_fast.engine import compute_interactions
from kdi_fast.engine.scheduler import shared_prefix
from kdi_fast.engine.values import ValueFunction, as_mask_matrix, choose_cuts, compute_values, prefix_counts
from kdi_fast.engine.value import values_from_logprobs

PROMPT = ("The old lighthouse keeper counted seven ships before the storm, then wrote their names in a small "
          "book, closed it, and climbed the stairs again at dawn.")


def naive(model, function, masks):
    """v for each row of masks [M, n] bool: the masked input built token by token, one full forward each."""
    seq = function.seq
    ids, owner = seq.input_ids, seq.owner.tolist()
    positions = torch.arange(len(ids))[None]
    out = []
    with torch.no_grad():
        for row in masks.tolist():
            present = [o < 0 or bool(row[o]) for o in owner]
            if seq.masking.name == "embedding":
                x = torch.stack([seq.embeds[t] if present[t] else seq.baseline for t in range(len(ids))])
                kwargs = dict(inputs_embeds=x[None])
            elif seq.masking.name == "token":
                kwargs = dict(input_ids=torch.tensor([[i if p else seq.baseline
                                                       for i, p in zip(ids.tolist(), present)]]))
            else:
                kwargs = dict(input_ids=ids[None], attention_mask=torch.tensor([present]).long())
            logp = model(**kwargs, position_ids=positions).logits[0].double().log_softmax(-1)
            out.append(values_from_logprobs(logp[torch.tensor(function.prediction), function.target]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def models():
    from kdi_fast.models import tiny_causal_lm

    return {arch: tiny_causal_lm(arch, seed=5).double() for arch in ("llama", "gpt2")}


@pytest.mark.parametrize("arch,masking", [("llama", "embedding"), ("gpt2", "token"), ("llama", "attention"),
                                          ("gpt2", "attention")])
def test_random_and_structured_masks_equal_full_forwards(models, smollm_tokenizer, arch, masking):
    model = models[arch]
    g = torch.Generator().manual_seed(3)
    n = 20  # more than the exact engine's 16
    random = torch.rand(12, n, generator=g) < 0.5
    shared = random[:4].repeat(3, 1)  # structured: rows that agree on their first 14 players
    shared[:, 14:] = torch.rand(12, n - 14, generator=g) < 0.5
    masks = torch.cat([random, shared, random[:2], torch.ones(1, n, dtype=torch.bool),
                       torch.zeros(1, n, dtype=torch.bool)])  # duplicates and the extremes too
    values, function = compute_values(model, smollm_tokenizer, PROMPT, masks, target=" at dawn", masking=masking,
                                      path="prefix_tree")  # "auto" would run these 24 masks flat
    assert function.n == n and values.shape == (masks.shape[0],) and values.dtype == torch.float64
    assert function.stats.path == "prefix_tree"
    assert function.stats.evaluated == torch.unique(masks, dim=0).shape[0] < masks.shape[0]
    torch.testing.assert_close(values, naive(model, function, masks), atol=1e-9, rtol=0)
    length = len(function.seq)
    flat = ValueFunction.prepare(model, smollm_tokenizer, PROMPT, target=" at dawn", masking=masking,
                                 n_players=n, path="flat", max_batch_tokens=4 * length)  # 4 masks per forward
    torch.testing.assert_close(flat(masks), values, atol=1e-9, rtol=0)
    assert flat.stats.path == "flat" and flat.stats.forwards == 7
    if masking == "attention":  # hidden tokens do not run (batches sorted by kept length): fewer positions
        assert flat.stats.token_forwards < 0.9 * flat.stats.naive_token_forwards
    else:  # every token, but the ones before the first player once
        shared = shared_prefix(model, flat.seq, flat.prediction)
        distinct = torch.unique(masks, dim=0).shape[0]
        assert flat.stats.token_forwards == flat.stats.naive_token_forwards - (distinct - 1) * shared
    # sharing: fewer token positions than independent full forwards of the same distinct masks
    assert function.stats.token_forwards < function.stats.naive_token_forwards


@pytest.mark.parametrize("arch,masking", [("llama", "embedding"), ("gpt2", "embedding"), ("llama", "attention"),
                                          ("gpt2", "attention")])
def test_flat_path_runs_the_chat_prefix_once(models, smollm_tokenizer, arch, masking):
    """With a chat template every masked input starts with the same system turn: the flat path runs it once and
    continues every batch from its key/value cache, with the values of full forwards."""
    model = models[arch]
    g = torch.Generator().manual_seed(4)
    masks = torch.cat([torch.rand(10, 12, generator=g) < 0.5, torch.zeros(1, 12, dtype=torch.bool)])
    flat = ValueFunction.prepare(model, smollm_tokenizer, PROMPT, target=" at dawn", masking=masking, n_players=12,
                                 chat_template=True, path="flat", max_batch_tokens=4 * 80)
    values = flat(masks)
    torch.testing.assert_close(values, naive(model, flat, masks), atol=1e-9, rtol=0)
    shared = shared_prefix(model, flat.seq, flat.prediction)
    first = int((flat.seq.owner >= 0).nonzero()[0])
    assert shared == first > 10  # the system turn and the user header
    length, m = len(flat.seq), masks.shape[0]
    if masking == "embedding":
        assert flat.stats.token_forwards == shared + m * (length - shared)
    else:  # the hidden tokens do not run either (padding aside)
        assert shared + m * (length - shared) > flat.stats.token_forwards
    assert flat.planned_path(masks) == "flat"
    assert flat._flat_share(masks) <= (shared + m * (length - shared)) / (m * length)


def test_small_batches_and_bit_masks_match_the_exact_engine(models, smollm_tokenizer):
    """n = 6, all 64 masks as 1-D bit masks, tiny batches (many trie batches): the exact engine's values."""
    model = models["llama"]
    exact = compute_interactions(model, smollm_tokenizer, [PROMPT], targets=[" at dawn"], n_players=6,
                                 progress=False)[0]
    values, function = compute_values(model, smollm_tokenizer, PROMPT, torch.arange(64).flip(0), n_players=6,
                                      target=" at dawn", max_batch_tokens=8)
    assert function.players == exact.players
    torch.testing.assert_close(values.flip(0), exact.values, atol=1e-10, rtol=0)
    assert function.stats.forwards > 20


def test_memory_budget_is_respected_or_refused(models, smollm_tokenizer):
    model = models["gpt2"]
    masks = torch.rand(16, 24) < 0.5
    with pytest.raises(ValueError, match="memory_budget=.* too small"):
        compute_values(model, smollm_tokenizer, PROMPT, masks, target=" at dawn", memory_budget=1000)
    small, _ = compute_values(model, smollm_tokenizer, PROMPT, masks, target=" at dawn", memory_budget="2MB")
    big, _ = compute_values(model, smollm_tokenizer, PROMPT, masks, target=" at dawn")
    torch.testing.assert_close(small, big, atol=1e-10, rtol=0)


def test_cuts_follow_the_sharing():
    # masks agreeing on the first 6 of 8 players: one cut after player 6 beats cutting after every player
    g = torch.Generator().manual_seed(0)
    head = (torch.rand(4, 6, generator=g) < 0.5).repeat_interleave(16, 0)
    masks = torch.cat([head, torch.rand(64, 2, generator=g) < 0.5], 1)
    counts = prefix_counts(masks)
    assert counts[0] == 1 and counts[6] == 4 and counts[-1] == torch.unique(masks, dim=0).shape[0]
    cuts = choose_cuts(counts, [10 * i for i in range(8)] + [100], max_tokens=4096, overhead=16)
    assert cuts[-1] == 8 and 6 in cuts
    # random masks share nothing once U = M: no cut beyond the first log2(M) + a few players
    random = torch.rand(64, 40, generator=g) < 0.5
    cuts = choose_cuts(prefix_counts(random), [10 * i for i in range(40)] + [500], 4096, 16)
    assert all(c <= 12 for c in cuts[:-1]) and cuts[-1] == 40


def test_bad_masks_and_prompts(models, smollm_tokenizer):
    model = models["llama"]
    with pytest.raises(ValueError, match=r"masks must be a bool Tensor \[M, n=5\]"):
        as_mask_matrix(torch.zeros(3, 4, dtype=torch.bool), 5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        as_mask_matrix(torch.full((3, 5), 2), 5)
    with pytest.raises(ValueError, match="at most 62 players"):
        as_mask_matrix(torch.arange(4), 70)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\^3\)"):
        as_mask_matrix(torch.tensor([9]), 3)
    with pytest.raises(ValueError, match="fewer than the 40 players asked"):
        compute_values(model, smollm_tokenizer, "Too short a prompt.", torch.zeros(2, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match="pass n_players= or players="):
        compute_values(model, smollm_tokenizer, PROMPT, torch.arange(4))


def test_more_players_than_a_bit_mask_holds(models, smollm_tokenizer):
    """n = 70 (beyond int64 bit masks): bool masks through the trie equal token-by-token full forwards."""
    prompt = " ".join(f"word{i}" if i % 7 else "and" for i in range(80)) + "."
    model = models["gpt2"]
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(6, 70, generator=g) < 0.5
    masks[3:, :60] = masks[0, :60]  # three masks that share their first 60 players
    values, function = compute_values(model, smollm_tokenizer, prompt, masks, target=" end", path="prefix_tree")
    assert function.n == 70 and function.stats.path == "prefix_tree"
    torch.testing.assert_close(values, naive(model, function, masks), atol=1e-9, rtol=0)


def test_auto_runs_flat_when_the_trie_would_share_little(models, smollm_tokenizer):
    """Uniformly random masks of n = 20 share only their first players: path="auto" runs them as independent
    forwards (values equal to the trie's), structured masks that share most of their prefix through the trie."""
    from kdi_fast.engine.values import TRIE_MAX_TOKEN_SHARE

    model = models["llama"]
    g = torch.Generator().manual_seed(7)
    random = torch.rand(24, 20, generator=g) < 0.5
    auto = ValueFunction.prepare(model, smollm_tokenizer, PROMPT, target=" at dawn", n_players=20)
    trie = ValueFunction.prepare(model, smollm_tokenizer, PROMPT, target=" at dawn", n_players=20, path="prefix_tree")
    expected = trie(random)
    assert trie.stats.token_forwards > TRIE_MAX_TOKEN_SHARE * trie.stats.naive_token_forwards
    # token_share plans the same trie without a forward: the share the trie just ran
    assert trie.token_share(random) == pytest.approx(trie.stats.token_forwards / trie.stats.naive_token_forwards)
    assert auto.planned_path(random) == "flat" and trie.planned_path(random) == "prefix_tree"
    torch.testing.assert_close(auto(random), expected, atol=1e-9, rtol=0)
    assert auto.stats.path == "flat" and "0." in auto.stats.fallback
    shared = shared_prefix(model, auto.seq, auto.prediction)  # the tokens before the first player run once
    assert auto.stats.token_forwards == auto.stats.naive_token_forwards - (random.shape[0] - 1) * shared
    shared = random[:1].repeat(24, 1)
    shared[:, 17:] = torch.rand(24, 3, generator=g) < 0.5  # the same first 17 players
    assert auto.planned_path(shared) == "prefix_tree"
    auto(shared)
    assert auto.stats.path == "prefix_tree"


def test_auto_rule_counts_the_tokens_attention_masking_skips(models, smollm_tokenizer):
    """Under attention masking the flat path runs only the kept tokens, so "auto" weighs the trie's share against
    the flat path's: masks sharing their first 10 of 20 players go through the trie with embedding masking
    (share < TRIE_MAX_TOKEN_SHARE) but flat with attention masking (share > TRIE_MAX_TOKEN_SHARE * kept share)."""
    from kdi_fast.engine.values import TRIE_MAX_TOKEN_SHARE

    model = models["llama"]
    g = torch.Generator().manual_seed(7)
    masks = (torch.rand(1, 20, generator=g) < 0.5).repeat(24, 1)
    masks[:, 10:] = torch.rand(24, 10, generator=g) < 0.5
    by = {m: ValueFunction.prepare(model, smollm_tokenizer, PROMPT, target=" at dawn", n_players=20, masking=m)
          for m in ("embedding", "attention")}
    share = by["attention"].token_share(masks)
    kept = by["attention"].seq.key_mask(0, len(by["attention"].seq), torch.unique(masks, dim=0)).float().mean()
    assert TRIE_MAX_TOKEN_SHARE * kept < by["embedding"].token_share(masks) == share < TRIE_MAX_TOKEN_SHARE
    assert by["embedding"].planned_path(masks) == "prefix_tree" and by["attention"].planned_path(masks) == "flat"
    values = by["attention"](masks)
    assert by["attention"].stats.path == "flat"
    trie = ValueFunction.prepare(model, smollm_tokenizer, PROMPT, target=" at dawn", n_players=20,
                                 masking="attention", path="prefix_tree")
    torch.testing.assert_close(values, trie(masks), atol=1e-9, rtol=0)
