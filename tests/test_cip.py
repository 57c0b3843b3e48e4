"""CIP against a straightforward implementation written here: one full forward per masked input, the whole LM
head, v = log(p / (1 - p)), I_S as the explicit alternating sum over subsets. Values and gradients must agree."""

import itertools
import math

import pytest
import torch

from kdi_fast.losses import CIP
from kdi_fast.models import tiny_causal_lm

VOCAB, PAD = 128, 2


def make_batch(prompt_lengths=(5, 7, 4), target_lengths=(3, 2, 4), seed=0):
    """Right-padded batch of random prompts + targets; labels = -100 on the prompt and the padding."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, VOCAB, (p + t,), generator=g) for p, t in zip(prompt_lengths, target_lengths)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (row, p) in enumerate(zip(rows, prompt_lengths)):
        input_ids[b, :len(row)] = row
        labels[b, p:len(row)] = row[p:]
        attention[b, :len(row)] = 1
    return dict(input_ids=input_ids, attention_mask=attention, labels=labels)


def reference_cip(model, batch, records, *, masking="embedding", baseline="pad", order_threshold=0.0,
                  weight=1.0, eps=1e-7):
    """Straightforward CIP for token-level players (tokenizer=None): word w = the w-th prompt token."""
    module = model.get_input_embeddings()
    embed = module.weight
    pad = module(torch.tensor(PAD))  # as if the pad token were fed (a padding_idx row gets no gradient)
    base = {"pad": pad, "zeros": torch.zeros_like(embed[0]), "mean": embed.mean(0)}[baseline]
    penalties = []
    for record in records:
        b = record.index
        length = int(batch["attention_mask"][b].sum())
        ids = batch["input_ids"][b, :length]
        labels = batch["labels"][b, :length]
        targets = (labels != -100).nonzero().squeeze(-1)
        k = len(record.players)
        values = []
        for mask in range(1 << k):
            present = torch.ones(length, dtype=torch.bool)
            for player, words in enumerate(record.players):
                if not mask >> player & 1:
                    present[words] = False  # word w is prompt token w here
            x = embed[ids]
            attention = torch.ones(1, length, dtype=torch.long)
            if masking == "embedding":
                x = torch.where(present[:, None], x, base)
            else:
                attention = present.long()[None]
            logits = model(inputs_embeds=x[None], attention_mask=attention).logits[0]
            logp = torch.log_softmax(logits[targets - 1], -1).gather(-1, ids[targets][:, None]).mean()
            p = logp.exp().clamp(eps, 1 - eps)
            values.append(torch.log(p / (1 - p)))
        inter = []
        for s in range(1 << k):
            subs = [t for t in range(1 << k) if t & s == t]
            inter.append(sum((-1) ** (bin(s).count("1") - bin(t).count("1")) * values[t] for t in subs))
        complex_ = [s for s in range(1 << k)
                    if bin(s).count("1") > order_threshold * k
                    and sum(len(record.players[i]) for i in range(k) if s >> i & 1) >= 2]
        penalties.append(torch.stack([inter[s].abs() for s in complex_]).mean())
    return weight * torch.stack(penalties).mean()


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


CASES = [
    dict(arch="gpt2", m=3),
    dict(arch="llama", m=2, order_threshold=0.5),
    dict(arch="qwen2", m=3, exact_up_to=4),
    dict(arch="llama", m=3, masking="attention", reuse="logits"),
    dict(arch="gpt2", m=4, baseline="zeros", reuse="hidden", weight=0.3),
    dict(arch="llama", m=3, baseline="mean"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_cip_value_and_gradient_match_the_reference(case):
    case = dict(case)
    arch, reuse = case.pop("arch"), case.pop("reuse", False)
    model = tiny_causal_lm(arch, vocab_size=VOCAB, hidden_size=16, seed=1).double()
    batch = make_batch()
    cip = CIP(seed=5, **case)
    outputs = model(**batch, output_hidden_states=reuse == "hidden") if reuse else None
    loss = cip(model, batch, outputs, step=3)
    records = cip.interactions(model, batch, step=3)
    assert [r.index for r in records] == [0, 1, 2]
    # with attention masking the last prompt token (it predicts y*_1) is never a player
    drop = case.get("masking") == "attention"
    for r, n_words in zip(records, (5 - drop, 7 - drop, 4 - drop)):
        assert sorted(itertools.chain.from_iterable(r.players)) == list(range(n_words))
        if n_words <= case.get("exact_up_to", case["m"]):
            assert r.players == [[w] for w in range(n_words)]
        else:
            assert len(r.players) == case["m"]
    want = reference_cip(model, batch, records, masking=case.get("masking", "embedding"),
                         baseline=case.get("baseline", "pad"), order_threshold=case.get("order_threshold", 0.0),
                         weight=case.get("weight", 1.0))
    torch.testing.assert_close(loss, want, rtol=1e-9, atol=1e-12)
    for got, ref in zip(_grads(model, loss), _grads(model, want)):
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-11)


def test_reusing_the_callers_forward_changes_nothing():
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=32, seed=2).double()
    batch = make_batch(seed=1)
    cip = CIP(3, seed=0)
    alone = cip(model, batch, step=0)
    alone_grads = _grads(model, alone)
    for outputs in (model(**batch), model(**batch).logits, model(**batch, output_hidden_states=True)):
        reused = cip(model, batch, outputs, step=0)
        torch.testing.assert_close(alone, reused)
        for a, b in zip(alone_grads, _grads(model, reused)):
            torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="outputs must be"):
        cip(model, batch, {"loss": 0.0}, step=0)


def test_a_padding_idx_baseline_gets_no_gradient_as_when_the_pad_token_is_fed():
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=16, seed=2)  # Embedding(padding_idx=PAD)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie: input side only
    CIP(3)(model, make_batch(), step=0).backward()
    grad = model.get_input_embeddings().weight.grad
    assert torch.all(grad[PAD] == 0) and grad.abs().sum() > 0


def test_complex_subsets_follow_the_threshold():
    model = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32)
    batch = make_batch(prompt_lengths=(9, 2), target_lengths=(2, 2))
    records = CIP(4, order_threshold=0.5).interactions(model, batch, step=0)
    orders = torch.tensor([bin(s).count("1") for s in range(16)])
    assert torch.equal(records[0].complex_mask, orders >= 3)  # 9 words in 4 groups: |K| > 2
    # 2 words as players (exact): only the pair is complex, a single word never is
    assert records[1].players == [[0], [1]] and records[1].complex_mask.tolist() == [False, False, False, True]
    default = CIP(4).interactions(model, batch, step=0)
    assert torch.equal(default[0].complex_mask, orders >= 1)  # every union of groups (each has >= 2 words)


def test_partitions_are_seeded_by_step_and_prompt_not_by_batch_position():
    model = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32)
    batch = make_batch(prompt_lengths=(12, 12, 12), target_lengths=(2, 2, 2), seed=3)
    cip = CIP(3, seed=0)
    first = [r.players for r in cip.interactions(model, batch, step=0)]
    assert first == [r.players for r in cip.interactions(model, batch, step=0)]
    assert first != [r.players for r in cip.interactions(model, batch, step=1)]
    swapped = {k: v[[2, 1, 0]] for k, v in batch.items()}
    assert [r.players for r in cip.interactions(model, swapped, step=0)] == first[::-1]
    # without a step, each call draws new partitions (a call counter)
    assert cip.interactions(model, batch)[0].players != cip.interactions(model, batch)[0].players or \
        cip.interactions(model, batch)[0].players != cip.interactions(model, batch)[0].players


def test_batch_share_spends_the_penalty_on_the_first_prompts():
    model = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32)
    batch = make_batch(prompt_lengths=(5, 6, 7, 8), target_lengths=(2, 2, 2, 2))
    assert [r.index for r in CIP(3, batch_share=0.5).interactions(model, batch, step=0)] == [0, 1]
    assert [r.index for r in CIP(3, batch_share=0.6).interactions(model, batch, step=0)] == [0, 1, 2]


def test_gradient_accumulation_over_halves_equals_the_whole_batch():
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=32, seed=4).double()
    batch = make_batch(prompt_lengths=(5, 7, 6, 8), target_lengths=(3, 2, 2, 4), seed=2)
    cip = CIP(3, seed=1)
    cip(model, batch, step=7).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for half in (slice(0, 2), slice(2, 4)):
        micro = {k: v[half] for k, v in batch.items()}
        (cip(model, micro, model(**micro), step=7) / 2).backward()
    for a, b in zip(whole, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_runs_and_stays_close():
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=32, seed=6)
    batch = make_batch(seed=4)
    cip = CIP(3, seed=0)
    exact = cip(model, batch, step=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch)
        low = cip(model, batch, outputs, step=0)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    torch.testing.assert_close(low, exact, rtol=0.1, atol=0.02)
    low.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_prompts_without_players_or_targets_are_left_out():
    model = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32)
    batch = make_batch(prompt_lengths=(1, 5), target_lengths=(2, 2))
    batch["labels"][1] = -100  # no targets
    assert CIP(3).interactions(model, batch, step=0) == []
    loss = CIP(3)(model, batch, step=0)
    assert float(loss) == 0.0


def test_word_players_come_from_the_tokenizer(smollm_tokenizer):
    model = tiny_causal_lm("llama", hidden_size=32)
    prompt = smollm_tokenizer("I am a green hand means").input_ids
    answer = smollm_tokenizer(" a beginner").input_ids
    batch = dict(input_ids=torch.tensor([prompt + answer]), labels=torch.tensor([[-100] * len(prompt) + answer]))
    records = CIP(3, tokenizer=smollm_tokenizer, exact_up_to=6).interactions(model, batch, step=0)
    assert records[0].players == [[w] for w in range(6)] and records[0].values.shape == (64,)
    grouped = CIP(3, tokenizer=smollm_tokenizer).interactions(model, batch, step=0)
    assert sorted(len(g) for g in grouped[0].players) == [2, 2, 2]


def test_bad_options_and_batches_say_what_to_do():
    with pytest.raises(ValueError, match="m must be"):
        CIP(0)
    with pytest.raises(ValueError, match="order_threshold"):
        CIP(3, order_threshold=1.0)
    with pytest.raises(ValueError, match="masking"):
        CIP(3, masking="blank")
    with pytest.raises(ValueError, match="batch_share"):
        CIP(3, batch_share=0.0)
    model = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32)
    with pytest.raises(ValueError, match="labels"):
        CIP(3)(model, {"input_ids": torch.ones(1, 4, dtype=torch.long)})
    model.config.pad_token_id = model.config.eos_token_id = None  # "pad" falls back to eos (test_masking.py)
    with pytest.raises(ValueError, match="pad_token_id or an eos_token_id"):
        CIP(3)(model, make_batch(), step=0)


@pytest.mark.slow
def test_training_with_cip_lowers_complex_interactions():
    """Same seeded run with and without CIP: the penalty lowers the mean |I_S| over complex S (|S| >= 2, every
    subset of the 5 prompt tokens, exact) while the cross-entropy still goes down."""
    batch = make_batch(prompt_lengths=(5, 5, 5, 5), target_lengths=(3, 3, 3, 3), seed=11)
    measure = CIP(5, exact_up_to=5)

    def complex_strength(model):
        with torch.no_grad():
            return float(measure(model, batch, step=0))

    def train(weight):
        model = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32, seed=3).train()
        cip = CIP(3, weight=weight, seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        torch.manual_seed(0)
        for step in range(20):
            outputs = model(**batch)
            loss = outputs.loss + (cip(model, batch, outputs, step=step) if weight else 0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return complex_strength(model), float(model(**batch).loss)

    start = tiny_causal_lm("gpt2", vocab_size=VOCAB, hidden_size=32, seed=3)
    with torch.no_grad():
        start_ce = float(start(**batch).loss)
    plain_strength, plain_ce = train(0.0)
    cip_strength, cip_ce = train(1.0)
    assert cip_strength < 0.5 * plain_strength, (cip_strength, plain_strength)
    assert cip_ce < start_ce and math.isfinite(cip_ce), (cip_ce, start_ce, plain_ce)
