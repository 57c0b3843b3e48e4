"""Distillation runs on tiny models: every method learns, resumption is exact, SeqKD's cache is reused,
DistiLLM's schedule and replay buffer behave as documented, bad input is refused with a clear error."""

from __future__ import annotations

import json
import random

import pytest
import torch

from kdi_fast.distill import DistillConfig, METHODS, RunInterrupted, build_student, distill, load_examples, parse_recipe
from kdi_fast.distill.datasets import Example, IGNORE_INDEX, collate, load_examples as _load, tokenize_examples
from kdi_fast.distill.replay import AdaptiveSGOSchedule, ReplayBuffer
from kdi_fast.losses import kd_loss

EXAMPLES = [
    Example("a", "Spell this word backward: table", "elbat"),
    Example("b", "Calculate 2 + 3.", "5"),
    Example("c", "Reverse this list of words: red, green, blue", "blue, green, red"),
    Example("d", "What day of the week was May 1, 2020?", "Friday"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from kdi_fast.models import load_tokenizer

    return load_tokenizer("smollm2")


def _teacher():
    from kdi_fast.models import tiny_causal_lm

    return tiny_causal_lm("llama", hidden_size=32, num_layers=2, num_heads=4, seed=1)


def _student():
    from kdi_fast.models import tiny_causal_lm

    return tiny_causal_lm("llama", hidden_size=32, num_layers=1, num_heads=4, seed=2)


def _config(method: str, **overrides) -> DistillConfig:
    options = dict(method=method, steps=3, batch_size=2, lr=1e-2, max_length=48, max_new_tokens=5,
                   checkpoint_every=1, validate_every=1, sgo_increment=0.5)
    options.update(overrides)
    return DistillConfig(**options)


def _own_loss(method: str, config: DistillConfig, student, teacher, tokenizer, items) -> float:
    """The method's loss on a fixed batch of tokenised examples (references, or the teacher's outputs for seqkd)."""
    batch = collate(items, tokenizer.pad_token_id)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        options = config.loss_options()
        options["noise_std"] = 0.0 if "noise_std" in options else None
        options = {k: v for k, v in options.items() if v is not None}
        return float(kd_loss(s, t if METHODS[method].uses_teacher_logits else None, batch["labels"],
                             shift_labels=True, **options).mean())


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"minillm"}))  # minillm: test_distill_minillm.py
def test_each_method_lowers_its_loss(method, tokenizer, tmp_path):
    teacher, student = _teacher(), _student()
    examples = EXAMPLES[:2]  # one batch: every step sees the same prompts
    extra = {"student_share": 1.0} if method == "gkd" else {}
    extra.update({"sgo_initial": 0.5} if method == "distillm" else {})
    config = _config(method, **extra)
    items = tokenize_examples(tokenizer, examples, max_length=config.max_length)
    if method == "seqkd":  # its training targets are the teacher's greedy outputs (cached on the first run)
        from kdi_fast.distill.datasets import TokenizedExample
        from kdi_fast.distill.generation import cached_teacher_responses

        ids, _ = cached_teacher_responses(teacher, [it.prompt_ids for it in items], tmp_path / "cache.json",
                                          pad_id=2, eot_id=2, max_new_tokens=config.max_new_tokens)
        items = [TokenizedExample(it.prompt_ids, r) for it, r in zip(items, ids)]
    before = _own_loss(method, config, student, teacher, tokenizer, items)
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    run = distill(teacher, student, tokenizer, examples, tmp_path / "run", config, progress=False,
                  seqkd_cache=tmp_path / "cache.json")
    after = _own_loss(method, config, student, teacher, tokenizer, items)
    assert run.steps == 3
    if method == "seqkd":
        assert run.seqkd_cache_reused is True  # the test's own call above filled the cache
    assert after < before, f"{method}: loss {before} -> {after}"
    assert any(not torch.equal(weights[k], v) for k, v in student.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
    if METHODS[method].on_policy and method != "imitkd":
        assert run.sgo_batches >= 1 and any(e["source"] in ("student", "replay") for e in log)
    if method == "imitkd":  # the share of student samples ramps from 0 to 1 over the run
        assert [e["sgo_prob"] for e in log] == [0.0, 0.5, 1.0]
    if not METHODS[method].on_policy:
        assert all(e["source"] == "data" for e in log)
    assert (tmp_path / "run" / "student" / "config.json").is_file()
    assert (tmp_path / "run" / "student_before" / "config.json").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()  # removed once the run completed


def _weights_after(tmp_path, name, tokenizer, config, *, stop_after=None):
    teacher, student = _teacher(), _student()
    out = tmp_path / name
    if stop_after is not None:
        with pytest.raises(RunInterrupted):
            distill(teacher, student, tokenizer, EXAMPLES, out, config, progress=False, stop_after=stop_after)
        assert list((out / "checkpoints").glob("checkpoint-*/kdi_checkpoint.json"))
        teacher, student = _teacher(), _student()  # a new process: everything rebuilt from scratch
    torch.manual_seed(12345)  # resumption must not depend on the caller's random state
    random.seed(12345)
    distill(teacher, student, tokenizer, EXAMPLES, out, config, progress=False)
    return student.state_dict(), [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method, extra", [
    ("distillm", {"sgo_initial": 1.0, "sgo_max_prob": 1.0, "replay_ratio": 0.5}),  # replay buffer + sampling
    ("gkd", {"student_share": 0.5}),  # coin flips and student samples
    ("kd", {"teacher_noise": 1.0, "temperature": 2.0, "cip_weight": 1.0}),  # noise generator, CIP partitions
])
def test_resume_after_interruption_gives_identical_weights(method, extra, tokenizer, tmp_path):
    config = _config(method, steps=5, checkpoint_every=2, **extra)
    straight, log_straight = _weights_after(tmp_path, "straight", tokenizer, config)
    # Interrupted after 3 steps: the checkpoint holds step 2, step 3 is redone after the resume.
    resumed, log_resumed = _weights_after(tmp_path, "resumed", tokenizer, config, stop_after=3)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert [e["step"] for e in log_resumed] == [1, 2, 3, 4, 5]
    assert [e["loss"] for e in log_resumed] == [e["loss"] for e in log_straight]
    assert [e["source"] for e in log_resumed] == [e["source"] for e in log_straight]
    if method == "distillm":
        assert {"replay", "student"} <= {e["source"] for e in log_straight}


def test_cip_is_added_to_the_loss_on_the_words_of_the_user_text(tokenizer, tmp_path):
    items = tokenize_examples(tokenizer, EXAMPLES, max_length=64)
    batch = collate(items, pad_id=2)
    for row, example in enumerate(EXAMPLES):  # players come from the user's text, not the chat template
        assert tokenizer.decode(batch["input_ids"][row][batch["player_mask"][row]]) == example.prompt
    config = _config("kd", steps=2, cip_weight=2.0, cip_m=3)
    distill(_teacher(), _student(), tokenizer, EXAMPLES, tmp_path, config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(e["cip"] > 0 and e["loss"] == pytest.approx(e["kd"] + e["cip"], rel=1e-5) for e in log)


def test_shared_teacher_logits_skip_teacher_forwards_and_change_nothing(tokenizer, tmp_path):
    config = _config("kd", steps=3, temperature=2.0, teacher_noise=0.5)
    plain_student = _student()
    distill(_teacher(), plain_student, tokenizer, EXAMPLES, tmp_path / "plain", config, progress=False)
    shared: dict = {}
    distill(_teacher(), _student(), tokenizer, EXAMPLES, tmp_path / "first", config, progress=False,
            teacher_logits_cache=shared)
    from kdi_fast.distill.trainer import StreamDataset

    stream = StreamDataset(EXAMPLES, 6, config.seed)
    assert len(shared) == len({(stream.index(2 * s), stream.index(2 * s + 1)) for s in range(3)})
    teacher, cached_student = _teacher(), _student()
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    distill(teacher, cached_student, tokenizer, EXAMPLES, tmp_path / "second", config, progress=False,
            teacher_logits_cache=shared)
    assert calls == []
    for key, value in plain_student.state_dict().items():
        assert torch.equal(value, cached_student.state_dict()[key]), key


def test_completed_run_is_not_redone_and_changed_config_is_refused(tokenizer, tmp_path):
    config = _config("kd", steps=2)
    trained = _student()
    first = distill(_teacher(), trained, tokenizer, EXAMPLES, tmp_path, config, progress=False)
    untrained = _student()
    again = distill(_teacher(), untrained, tokenizer, EXAMPLES, tmp_path, config, progress=False)
    assert again == first
    for key, value in trained.state_dict().items():  # the caller's student now holds the trained weights
        assert torch.equal(value, untrained.state_dict()[key]), key
    with pytest.raises(ValueError, match="other inputs.*settings.lr"):
        distill(_teacher(), _student(), tokenizer, EXAMPLES, tmp_path, _config("kd", steps=2, lr=1e-3),
                progress=False)


def test_seqkd_generates_teacher_outputs_once(tokenizer, tmp_path, monkeypatch):
    import kdi_fast.distill.generation as generation

    calls = []
    real = generation.generate_responses

    def counting(*args, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_responses", counting)
    cache = tmp_path / "teacher_outputs.json"
    config = _config("seqkd", steps=1)
    first = distill(_teacher(), _student(), tokenizer, EXAMPLES, tmp_path / "one", config, seqkd_cache=cache,
                    progress=False)
    assert first.seqkd_cache_reused is False and calls == [5]
    stored = json.loads(cache.read_text())
    assert len(stored["responses"]) == len(EXAMPLES)
    second = distill(_teacher(), _student(), tokenizer, EXAMPLES, tmp_path / "two", config, seqkd_cache=cache,
                     progress=False)
    assert second.seqkd_cache_reused is True and calls == [5]  # no generation the second time
    # Another generation length is another key: regenerated.
    distill(_teacher(), _student(), tokenizer, EXAMPLES, tmp_path / "three", _config("seqkd", steps=1,
            max_new_tokens=4), seqkd_cache=cache, progress=False)
    assert calls == [5, 4]
    # The teacher's outputs really are what the student was trained on: greedy generation of the teacher.
    from kdi_fast.distill.datasets import tokenize_prompts

    prompt = tokenize_prompts(tokenizer, [EXAMPLES[0].prompt])[0]
    greedy = _teacher().generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=2,
                                 eos_token_id=2)[0, len(prompt):].tolist()
    expected = greedy[:greedy.index(2) + 1] if 2 in greedy else greedy
    assert json.loads(cache.read_text())["responses"][0] == expected


def test_adaptive_sgo_schedule_rises_only_when_validation_loss_rises():
    schedule = AdaptiveSGOSchedule(initial=0.0, increment=0.2, max_prob=0.8)
    losses = [1.0, 0.9, 1.1, 1.2, 0.5, 2.0, 3.0, 4.0, 5.0]
    probs = [schedule.update(x) for x in losses]
    # up-moves at 1.1, 1.2, 2.0, 3.0 (then capped at 0.8); down-moves leave it unchanged
    assert probs == pytest.approx([0.0, 0.0, 0.2, 0.4, 0.4, 0.6, 0.8, 0.8, 0.8])
    copy = AdaptiveSGOSchedule()
    copy.load_state_dict(schedule.state_dict())
    assert copy.prob == pytest.approx(0.8) and copy.last_loss == 5.0
    with pytest.raises(ValueError):
        AdaptiveSGOSchedule(initial=0.9, max_prob=0.5)


def test_replay_buffer_is_fifo_and_samples_distinct_items():
    from kdi_fast.distill.datasets import TokenizedExample

    buffer = ReplayBuffer(capacity=3)
    items = [TokenizedExample((i,), (i + 10,)) for i in range(5)]
    buffer.add(items[:2])
    assert len(buffer) == 2
    buffer.add(items[2:])
    assert len(buffer) == 3
    sample = buffer.sample(3, random.Random(0))
    assert sorted(sample, key=lambda it: it.prompt_ids) == items[2:]  # the two oldest were dropped
    with pytest.raises(ValueError, match="holds 3"):
        buffer.sample(4, random.Random(0))
    restored = ReplayBuffer(1)
    restored.load_state_dict(buffer.state_dict())
    assert restored.sample(3, random.Random(1)) == buffer.sample(3, random.Random(1))


def test_collate_trains_on_response_tokens_only(tokenizer):
    items = tokenize_examples(tokenizer, EXAMPLES[:2], max_length=64)
    prompt_text = tokenizer.decode(items[0].prompt_ids)
    assert prompt_text.startswith("<|im_start|>") and prompt_text.endswith("<|im_start|>assistant\n")
    assert "Spell this word backward: table" in prompt_text
    assert tokenizer.decode(items[0].response_ids) == "elbat<|im_end|>"
    batch = collate(items, pad_id=2)
    for row, it in enumerate(items):
        n_p, n_r = len(it.prompt_ids), len(it.response_ids)
        assert batch["input_ids"][row, :n_p + n_r].tolist() == list(it.prompt_ids + it.response_ids)
        assert batch["attention_mask"][row].sum() == n_p + n_r
        assert (batch["labels"][row, :n_p] == IGNORE_INDEX).all()
        assert batch["labels"][row, n_p:n_p + n_r].tolist() == list(it.response_ids)
        assert (batch["labels"][row, n_p + n_r:] == IGNORE_INDEX).all()
    short = tokenize_examples(tokenizer, EXAMPLES[:1], max_length=20)[0]
    assert len(short.prompt_ids) + len(short.response_ids) <= 20 and short.response_ids[-1] == 2


def test_builtin_data_sets_are_reproducible():
    instruct = load_examples("instruct:14", seed=3)
    assert len(instruct) == 14 and instruct == load_examples("instruct:14", seed=3)
    assert len({e.task for e in instruct}) == 7 and all(e.prompt and e.response for e in instruct)
    assert load_examples("instruct:14", seed=4) != instruct
    gsm = load_examples("gsm_symbolic:3")
    assert len(gsm) == 3 and all(float(e.response) == float(e.response) for e in gsm)


def test_jsonl_data_and_its_errors(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"instruction": "Name a colour", "input": "warm ones only", "output": "red"}\n\n'
                    '{"prompt": "2+2?", "response": 4}\n')
    examples = _load(good)
    assert [e.prompt for e in examples] == ["Name a colour\n\nwarm ones only", "2+2?"]
    assert [e.response for e in examples] == ["red", "4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="line 1.*response"):
        _load(bad)
    bad.write_text('{"prompt": "x", "response": "y"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2.*JSON"):
        _load(bad)
    with pytest.raises(FileNotFoundError, match="instruct:N"):
        _load(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="positive"):
        _load("instruct:0")


def test_student_recipes():
    assert parse_recipe("layers:0,5,10") == ("layers", [0, 5, 10])
    assert parse_recipe("layers:3") == ("layers", 3)
    assert parse_recipe("fresh:num_hidden_layers=1,hidden_size=16") == (
        "fresh", {"num_hidden_layers": 1, "hidden_size": 16})
    teacher = _teacher()
    assert build_student(teacher, "layers:1").config.num_hidden_layers == 1
    fresh = build_student(teacher, "fresh:num_hidden_layers=1,hidden_size=16,intermediate_size=32")
    assert fresh.config.hidden_size == 16 and fresh.config.vocab_size == teacher.config.vocab_size
    for recipe in ("layers:a,b", "fresh:hidden_size", "no/such/dir", ""):
        with pytest.raises(ValueError, match="recipe|student"):
            parse_recipe(recipe)
    with pytest.raises(ValueError, match="no field"):
        build_student(teacher, "fresh:not_a_field=3")
    teacher.requires_grad_(False)  # a frozen teacher still gives a trainable student
    assert all(p.requires_grad for p in build_student(teacher, "layers:1").parameters())


@pytest.mark.parametrize("options, message", [
    (dict(method="nope"), "unknown method"),
    (dict(method="kd", lr=0.0), "lr must be positive"),
    (dict(method="kd", batch_size=0), "batch_size"),
    (dict(method="kd", temperature=-1.0), "temperature"),
    (dict(method="sft", teacher_noise=1.0), "never sees the teacher's logits"),
    (dict(method="gkd", student_share=1.5), "student_share"),
    (dict(method="distillm", skew_alpha=1.0), "skew_alpha"),
    (dict(method="kd", steps=0), "steps"),
])
def test_bad_config_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**options)


def test_vocabulary_mismatch_is_refused(tokenizer, tmp_path):
    from kdi_fast.models import tiny_causal_lm

    other = tiny_causal_lm("llama", vocab_size=1000, hidden_size=32, num_layers=1)
    with pytest.raises(ValueError, match="vocabulary"):
        distill(_teacher(), other, tokenizer, EXAMPLES, tmp_path, _config("kd"), progress=False)
    with pytest.raises(ValueError, match="no training examples"):
        distill(_teacher(), _student(), tokenizer, [], tmp_path, _config("kd"), progress=False)


def test_text_and_interaction_scores():
    from kdi_fast.distill.datasets import normalised_text
    from kdi_fast.distill.evaluate import interaction_scores, text_scores

    scores = text_scores(["Friday", "5"], ["friday.", "6"], ["Friday", "6"], normalised_text)
    assert scores["accuracy"] == 0.5 and scores["agreement"] == 1.0
    assert scores["rouge_l"] == pytest.approx(50.0)
    teacher = torch.tensor([0.0, 4.0, -3.0, 2.0, 1.0, 0.5, 0.25, 0.125], dtype=torch.float64)  # n = 3
    same = interaction_scores([teacher], [teacher], k=1 / 3)  # K = 2 of 7; 1 of 3 simple; 1 of 4 complex
    assert same["overlap"] == same["overlap_simple"] == same["overlap_complex"] == 1.0
    # Gini of |I| = sorted (0.125, 0.25, 0.5, 1, 2, 3, 4), M = 7, from its definition
    u = sorted([4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.125])
    expected = 2 * sum((i + 1) * x for i, x in enumerate(u)) / (7 * sum(u)) - 8 / 7
    assert same["gini"] == pytest.approx(expected)
    flipped = teacher.clone()
    flipped[1], flipped[2] = 0.0, 0.0  # the teacher's two strongest are gone from the student
    assert interaction_scores([flipped], [teacher], k=2 / 7)["overlap"] == 0.0
