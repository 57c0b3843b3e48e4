"""MiniLLM (Gu et al., ICLR 2024): sequence-level reverse KL(q_theta || p) minimised by policy gradient.

For a response y sampled from the teacher-mixed distribution p~ = a p + (1 - a) q (a = teacher_mix), per response
token t (q: student, p: teacher, both given the same prefix):
  r_t      = log p(y_t) - log q(y_t)                                    the per-token reward (no gradient)
  w_t      = q(y_t) / p~(y_t)                                           importance weight of the mixed sampling
                                                                         (token level, no gradient)
  R_{t+1}  = sum_{t' > t} r_t'  / (number of t' > t)                    the long-term reward after t; the division
                                                                         is the length normalisation (off: the sum)
  single_t = w_t * KL(q(.|y<t) || p(.|y<t))                             the single-step term, exact over the vocabulary
  rho_t    = q(y_t) / q_old(y_t)                                         the ratio to the sampling policy
  long_t   = -w_t * min(rho_t R_{t+1}, clip(rho_t, 1 - c, 1 + c) R_{t+1})   PPO-style clipped policy gradient
The loss is sum_t (single_t + long_t) over response tokens (normalised by the trainer), plus pt_weight times the
cross-entropy of the data's reference responses (the pre-training / language-modelling term L_PT).
With one update per sample (this trainer), q_old is q itself (rho = 1 with the gradient of log q).

`mixed_samples` draws the responses: token by token from a p + (1 - a) q, all prompts of a batch in one forward
per token, each with its own torch.Generator (so a sample depends on its prompt and generator only, not on the
batch it is in). a = 0 is plain sampling
from the student (the on-policy samples of gkd, imitkd, distillm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..losses.kd import KDLossOutput

__all__ = ["minillm_loss", "mixed_sample", "mixed_samples"]

IGNORE_INDEX = -100


@torch.no_grad()
def mixed_sample(student: nn.Module, teacher: nn.Module | None, prompt: Sequence[int], *, teacher_mix: float,
                 max_new_tokens: int, eot_id: int, generator: torch.Generator) -> tuple[int, ...]:
    """Token ids drawn from teacher_mix * p + (1 - teacher_mix) * q after `prompt`, ending at eot_id (kept) or after
    max_new_tokens; generator is a CPU torch.Generator. One prompt of `mixed_samples`."""
    return mixed_samples(student, teacher, [prompt], teacher_mix=teacher_mix, max_new_tokens=max_new_tokens,
                         eot_id=eot_id, generators=[generator])[0]


@torch.no_grad()
def mixed_samples(student: nn.Module, teacher: nn.Module | None, prompts: Sequence[Sequence[int]], *,
                  teacher_mix: float, max_new_tokens: int, eot_id: int,
                  generators: Sequence[torch.Generator]) -> list[tuple[int, ...]]:
    """`mixed_sample` for many prompts at once: one forward per new token for all unfinished rows (right-padded, so
    causal attention keeps every row's logits those of its own sequence), each row drawn with its own generator,
    so a sample depends on its prompt and generator only, not on the batch it is in."""
    if len(generators) != len(prompts):
        raise ValueError(f"mixed_samples needs one generator per prompt, got {len(generators)} for {len(prompts)}")
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    sequences = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    try:
        for _ in range(max_new_tokens):
            if not live:
                break
            lengths = [len(sequences[r]) for r in live]
            ids = torch.zeros(len(live), max(lengths), dtype=torch.long)
            for i, r in enumerate(live):
                ids[i, :lengths[i]] = torch.tensor(sequences[r])
            ids, last = ids.to(device), torch.tensor(lengths, device=device) - 1
            rows = torch.arange(len(live), device=device)
            probs = torch.softmax(student(input_ids=ids).logits[rows, last].float(), dim=-1)
            if teacher is not None and teacher_mix > 0:
                p = torch.softmax(teacher(input_ids=ids).logits[rows, last].float(), dim=-1)
                probs = teacher_mix * p + (1 - teacher_mix) * probs
            probs = probs.cpu()
            still = []
            for i, r in enumerate(live):
                token = int(torch.multinomial(probs[i], 1, generator=generators[r]))
                out[r].append(token)
                sequences[r].append(token)
                if token != eot_id:
                    still.append(r)
            live = still
    finally:
        student.train(was_training)
    return [tuple(o) for o in out]


def minillm_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, teacher_mix: float = 0.2,
                 clip: float = 0.2, length_norm: bool = True, old_logprobs: Tensor | None = None) -> KDLossOutput:
    """The MiniLLM policy-gradient loss (module docstring) summed over response tokens, and their count.

    student_logits, teacher_logits [B, T, V]; labels [B, T] in the Hugging Face convention (shifted inside: logits
    at t predict labels at t + 1; -100 outside the sampled response). old_logprobs [B, T - 1]: log q_old of the
    label tokens (default: the student's own, detached).
    """
    s = torch.log_softmax(student_logits[:, :-1].float(), dim=-1)
    with torch.no_grad():
        p = torch.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    index = targets.clamp(min=0).unsqueeze(-1)
    logq = s.gather(-1, index).squeeze(-1)
    logp = p.gather(-1, index).squeeze(-1)
    maskf = mask.to(s.dtype)
    with torch.no_grad():
        reward = (logp - logq) * maskf
        weight = 1.0 / (teacher_mix * torch.exp(logp - logq) + (1.0 - teacher_mix))
        future = _reverse_cumsum(reward) - reward
        if length_norm:
            remaining = _reverse_cumsum(maskf) - maskf
            future = torch.where(remaining > 0, future / remaining.clamp(min=1), torch.zeros_like(future))
    kl = (s.exp() * (s - p)).sum(-1)  # KL(q_t || p_t), exact over the vocabulary
    old = logq.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(logq - old)
    long = -weight * torch.minimum(ratio * future, ratio.clamp(1 - clip, 1 + clip) * future)
    per_token = (weight * kl + long) * maskf
    return KDLossOutput(per_token.sum(), mask.sum())


def _reverse_cumsum(x: Tensor) -> Tensor:
    """y[..., t] = sum_{t' >= t} x[..., t']."""
    return x.flip(-1).cumsum(-1).flip(-1)
