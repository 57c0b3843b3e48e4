"""Players for CIP: words from token ids (the same words as the engine finds from the prompt text and the
tokenizer's offsets) and seeded random partitions."""

import itertools

import pytest
import torch

from kdi_fast.engine.groups import partition_seed, player_of_token, random_groups, word_ids, words
from kdi_fast.engine.players import encode_prompt

TEXTS = [
    "Hello, world! The price is 3.5 dollars.",
    "I am a green hand means that I am a",
    "Robin has 28 packages of gum and 13 packages of candy.\nThere are 4 pieces in each package.",
    "Spaces  twice and\ttabs, unicode café naïve — dash",
    "don't O'Neil's home-town 2+2? 日本語 😀😀!",
]


@pytest.mark.parametrize("text", TEXTS)
def test_words_from_ids_are_the_engines_words(smollm_tokenizer, text):
    ids = smollm_tokenizer(text).input_ids
    engine = encode_prompt(smollm_tokenizer, text)
    assert list(engine.input_ids) == ids
    assert words(ids, smollm_tokenizer) == list(engine.words)
    assert word_ids(ids, smollm_tokenizer).tolist() == list(engine.word_of_token)


def test_words_by_hand(smollm_tokenizer):
    ids = smollm_tokenizer("Hello, world! It costs 3.5 dollars").input_ids
    assert words(ids, smollm_tokenizer) == ["Hello", ",", "world", "!", "It", "costs", "3", ".", "5", "dollars"]
    wid = word_ids(ids, smollm_tokenizer)
    players = wid[wid >= 0]  # every word is one contiguous run of tokens, in order
    assert torch.equal(torch.unique_consecutive(players), torch.arange(10))


def test_special_and_whitespace_tokens_are_not_players(smollm_tokenizer):
    ids = smollm_tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=True,
                                               add_generation_prompt=True)["input_ids"]
    ids = torch.tensor(ids)
    wid = word_ids(ids, smollm_tokenizer)
    for token, w in zip(ids.tolist(), wid.tolist()):
        text = smollm_tokenizer.decode([token])
        if token in smollm_tokenizer.all_special_ids or not text.strip():
            assert w == -1, (token, text)
        else:
            assert w >= 0, (token, text)
    # a player mask restricted to the user message leaves exactly its words
    start = ids.tolist().index(smollm_tokenizer.convert_tokens_to_ids("user"))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    end = start + 1 + len(smollm_tokenizer("\nWhat is 2 + 2?").input_ids)
    mask[start + 1:end] = True
    assert words(ids, smollm_tokenizer, player_mask=mask) == ["What", "is", "2", "+", "2", "?"]


def test_without_a_tokenizer_every_allowed_token_is_a_word():
    ids = torch.tensor([5, 6, 7, 8, 9])
    assert word_ids(ids).tolist() == [0, 1, 2, 3, 4]
    mask = torch.tensor([False, True, True, False, True])
    assert word_ids(ids, player_mask=mask).tolist() == [-1, 0, 1, -1, 2]


@pytest.mark.parametrize("n,m", [(1, 3), (3, 3), (7, 3), (10, 4), (20, 5)])
def test_random_groups_partition_the_words(n, m):
    groups = random_groups(n, m, seed=1)
    assert len(groups) == min(n, m)
    flat = sorted(itertools.chain.from_iterable(groups))
    assert flat == list(range(n))
    sizes = [len(g) for g in groups]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert random_groups(n, m, seed=1) == groups


def test_random_groups_are_uniform_over_seeds():
    """n=9 words in m=3 groups of 3: each pair of words shares a group with probability 2/8."""
    n, m, trials = 9, 3, 3000
    together = torch.zeros(n, n)
    for seed in range(trials):
        for group in random_groups(n, m, seed=seed):
            for a, b in itertools.combinations(group, 2):
                together[a, b] += 1
    rate = together[torch.triu(torch.ones(n, n, dtype=torch.bool), 1)] / trials
    assert torch.all((rate - 2 / 8).abs() < 0.04), rate


def test_partition_seed_is_stable_and_mixes_its_parts():
    ids = torch.tensor([3, 1, 4, 1, 5])
    assert partition_seed(0, ids, 7) == partition_seed(0, ids.tolist(), 7)
    seeds = {partition_seed(0, ids, 7), partition_seed(1, ids, 7), partition_seed(0, ids, 8),
             partition_seed(0, ids[:-1], 7)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)


def test_player_of_token_maps_words_to_groups():
    wid = torch.tensor([-1, 0, 0, 1, -1, 2, 3, 3])
    groups = [[0, 3], [1, 2]]
    assert player_of_token(wid, groups).tolist() == [-1, 0, 0, 1, -1, 1, 0, 0]
