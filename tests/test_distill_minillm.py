"""MiniLLM on tiny models: its loss and gradient against a direct computation of its terms (single-step reverse KL,
length-normalised long-term reward, importance weights of the teacher-mixed sampling, PPO clipping), the
teacher-mixed sampler against sampling from the mixture without caches, and a minillm run with its LM term."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdi_fast.distill.minillm import minillm_loss, mixed_sample


def _model(seed, layers=1, vocab=40):
    from kdi_fast.models import tiny_causal_lm

    return tiny_causal_lm("llama", vocab_size=vocab, hidden_size=16, num_layers=layers, num_heads=2, seed=seed)


def _batch():
    input_ids = torch.tensor([[3, 5, 7, 9, 11, 13, 2], [4, 6, 8, 10, 12, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 9, 11, 13, 2], [-100, -100, -100, 10, 12, -100, -100]])
    return input_ids, labels


def _direct(student_logits, teacher_logits, labels, mix, length_norm):
    """sum_t w_t KL(q_t || p_t) - w_t R_{t+1} log q(y_t), written out position by position (its gradient is
    MiniLLM's policy gradient); returns (that surrogate, the loss value with rho = 1)."""
    surrogate, value = 0.0, 0.0
    for b in range(labels.shape[0]):
        positions = [j for j in range(labels.shape[1] - 1) if labels[b, j + 1] != -100]
        logq = [torch.log_softmax(student_logits[b, j].double(), -1) for j in positions]
        logp = [torch.log_softmax(teacher_logits[b, j].double(), -1) for j in positions]
        ys = [int(labels[b, j + 1]) for j in positions]
        r = [float((logp[i][y] - logq[i][y]).detach()) for i, y in enumerate(ys)]
        for i, y in enumerate(ys):
            q_y, p_y = math.exp(float(logq[i][y].detach())), math.exp(float(logp[i][y].detach()))
            w = q_y / (mix * p_y + (1 - mix) * q_y)
            later = r[i + 1:]
            big_r = (sum(later) / len(later) if later else 0.0) if length_norm else sum(later)
            kl = (logq[i].exp() * (logq[i] - logp[i])).sum()
            surrogate = surrogate + w * kl - w * big_r * logq[i][y]
            value += w * float(kl.detach()) - w * big_r
    return surrogate, value


@pytest.mark.parametrize("length_norm", [True, False])
def test_minillm_loss_and_gradient_match_the_direct_computation(length_norm):
    student, teacher = _model(1), _model(2, layers=2)
    input_ids, labels = _batch()
    attention = (input_ids != 0).long()
    teacher_logits = teacher(input_ids=input_ids, attention_mask=attention).logits.detach()
    logits = student(input_ids=input_ids, attention_mask=attention).logits
    loss = minillm_loss(logits, teacher_logits, labels, teacher_mix=0.3, clip=0.2, length_norm=length_norm)
    assert int(loss.count) == 7
    grads = torch.autograd.grad(loss.sum, list(student.parameters()))
    logits = student(input_ids=input_ids, attention_mask=attention).logits
    surrogate, value = _direct(logits, teacher_logits, labels, 0.3, length_norm)
    expected = torch.autograd.grad(surrogate, list(student.parameters()))
    assert float(loss.sum) == pytest.approx(value, rel=1e-5, abs=1e-6)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.double(), e.double(), rtol=1e-4, atol=1e-6)


def test_ppo_clipping_caps_the_ratio():
    student, teacher = _model(1), _model(2, layers=2)
    input_ids, labels = _batch()
    teacher_logits = teacher(input_ids=input_ids).logits.detach()
    logits = student(input_ids=input_ids).logits
    s = torch.log_softmax(logits[:, :-1].float(), -1)
    logq = s.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1).detach()
    plain = minillm_loss(logits, teacher_logits, labels, teacher_mix=0.0, clip=0.2, length_norm=False)
    # q_old = q / e: every ratio is e > 1.2, so min(rho R, 1.2 R) is 1.2 R where R > 0 and e R where R < 0
    shifted = minillm_loss(logits, teacher_logits, labels, teacher_mix=0.0, clip=0.2, length_norm=False,
                           old_logprobs=logq - 1.0)
    p = torch.log_softmax(teacher_logits[:, :-1].float(), -1)
    logp = p.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = (labels[:, 1:] != -100).float()
    r = (logp - logq) * mask
    future = r.flip(-1).cumsum(-1).flip(-1) - r
    kl = ((s.exp() * (s - p)).sum(-1) * mask).sum()
    expected = kl - (torch.minimum(math.e * future, 1.2 * future) * mask).sum()
    assert float(shifted.sum) == pytest.approx(float(expected), rel=1e-5)
    assert float(plain.sum) == pytest.approx(float(kl - (future * mask).sum()), rel=1e-5)


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_teacher_mixed_sampling_draws_from_the_mixture(mix):
    student, teacher = _model(1), _model(2, layers=2)
    prompt = [3, 5, 7]
    got = mixed_sample(student, teacher, prompt, teacher_mix=mix, max_new_tokens=6, eot_id=2,
                       generator=torch.Generator().manual_seed(7))
    generator, ids, expected = torch.Generator().manual_seed(7), list(prompt), []
    with torch.no_grad():
        for _ in range(6):  # no caches: the whole sequence each time
            q = torch.softmax(student(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            p = torch.softmax(teacher(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(torch.multinomial(mix * p + (1 - mix) * q, 1, generator=generator))
            expected.append(token)
            ids.append(token)
            if token == 2:
                break
    assert list(got) == expected


def test_minillm_run_trains_on_mixed_samples_with_the_lm_term(tmp_path):
    from kdi_fast.distill import DistillConfig, distill
    from kdi_fast.distill.datasets import Example
    from kdi_fast.models import load_tokenizer, tiny_causal_lm

    tokenizer = load_tokenizer("smollm2")
    teacher = tiny_causal_lm("llama", hidden_size=32, num_layers=2, num_heads=4, seed=1)
    student = tiny_causal_lm("llama", hidden_size=32, num_layers=1, num_heads=4, seed=2)
    examples = [Example("a", "Calculate 2 + 3.", "5"), Example("b", "Spell this word backward: table", "elbat")]
    config = DistillConfig("minillm", steps=2, batch_size=2, lr=1e-2, max_length=48, max_new_tokens=4,
                           minillm_pt_weight=0.5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    run = distill(teacher, student, tokenizer, examples, tmp_path, config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert run.steps == 2 and run.sgo_batches == 2 and [e["source"] for e in log] == ["student", "student"]
    assert all(e["pt"] > 0 and e["loss"] == pytest.approx(e["kd"] + e["pt"], rel=1e-5) for e in log)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    with pytest.raises(ValueError, match="minillm"):
        DistillConfig("minillm", temperature=2.0)


def test_batched_samples_equal_one_prompt_at_a_time():
    """mixed_samples draws each row as mixed_sample would alone: same prompt and generator seed, same tokens, in a
    batch of prompts of different lengths (right padding must not leak into a row's logits)."""
    from kdi_fast.distill.minillm import mixed_samples

    student, teacher = _model(1), _model(2, layers=2)
    prompts = [[3, 5, 7], [4, 6, 8, 10, 12, 14], [9], [11, 13]]
    for mix in (0.0, 0.3):
        alone = [mixed_sample(student, teacher, p, teacher_mix=mix, max_new_tokens=6, eot_id=2,
                              generator=torch.Generator().manual_seed(10 + i)) for i, p in enumerate(prompts)]
        batched = mixed_samples(student, teacher, prompts, teacher_mix=mix, max_new_tokens=6, eot_id=2,
                                generators=[torch.Generator().manual_seed(10 + i) for i in range(len(prompts))])
        assert batched == alone
    with pytest.raises(ValueError, match="one generator per prompt"):
        mixed_samples(student, None, prompts, teacher_mix=0.0, max_new_tokens=2, eot_id=2,
                      generators=[torch.Generator()])
