"""What the study measures of one model: held-out accuracy, agreement and fidelity with the teacher, and its
interactions (kdi_fast.engine) summarised by kdi_fast.metrics under one masking.

Definitions (fixed before the grid ran; the report repeats them):
- accuracy: exact match of the greedy answer (digits up to the first non-digit) with the true sum.
- agreement: share of prompts where the student's answer equals the teacher's (kdi_fast.metrics.text.agreement);
  fidelity: corpus BLEU of the student's outputs against the teacher's (kdi_fast.metrics.text.fidelity).
- interactions: n = 8 players (the digit slots), y* = the true answer's digits, v = log-odds of its mean
  token probability; masking "embedding" (baseline: the pad token "_", seen in training) or "attention".
- simple = order <= 4 (= n // 2, the package default), complex = order >= 5.
- Overlap@k with k = 0.1 (K = floor(k M): 25 of all 255, 16 of 162 simple, 9 of 93 complex); the chance level
  of two unrelated top-K sets is K / M (0.098, 0.099, 0.097).
- salient complex overlap: share of the teacher's salient complex interactions (|I~_S| > 0.05, order >= 5)
  that are also salient in the student; NaN for a prompt where the teacher has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..distill.datasets import Example
from .task import answer_of, digit_players

__all__ = ["K", "MAX_SIMPLE_ORDER", "SALIENT", "answer_nll", "greedy_outputs", "text_scores", "interactions_of",
           "interaction_scores", "chance_overlap", "order_strength"]

K = 0.1
MAX_SIMPLE_ORDER = 4
SALIENT = 0.05
MAX_NEW_TOKENS = 6  # the longest answer (5 digits) and its end token


@torch.no_grad()
def greedy_outputs(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 512) -> list[str]:
    """The model's greedy continuations (MAX_NEW_TOKENS tokens, decoded) of the prompts, which all have the
    same number of tokens (no padding is needed, so a plain batched loop is exact)."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(examples), batch_size):
            rows = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples[start:start + batch_size]]
            if len({len(r) for r in rows}) != 1:
                raise ValueError("greedy_outputs needs prompts of one length (the lab task's prompts all have it)")
            ids = torch.tensor(rows)
            for _ in range(MAX_NEW_TOKENS):
                nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
                ids = torch.cat([ids, nxt[:, None]], 1)
            out += [tokenizer.decode(r) for r in ids[:, -MAX_NEW_TOKENS:].tolist()]
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def answer_nll(model, tokenizer, examples: Sequence[Example]) -> float:
    """Mean negative log-likelihood (nats per token) of the true answer and its end token given the prompt,
    teacher-forced: the smooth validation score that the lab's tuning ranks learning rates by (exact-match
    accuracy jumps between 0 and ~80% by seed at the lab's step budget, which makes it a poor ranking)."""
    from collections import defaultdict

    from ..distill.datasets import tokenize_examples

    was_training = model.training
    model.eval()
    groups = defaultdict(list)  # rows of one (prompt, response) length stack without padding
    for item in tokenize_examples(tokenizer, examples):
        groups[len(item.prompt_ids), len(item.response_ids)].append(item.prompt_ids + item.response_ids)
    total, count = 0.0, 0
    try:
        for (n_prompt, n_response), rows in groups.items():
            ids = torch.tensor(rows)
            logp = model(input_ids=ids, use_cache=False).logits[:, n_prompt - 1:-1].float().log_softmax(-1)
            total -= logp.gather(-1, ids[:, n_prompt:, None]).sum().item()
            count += len(rows) * n_response
    finally:
        model.train(was_training)
    return total / count


def _answer(text: str):
    return answer_of(text) or None


def text_scores(examples: Sequence[Example], outputs: Sequence[str], teacher_outputs: Sequence[str] | None) -> dict:
    """accuracy (0..1) and, with the teacher's outputs, agreement (0..1) and fidelity (BLEU, 0..100)."""
    from ..metrics.text import agreement, fidelity

    scores = {"accuracy": sum(answer_of(o) == e.response for o, e in zip(outputs, examples)) / len(examples)}
    if teacher_outputs is not None:
        answers_t = [answer_of(t) for t in teacher_outputs]
        answers_s = [answer_of(s) for s in outputs]
        scores["agreement"] = agreement(teacher_outputs, outputs, extractor=_answer)
        scores["fidelity"] = fidelity(answers_t, answers_s)
    return scores


def interactions_of(model, tokenizer, examples: Sequence[Example], *, masking: str, like=None) -> list:
    """kdi_fast.engine.compute_interactions on the examples' prompts (players: the 8 digit slots; y*: the true
    answer), with masking "embedding" (pad baseline) or "attention"; like: the teacher's results."""
    from ..engine import compute_interactions

    prompts = [e.prompt for e in examples]
    if like is not None:
        return compute_interactions(model, tokenizer, prompts, like=like, masking=masking, baseline="pad",
                                    progress=False)
    return compute_interactions(model, tokenizer, prompts, targets=[e.response for e in examples],
                                players=[digit_players()] * len(examples), masking=masking, baseline="pad",
                                max_target_tokens=MAX_NEW_TOKENS, progress=False)


def chance_overlap(n: int) -> dict[str, float]:
    """K / M of Overlap@K for all, simple and complex interactions: the expected overlap of unrelated sets."""
    from ..metrics.interaction import split_orders, top_k_count

    simple, complex_ = split_orders(n, MAX_SIMPLE_ORDER)
    sizes = {"all": 2**n - 1, "simple": sum(math.comb(n, j) for j in simple),
             "complex": sum(math.comb(n, j) for j in complex_)}
    return {name: top_k_count(K, m) / m for name, m in sizes.items()}


def _salient_complex_overlap(teacher: torch.Tensor, student: torch.Tensor) -> float:
    from ..metrics.interaction import normalise, subset_orders

    n = int(teacher.shape[-1]).bit_length() - 1
    complex_ = subset_orders(n) > MAX_SIMPLE_ORDER
    t = normalise(teacher).abs()[complex_] > SALIENT
    s = normalise(student).abs()[complex_] > SALIENT
    return float((t & s).sum() / t.sum()) if t.any() else math.nan


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def interaction_scores(results: Sequence, teacher_results: Sequence | None) -> dict:
    """Means over prompts: gini (all / simple / complex), share_complex and, with the teacher's results,
    overlap (all / simple / complex, Overlap@K) and salient_complex_overlap."""
    from ..metrics.interaction import prompt_scores

    rows = []
    for i, result in enumerate(results):
        teacher = teacher_results[i] if teacher_results is not None else None
        row = prompt_scores(result, teacher, k=K, max_simple_order=MAX_SIMPLE_ORDER)
        if teacher is not None:
            row["salient_complex_overlap"] = _salient_complex_overlap(teacher.interactions, result.interactions)
        rows.append(row)
    return {key: _nanmean([row[key] for row in rows]) for key in rows[0]}


def order_strength(results: Sequence) -> list[float]:
    """Mean normalised strength |I~_S| per order 1..n over the prompts (kdi_fast.metrics.by_order)."""
    from ..metrics.interaction import by_order

    return by_order(results).strength.mean(0).tolist()
