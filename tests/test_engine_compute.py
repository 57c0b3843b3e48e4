"""compute_interactions end to end: values against naive full forwards, targets, like=, the result object, and
every bad input of issue 3 item 10 as a clear error."""

import os

import pytest
import torch

import kdi_fast
from kdi_fast.engine import InteractionResult, compute_interactions
from kdi_fast.engine.masking import baseline_embedding
from kdi_fast.engine.value import values_from_logprobs

PROMPT = "The capital of France, is Paris!"  # SmolLM2 tokens: one per word (tested in test_engine_players)


def naive_values(model, result, masking="embedding", baseline_id=2, baseline_vector=None, masks=None):
    """v(x_T) for every T (or those in `masks`) from full forwards: the input = prompt tokens + target, the
    players' tokens masked."""
    ids = torch.tensor(result.input_ids + result.target_ids[:-1])
    target = torch.tensor(result.target_ids)
    start = len(result.input_ids)
    positions = torch.arange(len(ids))[None]
    embeds = model.get_input_embeddings()(ids).detach()
    base = baseline_vector if baseline_vector is not None else model.get_input_embeddings().weight[baseline_id]
    values = []
    with torch.no_grad():
        for mask in (range(1 << result.n) if masks is None else masks):
            masked = [t for i, tokens in enumerate(result.player_tokens) if not mask >> i & 1 for t in tokens]
            if masking == "embedding":
                x = embeds.clone()
                x[masked] = base.detach()
                kwargs = dict(inputs_embeds=x[None])
            elif masking == "token":
                x = ids.clone()
                x[masked] = baseline_id
                kwargs = dict(input_ids=x[None])
            else:
                keep = torch.ones(len(ids), dtype=torch.long)
                keep[masked] = 0
                kwargs = dict(input_ids=ids[None], attention_mask=keep[None])
            logp = model(**kwargs, position_ids=positions).logits[0].double().log_softmax(-1)
            values.append(values_from_logprobs(logp[torch.arange(start - 1, start - 1 + len(target)), target]))
    return torch.stack(values)


@pytest.fixture(scope="module")
def llama64():
    from kdi_fast.models import tiny_causal_lm

    return tiny_causal_lm("llama", seed=11).double()


@pytest.mark.parametrize("masking", ["embedding", "token", "attention"])
def test_values_equal_naive_forwards_of_the_words(llama64, smollm_tokenizer, masking):
    result = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" It is in Europe."],
                                  players=[[1, [3, 5], 6]], masking=masking, progress=False)[0]
    assert result.words == ["The", "capital", "of", "France", ",", "is", "Paris", "!"]
    assert result.players == [(1,), (3, 5), (6,)] and result.player_texts == ["capital", "France ... is", "Paris"]
    assert result.player_tokens == [(1,), (3, 5), (6,)]  # one token per word in this prompt
    assert result.target_ids == smollm_tokenizer(" It is in Europe.", add_special_tokens=False)["input_ids"]
    assert result.values.dtype == torch.float64 and result.values.shape == (8,)
    torch.testing.assert_close(result.values, naive_values(llama64, result, masking), rtol=0, atol=1e-10)
    torch.testing.assert_close(result.interactions, kdi_fast.mobius(result.values), rtol=0, atol=0)
    assert result.matching_error() < 1e-12
    assert result.settings["masking"] == masking and result.settings["target"] == "given"
    assert result.stats["path"] == "prefix_tree"
    assert result.stats["token_forwards"] < result.stats["naive_token_forwards"]


def test_baselines(llama64, smollm_tokenizer):
    weight = llama64.get_input_embeddings().weight
    assert torch.equal(baseline_embedding(llama64, smollm_tokenizer, "zeros"), torch.zeros(64, dtype=weight.dtype))
    torch.testing.assert_close(baseline_embedding(llama64, smollm_tokenizer, "mean"), weight.mean(0))
    assert torch.equal(baseline_embedding(llama64, smollm_tokenizer, "unk"), weight[smollm_tokenizer.unk_token_id])
    assert torch.equal(baseline_embedding(llama64, smollm_tokenizer, "pad"), weight[smollm_tokenizer.pad_token_id])
    assert torch.equal(baseline_embedding(llama64, smollm_tokenizer, 7), weight[7])
    result = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[0, 3]],
                                  baseline="mean", progress=False)[0]
    torch.testing.assert_close(result.values, naive_values(llama64, result, baseline_vector=weight.mean(0)),
                               rtol=0, atol=1e-10)
    token = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[0, 3]],
                                 masking="token", baseline=7, progress=False)[0]
    torch.testing.assert_close(token.values, naive_values(llama64, token, "token", baseline_id=7), rtol=0,
                               atol=1e-10)


def test_greedy_target_is_the_models_continuation(tiny_lm, smollm_tokenizer):
    model = tiny_lm("gpt2", seed=4)
    result = compute_interactions(model, smollm_tokenizer, [PROMPT], n_players=4, max_target_tokens=5,
                                  progress=False)[0]
    ids = torch.tensor([result.input_ids])
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                               pad_token_id=2, eos_token_id=2)[0, ids.shape[1]:].tolist()
    expected = generated[:generated.index(2)] if 2 in generated else generated
    assert result.target_ids == expected and len(expected) >= 1
    assert result.settings["target"] == "greedy"
    assert result.target_text == smollm_tokenizer.decode(expected)
    # automatic choice of 4 of 8 words: content words capital1 France3 Paris6, then the middle stop word of2
    assert result.players == [(1,), (2,), (3,), (6,)]


def test_like_reuses_target_players_and_masks(llama64, smollm_tokenizer, tiny_lm):
    teacher = compute_interactions(llama64, smollm_tokenizer, [PROMPT, "Name a red fruit."], n_players=3,
                                   max_target_tokens=3, chat_template=True, progress=False)
    student_model = tiny_lm("qwen2", seed=5).double()
    student = compute_interactions(student_model, smollm_tokenizer, [PROMPT, "Name a red fruit."], like=teacher,
                                   chat_template=True, progress=False)
    for t, s in zip(teacher, student):
        assert s.target_ids == t.target_ids and s.players == t.players and s.input_ids == t.input_ids
        assert s.settings["target"] == "like"
        torch.testing.assert_close(s.values, naive_values(student_model, s), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="other settings"):
        compute_interactions(student_model, smollm_tokenizer, [PROMPT, "Name a red fruit."], like=teacher,
                             progress=False)
    with pytest.raises(ValueError, match="another prompt"):
        compute_interactions(student_model, smollm_tokenizer, ["Name a red fruit.", PROMPT], like=teacher,
                             chat_template=True, progress=False)
    with pytest.raises(ValueError, match="do not pass targets or players"):
        compute_interactions(student_model, smollm_tokenizer, [PROMPT, "x"], like=teacher, targets=["a", "b"],
                             chat_template=True, progress=False)


def test_chat_template_players_sit_in_the_user_text(llama64, smollm_tokenizer):
    result = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=["Paris."], players=[[1, 3, 6]],
                                  chat_template=True, progress=False)[0]
    text = smollm_tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                add_generation_prompt=True)
    assert result.input_ids == smollm_tokenizer(text, add_special_tokens=False)["input_ids"]
    for i, word in enumerate(["capital", "France", "Paris"]):
        assert smollm_tokenizer.decode([result.input_ids[t] for t in result.player_tokens[i]]).strip() == word
    torch.testing.assert_close(result.values, naive_values(llama64, result), rtol=0, atol=1e-10)


def test_save_load_roundtrip_is_atomic(llama64, smollm_tokenizer, tmp_path, monkeypatch):
    result = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[[0, 1], 6]],
                                  progress=False)[0]
    path = result.save(tmp_path / "sub" / "r.safetensors")
    loaded = InteractionResult.load(path)
    for name in ("prompt", "words", "players", "player_texts", "target_text", "target_ids", "model_name",
                 "settings", "player_tokens", "input_ids", "stats", "max_order"):
        assert getattr(loaded, name) == getattr(result, name), name
    assert torch.equal(loaded.values, result.values) and torch.equal(loaded.interactions, result.interactions)
    assert os.listdir(path.parent) == ["r.safetensors"]

    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "sub" / "other.safetensors")
    assert os.listdir(path.parent) == ["r.safetensors"]  # neither the file nor a temporary one
    (tmp_path / "junk.safetensors").write_bytes(b"not a result")
    with pytest.raises(Exception):
        InteractionResult.load(tmp_path / "junk.safetensors")


def test_top_and_matching_error_by_definition():
    interactions = torch.tensor([0.5, 0.1, -0.2, 3.0, 0.05, -1.5, 0.0, 0.7], dtype=torch.float64)
    values = kdi_fast.zeta(interactions)
    result = InteractionResult(prompt="a b c", words=["a", "b", "c"], players=[(0,), (1,), (2,)],
                               player_texts=["a", "b", "c"], target_text="x", target_ids=[1], values=values,
                               interactions=interactions, model_name="m", settings={})
    assert result.n == 3
    assert result.top(3) == [(("a", "b"), 3.0), (("a", "c"), -1.5), (("a", "b", "c"), 0.7)]
    assert result.top(0) == [] and len(result.top(100)) == 7  # the empty set is not an interaction
    assert result.matching_error() < 1e-15
    values[5] += 0.25
    assert result.matching_error() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="2\\^n = 8"):
        InteractionResult(prompt="", words=[], players=[(0,), (1,), (2,)], player_texts=[], target_text="",
                          target_ids=[], values=values[:4], interactions=interactions, model_name="", settings={})


def test_top_orders_ties_as_the_metrics_do():
    from kdi_fast.metrics import top_interactions

    interactions = torch.tensor([0.0, 1.0, -2.0, 2.0, 1.0, -2.0, 0.5, 2.0], dtype=torch.float64)
    result = InteractionResult(prompt="a b c", words=["a", "b", "c"], players=[(0,), (1,), (2,)],
                               player_texts=["a", "b", "c"], target_text="x", target_ids=[1],
                               values=kdi_fast.zeta(interactions), interactions=interactions, model_name="m",
                               settings={})
    masks, _ = top_interactions(interactions, 7)
    assert [texts for texts, _ in result.top(7)] == [result.subset_texts(int(m)) for m in masks]
    assert [value for _, value in result.top(4)] == [-2.0, 2.0, -2.0, 2.0]  # masks 2, 3, 5, 7: smaller first


def test_float32_model_matches_naive_to_float_tolerance(tiny_lm, smollm_tokenizer):
    model = tiny_lm("qwen2", seed=8)
    result = compute_interactions(model, smollm_tokenizer, [PROMPT], targets=[" Yes it is"], n_players=5,
                                  memory_budget="64MB", progress=True)[0]
    torch.testing.assert_close(result.values, naive_values(model, result), rtol=0, atol=2e-4)
    assert result.stats["memory_budget"] == 64 << 20


# ----------------------------------------------------------------------------------------------------------
# Bad input (issue 3, item 10): each a clear error
# ----------------------------------------------------------------------------------------------------------


def test_too_many_players(llama64, smollm_tokenizer):
    prompt = " ".join(f"word{i}" for i in range(20))
    with pytest.raises(ValueError, match=r"2\^17 = 131,072 masked forwards per prompt.*Group words"):
        compute_interactions(llama64, smollm_tokenizer, [prompt], targets=["x"], n_players=17, progress=False)


def test_max_order_opt_in_allows_more_players(llama64, smollm_tokenizer):
    import kdi_fast

    prompt = " ".join(f"w{i}" for i in range(18))
    dense = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[0, 1, 3, 5, 6]],
                                 progress=False)[0]
    small = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[0, 1, 3, 5, 6]],
                                 max_order=2, progress=False)[0]
    layout = kdi_fast.subsets(5, 2)
    assert small.max_order == 2 and torch.equal(small.masks, layout)
    torch.testing.assert_close(small.values, dense.values[layout], rtol=0, atol=1e-12)
    torch.testing.assert_close(small.interactions, dense.interactions[layout], rtol=0, atol=1e-12)
    assert small.matching_error() < 1e-12
    strongest = small.top(1)[0]
    position = int(small.interactions[1:].abs().argmax()) + 1
    assert strongest == (small.subset_texts(int(layout[position])), float(small.interactions[position]))
    big = compute_interactions(llama64, smollm_tokenizer, [prompt], targets=[" Yes"], n_players=18, max_order=2,
                               progress=False)[0]
    assert big.n == 18 and big.values.shape == (1 + 18 + 153,) and big.matching_error() < 1e-12
    with pytest.raises(ValueError, match="40 players with max_order=4 need 102,091 masked forwards.*lower max_order"):
        compute_interactions(llama64, smollm_tokenizer, [" ".join(["w"] * 40)], targets=["x"], n_players=40,
                             max_order=4, progress=False)


def test_empty_target(llama64, smollm_tokenizer):
    with pytest.raises(ValueError, match="prompt 1: the target '' is empty"):
        compute_interactions(llama64, smollm_tokenizer, [PROMPT, PROMPT], targets=[" ok", ""], progress=False)
    first = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=None, max_target_tokens=1,
                                 players=[[0]], progress=False)[0].target_ids[0]
    llama64.generation_config.eos_token_id = first  # the greedy continuation now ends at once
    try:
        with pytest.raises(ValueError, match="greedy continuation of the prompt is empty"):
            compute_interactions(llama64, smollm_tokenizer, [PROMPT], players=[[0]], progress=False)
    finally:
        llama64.generation_config.eos_token_id = 2


def test_a_chosen_word_with_no_tokens(tiny_lm):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "the": 2, "cat": 3}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Replace("#", "")
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    model = tiny_lm("llama", vocab_size=8)
    with pytest.raises(ValueError, match=r"word 1 \('#'\) has no tokens"):
        compute_interactions(model, tokenizer, ["the # cat"], targets=["the"], players=[[0, 1]], progress=False)
    ok = compute_interactions(model, tokenizer, ["the # cat"], targets=["the"], progress=False)[0]
    assert ok.players == [(0,), (2,)]  # the automatic choice skips the word without tokens


def test_prompt_longer_than_the_context(tiny_lm, smollm_tokenizer):
    model = tiny_lm("gpt2", max_positions=16)
    with pytest.raises(ValueError, match="more than the model's context of 16"):
        compute_interactions(model, smollm_tokenizer, [" ".join(["word"] * 14)], targets=[" a b c d"],
                             progress=False)
    with pytest.raises(ValueError, match="max_target_tokens"):  # greedy: prompt + max_target_tokens
        compute_interactions(model, smollm_tokenizer, [" ".join(["word"] * 10)], max_target_tokens=8,
                             progress=False)


def test_embedding_masking_needs_input_embeddings(tiny_lm, smollm_tokenizer, monkeypatch):
    model = tiny_lm("llama").double()

    def no_embeddings():
        raise NotImplementedError

    monkeypatch.setattr(model, "get_input_embeddings", no_embeddings)
    with pytest.raises(ValueError, match="exposes none.*masking='token' or masking='attention'"):
        compute_interactions(model, smollm_tokenizer, [PROMPT], targets=[" Yes"], progress=False)
    for masking in ("token", "attention"):  # the other maskings feed token ids and still work
        result = compute_interactions(model, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[1, 3]],
                                      masking=masking, progress=False)[0]
        monkeypatch.undo()
        torch.testing.assert_close(result.values, naive_values(model, result, masking), rtol=0, atol=1e-10)
        monkeypatch.setattr(model, "get_input_embeddings", no_embeddings)


def test_teacher_and_student_tokenizers_differ(llama64, smollm_tokenizer, tiny_lm):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    teacher = compute_interactions(llama64, smollm_tokenizer, [PROMPT], targets=[" Yes"], players=[[1]],
                                   progress=False)
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "The": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    with pytest.raises(ValueError, match="tokenizer differs from the one of the like= results"):
        compute_interactions(tiny_lm("llama", vocab_size=8), other, [PROMPT], like=teacher, progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(masking="bogus"), ValueError, "masking must be one of"),
    (dict(baseline="nothing"), ValueError, "baseline must be one of"),
    (dict(masking="token", baseline="zeros"), ValueError, "does not fit masking='token'"),
    (dict(baseline=10 ** 6), ValueError, "outside the model's vocabulary"),
    (dict(memory_budget="lots"), ValueError, "give a size like"),
    (dict(targets=["a", "b"]), ValueError, "one entry per prompt"),
    (dict(players=[[0]] * 3), ValueError, "one entry per prompt"),
])
def test_argument_errors(llama64, smollm_tokenizer, kwargs, error, match):
    with pytest.raises(error, match=match):
        compute_interactions(llama64, smollm_tokenizer, [PROMPT], **{"targets": [" Yes"], **kwargs},
                             progress=False)


def test_prompts_must_be_a_list(llama64, smollm_tokenizer):
    with pytest.raises(TypeError, match="list of strings"):
        compute_interactions(llama64, smollm_tokenizer, PROMPT, progress=False)
    with pytest.raises(ValueError, match="empty"):
        compute_interactions(llama64, smollm_tokenizer, [], progress=False)


# ----------------------------------------------------------------------------------------------------------
# The real model
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_interactions_match(smollm_tokenizer):
    """SmolLM2-135M-Instruct, its chat template and greedy answer: the matching check holds, and sampled masks
    equal plain full forwards of the model (float32 tolerance)."""
    from kdi_fast.models import load_model

    model = load_model("smollm2")
    prompt = "Tom has 3 apples and buys 5 more. How many apples does Tom have now?"
    result = compute_interactions(model, smollm_tokenizer, [prompt], n_players=6, max_target_tokens=8,
                                  chat_template=True, progress=False)[0]
    assert result.n == 6 and result.stats["path"] == "prefix_tree"
    assert result.matching_error() < 1e-9
    masks = [0, 63] + torch.randperm(62, generator=torch.Generator().manual_seed(0))[:10].add(1).tolist()
    naive = naive_values(model, result, masks=masks)
    torch.testing.assert_close(result.values[masks], naive, rtol=0, atol=2e-3)
    assert result.settings["tokenizer"] and result.model_name == "SmolLM2-135M-Instruct"
