"""Knowledge-distillation losses between student and teacher logits, computed in chunks of tokens.

Notation, per token: s = log_softmax(student / T), t = log_softmax(teacher / T) over the vocabulary,
Q = exp(s) (student), P = exp(t) (teacher). KL(A||B) = sum_v A_v log(A_v / B_v).

  forward_kl          KL(P || Q)                                        (Hinton et al. 2015; "KD")
  reverse_kl          KL(Q || P)                                        (MiniLLM)
  jsd(beta)           [beta KL(P||M) + (1-beta) KL(Q||M)] / (beta (1-beta)),  M = beta P + (1-beta) Q
                      The generalised JSD of GKD (Agarwal et al. 2024, eq. 1) divided by beta (1-beta), so that it
                      tends to forward KL as beta -> 0 and to reverse KL as beta -> 1 (no jump at the ends; TRL's
                      unscaled form tends to 0 there). beta=0 and beta=1 are computed as the KLs themselves.
  skew_forward_kl(a)  KL(P || a P + (1-a) Q)                            (DistiLLM, SKL; a=0: forward KL)
  skew_reverse_kl(a)  KL(Q || a Q + (1-a) P)                            (DistiLLM, SRKL; a=0: reverse KL)
  tvd                 1/2 sum_v |P_v - Q_v|
  ab(alpha, beta)     the alpha-beta divergence D_AB(P || Q) of ABKD (Wang et al. 2025; Cichocki et al. 2011):
                      -1/(alpha beta) sum_v [P^a Q^b - a/(a+b) P^(a+b) - b/(a+b) Q^(a+b)]   (a, b, a+b != 0)
                      with its continuous limits: b=0: 1/a^2 sum [P^a log(P^a/Q^a) - P^a + Q^a] (a=1: forward KL);
                      a=0: 1/b^2 sum [Q^b log(Q^b/P^b) - Q^b + P^b] (b=1: reverse KL);
                      a=-b: 1/a^2 sum [log(Q^a/P^a) + P^a/Q^a - 1];  a=b=0: 1/2 sum (log P - log Q)^2.
  l1                  sum_v |P_v - Q_v|
  l2                  ||P - Q||_2 (the Euclidean norm, as in the KD survey's "L2-norm distance")
  l2_squared          ||P - Q||_2^2
  cross_entropy       -log_softmax(student)[label]: the hard-label loss; no teacher, no temperature, no noise.

Common options: temperature T on both sides (t2_scaling multiplies the loss by T^2, Hinton's convention);
Gaussian noise of std `noise_std` added to the teacher's logits before the temperature (seeded by `generator`);
tokens selected by labels != -100; the sum over tokens and the token count are returned, so that trainers can
normalise (by the count, or by num_items_in_batch under gradient accumulation).

Non-finite logits: -inf is probability 0 (a masked vocabulary), with 0 log 0 = 0 and finite gradients. A
divergence that is +inf at a token (forward KL where the student gives 0 to a token the teacher gives mass) is
reported as an error naming the token and the vocabulary id, never returned as inf/NaN gradients. NaN or +inf
logits (or a row that is all -inf) are an error naming the token; for the teacher, invalid_teacher="skip" leaves
such tokens out instead and counts them (KDLossOutput.skipped). The [tokens, vocab] work is done
`chunk_size` tokens at a time, in the forward and in the backward (which recomputes each chunk), so nothing
beyond one chunk of that size is ever held besides the inputs and their gradients.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd", "ab", "l1", "l2",
               "l2_squared", "cross_entropy")
IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 24  # default chunk: about 16M logits (64 MB per float32 temporary)


class KDLossOutput(NamedTuple):
    """The loss summed over the selected tokens, how many tokens were selected (a 0-dim int64 tensor), and how
    many selected tokens were left out because the teacher's logits were invalid (invalid_teacher="skip")."""

    sum: Tensor
    count: Tensor
    skipped: Tensor | int = 0

    def mean(self, num_items_in_batch: int | Tensor | None = None) -> Tensor:
        """sum / num_items_in_batch when given (the tokens of the whole accumulated batch), else sum / count."""
        denominator = self.count if num_items_in_batch is None else num_items_in_batch
        denominator = torch.as_tensor(denominator, device=self.sum.device).clamp(min=1)  # no tokens: 0, not nan
        return self.sum / denominator


# ----------------------------------------------------------------------------------------------------------
# Per-token divergences over one chunk: s, t are log-probabilities [c, V]; each returns [c]
# ----------------------------------------------------------------------------------------------------------


def _kl(a: Tensor, b: Tensor) -> Tensor:
    """KL(A||B) per row from log-probabilities; entries with A_v = 0 contribute 0 (also when B_v = 0), with a
    zero gradient (the masked entries are replaced by 0 before the product, so no 0 * inf reaches autograd)."""
    present = a > -math.inf
    a0, b0 = torch.where(present, a, 0.0), torch.where(present, b, 0.0)
    return torch.where(present, a0.exp() * (a0 - b0), 0.0).sum(-1)


def _mixture(a: Tensor, b: Tensor, weight_a: float) -> Tensor:
    """log(w A + (1-w) B) from log-probabilities; -inf (with a zero gradient) where A_v = B_v = 0."""
    x, y = a + math.log(weight_a), b + math.log1p(-weight_a)
    present = torch.maximum(x, y) > -math.inf
    mixed = torch.logaddexp(torch.where(present, x, 0.0), torch.where(present, y, 0.0))
    return torch.where(present, mixed, -math.inf)


def _jsd(s: Tensor, t: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return _kl(t, s)
    if beta == 1.0:
        return _kl(s, t)
    m = _mixture(t, s, beta)
    return (beta * _kl(t, m) + (1.0 - beta) * _kl(s, m)) / (beta * (1.0 - beta))


def _skew_forward(s: Tensor, t: Tensor, alpha: float) -> Tensor:
    return _kl(t, s if alpha == 0.0 else _mixture(t, s, alpha))


def _skew_reverse(s: Tensor, t: Tensor, alpha: float) -> Tensor:
    return _kl(s, t if alpha == 0.0 else _mixture(s, t, alpha))


def _ab(s: Tensor, t: Tensor, alpha: float, beta: float) -> Tensor:
    """D_AB^(alpha, beta)(P || Q) with P = exp(t) (teacher), Q = exp(s) (student), in log space."""
    a, b = alpha, beta
    if a == 0.0 and b == 0.0:
        return 0.5 * (t - s).square().sum(-1)
    if b == 0.0:
        pa, qa = (a * t).exp(), (a * s).exp()
        return (pa * (a * t - a * s) - pa + qa).sum(-1) / (a * a)
    if a == 0.0:
        pb, qb = (b * t).exp(), (b * s).exp()
        return (qb * (b * s - b * t) - qb + pb).sum(-1) / (b * b)
    if a + b == 0.0:
        d = a * (s - t)  # log(Q^a / P^a)
        return (d + torch.exp(-d) - 1.0).sum(-1) / (a * a)
    lam = a + b
    terms = (a * t + b * s).exp() - (a / lam) * (lam * t).exp() - (b / lam) * (lam * s).exp()
    return -terms.sum(-1) / (a * b)


def _tvd(s: Tensor, t: Tensor) -> Tensor:
    return 0.5 * (t.exp() - s.exp()).abs().sum(-1)


def _l1(s: Tensor, t: Tensor) -> Tensor:
    return (t.exp() - s.exp()).abs().sum(-1)


def _l2_squared(s: Tensor, t: Tensor) -> Tensor:
    return (t.exp() - s.exp()).square().sum(-1)


def _l2(s: Tensor, t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.exp() - s.exp(), dim=-1)


_PARAMETERS = {"jsd": ("beta",), "skew_forward_kl": ("alpha",), "skew_reverse_kl": ("alpha",), "ab": ("alpha", "beta")}
"""The divergences that read alpha / beta (every other one ignores them)."""


def _check_options(divergence: str, alpha, beta, **numbers) -> None:
    """Types of the numeric options (a TypeError naming the option), and a warning for an alpha or beta that
    `divergence` ignores."""
    if not isinstance(divergence, str):
        raise TypeError(f"divergence must be a name (str), one of {', '.join(DIVERGENCES)}; got {divergence!r}")
    for name, value in dict(numbers, alpha=alpha, beta=beta).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value is not None and divergence in DIVERGENCES and name not in _PARAMETERS.get(divergence, ()):
            users = [d for d, names in _PARAMETERS.items() if name in names]
            warnings.warn(f"{name}={value} is ignored by divergence={divergence!r}; only {', '.join(users)} use "
                          f"{name}", UserWarning, stacklevel=3)


def _per_token_fn(divergence: str, alpha: float | None, beta: float | None) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-token function (s, t) -> [c] for a divergence name and its parameters, after checking them."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "jsd":
        beta = 0.5 if beta is None else float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd needs 0 <= beta <= 1 (0: forward KL, 1: reverse KL), got beta={beta}")
        return lambda s, t: _jsd(s, t, beta)
    if divergence in ("skew_forward_kl", "skew_reverse_kl"):
        alpha = 0.1 if alpha is None else float(alpha)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"{divergence} needs 0 <= alpha < 1 (the teacher/student share of the mixture; "
                             f"DistiLLM uses 0.1), got alpha={alpha}")
        fn = _skew_forward if divergence == "skew_forward_kl" else _skew_reverse
        return lambda s, t: fn(s, t, alpha)
    if divergence == "ab":
        if alpha is None or beta is None:
            raise ValueError("divergence='ab' needs both alpha and beta (alpha=1, beta=0 is forward KL; alpha=0, "
                             "beta=1 is reverse KL; ABKD tunes them per task, e.g. alpha=0.2, beta=0.7)")
        alpha, beta = float(alpha), float(beta)
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"divergence='ab' needs finite alpha and beta, got alpha={alpha}, beta={beta}")
        return lambda s, t: _ab(s, t, alpha, beta)
    return {"forward_kl": lambda s, t: _kl(t, s), "reverse_kl": lambda s, t: _kl(s, t), "tvd": _tvd, "l1": _l1,
            "l2": _l2, "l2_squared": _l2_squared}[divergence]


# ----------------------------------------------------------------------------------------------------------
# The chunked autograd Function
# ----------------------------------------------------------------------------------------------------------


class _ChunkPlan(NamedTuple):
    fn: Callable[[Tensor, Tensor], Tensor] | None  # None: cross-entropy against `targets`
    divergence: str  # its name, for error messages
    lead: tuple[int, ...]  # the logits' leading shape, to name a token by its position in error messages
    vocab: int  # columns used (the shared first part when the vocabularies differ)
    temperature: float
    noise_std: float
    noise_seed: int
    chunk_size: int


def _chunk_loss(student: Tensor, teacher: Tensor | None, targets: Tensor, plan: _ChunkPlan, index: int) -> Tensor:
    """The per-token losses [c] of one chunk of rows (student/teacher [c, vocab] in the compute dtype)."""
    if plan.fn is None:
        return -(student.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(student, dim=-1))
    if plan.noise_std > 0.0:
        generator = torch.Generator(teacher.device).manual_seed(plan.noise_seed + index)
        noise = torch.randn(teacher.shape, generator=generator, device=teacher.device, dtype=teacher.dtype)
        teacher = teacher + plan.noise_std * noise
    s = torch.log_softmax(student / plan.temperature, dim=-1)
    t = torch.log_softmax(teacher / plan.temperature, dim=-1)
    return plan.fn(s, t)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _take(x: Tensor | None, rows: Tensor, vocab: int) -> Tensor | None:
    return None if x is None else x.detach()[rows, :vocab].to(_compute_dtype(x))


class _ChunkedLoss(torch.autograd.Function):
    """sum over `rows` of the per-token loss; student/teacher are [R, V] (all positions), rows [N] selected."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor | None, rows: Tensor, targets: Tensor,
                plan: _ChunkPlan) -> Tensor:
        total = student.new_zeros((), dtype=_compute_dtype(student))
        for index, start in enumerate(range(0, rows.numel(), plan.chunk_size)):
            r = rows[start:start + plan.chunk_size]
            s, t = _take(student, r, plan.vocab), _take(teacher, r, plan.vocab)
            _check_rows(s, "student", r, plan)
            if t is not None:
                _check_rows(t, "teacher", r, plan)
            per_token = _chunk_loss(s, t, targets[start:start + plan.chunk_size], plan, index)
            if not torch.isfinite(per_token).all():
                _raise_infinite(per_token, s, t, r, plan)
            total += per_token.sum()
        ctx.save_for_backward(student, teacher, rows, targets)
        ctx.plan = plan
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: Tensor):
        student, teacher, rows, targets = ctx.saved_tensors
        plan: _ChunkPlan = ctx.plan
        need_student = ctx.needs_input_grad[0]
        need_teacher = teacher is not None and ctx.needs_input_grad[1]
        grad_student = torch.zeros_like(student) if need_student else None
        grad_teacher = torch.zeros_like(teacher) if need_teacher else None
        for index, start in enumerate(range(0, rows.numel(), plan.chunk_size)):
            r = rows[start:start + plan.chunk_size]
            with torch.enable_grad():
                s = _take(student, r, plan.vocab).requires_grad_(need_student)
                t = _take(teacher, r, plan.vocab)
                if t is not None:
                    t.requires_grad_(need_teacher)
                loss = _chunk_loss(s, t, targets[start:start + plan.chunk_size], plan, index).sum()
                inputs = [x for x, need in ((s, need_student), (t, need_teacher)) if need]
                grads = list(torch.autograd.grad(loss, inputs))
            if need_student:
                grad_student[r, :plan.vocab] = (grads.pop(0) * grad_total).to(student.dtype)
            if need_teacher:
                grad_teacher[r, :plan.vocab] = (grads.pop(0) * grad_total).to(teacher.dtype)
        return grad_student, grad_teacher, None, None, None


def _token_name(row: int, lead: tuple[int, ...]) -> str:
    """A flat row index as its position in the logits' leading shape: '(batch, position)'."""
    position = []
    for size in reversed(lead):
        row, i = divmod(row, size)
        position.append(i)
    return "(" + ", ".join(str(i) for i in reversed(position)) + ")"


def _valid_rows(x: Tensor) -> Tensor:
    """Per row [c] of logits [c, V]: no NaN, no +inf, and not all -inf (a row that gives some token mass)."""
    return torch.isfinite(x.amax(-1))  # amax propagates NaN


def _check_rows(x: Tensor, side: str, rows: Tensor, plan: _ChunkPlan) -> None:
    valid = _valid_rows(x)
    if bool(valid.all()):
        return
    i = int((~valid).nonzero()[0, 0])
    row = x[i]
    what = "NaN" if bool(row.isnan().any()) else "+inf" if bool((row == math.inf).any()) else "only -inf"
    fix = ("; pass invalid_teacher='skip' to leave such tokens out (they are counted in KDLossOutput.skipped)"
           if side == "teacher" else "; the student has diverged (lower the learning rate) or its input is broken")
    raise ValueError(f"kd_loss: the {side} logits of token {_token_name(int(rows[i]), plan.lead)} contain {what}"
                     f"{fix}")


def _raise_infinite(per_token: Tensor, s: Tensor, t: Tensor | None, rows: Tensor, plan: _ChunkPlan) -> None:
    """Name the first token whose loss is not finite, and the vocabulary id that makes it so."""
    i = int((~torch.isfinite(per_token)).nonzero()[0, 0])
    where = f"kd_loss: {plan.divergence} is {float(per_token[i]):+} at token {_token_name(int(rows[i]), plan.lead)}"
    if t is not None:
        only_student = (s[i] == -math.inf) & (t[i] > -math.inf)
        only_teacher = (t[i] == -math.inf) & (s[i] > -math.inf)
        for zero, other, mask, logits in (("student", "teacher", only_student, t), ("teacher", "student",
                                                                                  only_teacher, s)):
            if bool(mask.any()):
                v = int(mask.nonzero()[0, 0])
                p = float(torch.softmax(logits[i] / plan.temperature, -1)[v])
                raise ValueError(
                    f"{where}: the {zero} gives vocabulary id {v} probability 0 (logit -inf) where the {other} "
                    f"gives it {p:.3g}, so the divergence is infinite there. Give both models -inf at the same ids "
                    f"(the same masked vocabulary), or use a divergence that stays finite (jsd, skew_forward_kl, "
                    f"skew_reverse_kl, tvd)")
    raise ValueError(f"{where} although its logits are valid; use another divergence or report this")


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def _check_vocab(student_logits: Tensor, teacher_logits: Tensor, shared_vocab: bool) -> int:
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vs == vt:
        return vs
    if not shared_vocab:
        raise ValueError(
            f"the student's vocabulary has {vs} entries and the teacher's {vt}: a divergence needs the same "
            f"vocabulary. If the two tokenizers agree on the first {min(vs, vt)} ids (e.g. one model pads its "
            f"embedding matrix), pass shared_vocab=True to compare the distributions over that shared part only")
    return min(vs, vt)


def _positions(labels: Tensor | None, shape: torch.Size, shift_labels: bool, device: torch.device
               ) -> tuple[Tensor, Tensor]:
    """Flat row indices of the selected tokens and their target ids (0 where there are no labels)."""
    if labels is None:
        rows = torch.arange(math.prod(shape), device=device)
        return rows, torch.zeros_like(rows)
    if labels.shape != shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the logits' leading dimensions are "
                         f"{tuple(shape)}; pass labels of the same [batch, seq] shape as the logits")
    labels = labels.to(device)
    if shift_labels:  # HF convention: labels[t] is the token at position t, predicted by logits[t - 1]
        labels = torch.cat([labels[..., 1:], torch.full_like(labels[..., :1], IGNORE_INDEX)], dim=-1)
    flat = labels.reshape(-1)
    rows = (flat != IGNORE_INDEX).nonzero().squeeze(-1)
    return rows, flat[rows].long()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor | None = None, *,
            divergence: str = "forward_kl", temperature: float = 1.0, t2_scaling: bool = False,
            alpha: float | None = None, beta: float | None = None, noise_std: float = 0.0,
            generator: torch.Generator | None = None, shift_labels: bool | None = None,
            shared_vocab: bool = False, chunk_size: int | None = None, invalid_teacher: str = "raise") -> KDLossOutput:
    """The KD loss summed over the selected tokens, and their count (see the module docstring for the formulas).

    student_logits [..., V_s], teacher_logits [..., V_t] (same leading shape; None only for cross_entropy);
    labels [...] int (tokens with labels == -100 are skipped; None: all tokens). labels[..., t] is the token
    that logits[..., t] predict; pass shift_labels=True for Hugging Face labels (= input ids, shifted inside
    the model); left unset (None) it means False, with a warning when the last position holds a label (which
    Hugging Face labels do and shifted ones cannot). alpha: skew of skew_*_kl (default 0.1) or alpha of `ab`; beta: of `jsd` (default 0.5) or `ab`.
    noise_std: std of Gaussian noise added to the teacher's logits (drawn per chunk from a seed taken from
    `generator`, or from torch's global generator). chunk_size: tokens per chunk (default: about 16M logits).
    invalid_teacher: "raise" (default) on a token whose teacher logits hold NaN or +inf (or are all -inf), or
    "skip" to leave such tokens out (not in count; counted in skipped). -inf logits are probability 0.
    Gradients flow to both inputs where they require grad. Returns KDLossOutput(sum, count, skipped).
    """
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 1:
        raise TypeError("student_logits must be a tensor [..., vocab]")
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor of token ids [...] (or None), got {type(labels).__name__}")
    _check_options(divergence, alpha, beta, temperature=temperature, noise_std=noise_std)
    if shift_labels is None:
        shift_labels = False
        if labels is not None and labels.dim() >= 1 and labels.shape[-1] > 1 and \
                bool((labels[..., -1] != IGNORE_INDEX).any()):
            warnings.warn("kd_loss: the last position holds a label, as Hugging Face labels (= input ids) do; pass "
                          "shift_labels=True for those, or shift_labels=False if labels[t] already is the token "
                          "logits[t] predict", UserWarning, stacklevel=2)
    fn = None if divergence == "cross_entropy" else _per_token_fn(divergence, alpha, beta)
    if fn is None:
        if labels is None:
            raise ValueError("divergence='cross_entropy' needs labels (the target token ids)")
        teacher_logits, vocab = None, student_logits.shape[-1]
    else:
        if not isinstance(teacher_logits, Tensor):
            raise TypeError(f"divergence={divergence!r} needs teacher_logits (a tensor [..., vocab])")
        if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
            raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                             f"{tuple(teacher_logits.shape)} must agree in all but the vocabulary dimension")
        vocab = _check_vocab(student_logits, teacher_logits, shared_vocab)
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    if not 0 <= noise_std < math.inf:
        raise ValueError(f"noise_std must be >= 0 and finite, got {noise_std}")
    if invalid_teacher not in ("raise", "skip"):
        raise ValueError(f"invalid_teacher must be 'raise' or 'skip', got {invalid_teacher!r}")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    lead = student_logits.shape[:-1]
    rows, targets = _positions(labels, lead, shift_labels, student_logits.device)
    if labels is not None and labels.numel() and rows.numel() == 0:
        warnings.warn("kd_loss: no token is selected (every label is -100), so the loss is 0 and trains nothing; "
                      "labels must hold the target token ids (-100 only where nothing is learned)", UserWarning,
                      stacklevel=2)
    if fn is None and targets.numel() and (targets.min() < 0 or targets.max() >= vocab):
        raise ValueError(f"labels must be token ids in [0, {vocab}) or -100, got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    seed = 0
    if noise_std > 0 and fn is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    plan = _ChunkPlan(fn, divergence, tuple(lead), vocab, float(temperature), float(noise_std), seed,
                      int(chunk_size))
    student_2d = student_logits.reshape(-1, student_logits.shape[-1])
    teacher_2d = None if teacher_logits is None else teacher_logits.reshape(-1, teacher_logits.shape[-1])
    skipped = 0
    if invalid_teacher == "skip" and teacher_2d is not None and rows.numel():
        valid = torch.cat([_valid_rows(teacher_2d.detach()[r, :vocab]) for r in rows.split(int(chunk_size))])
        skipped = int((~valid).sum())
        rows, targets = rows[valid], targets[valid]
    total = _ChunkedLoss.apply(student_2d, teacher_2d, rows, targets, plan)
    if t2_scaling and fn is not None:
        total = total * temperature**2
    device = student_logits.device
    return KDLossOutput(total, torch.tensor(rows.numel(), device=device), torch.tensor(skipped, device=device))


class KDLoss(nn.Module):
    """kd_loss as a module: KDLoss("jsd", beta=0.5, temperature=2.0)(student_logits, teacher_logits, labels)
    returns the mean over the selected tokens (or the sum / num_items_in_batch when that is given)."""

    def __init__(self, divergence: str = "forward_kl", *, temperature: float = 1.0, t2_scaling: bool = False,
                 alpha: float | None = None, beta: float | None = None, noise_std: float = 0.0,
                 generator: torch.Generator | None = None, shift_labels: bool | None = None,
                 shared_vocab: bool = False, chunk_size: int | None = None, invalid_teacher: str = "raise"):
        super().__init__()
        _check_options(divergence, alpha, beta, temperature=temperature, noise_std=noise_std)
        if divergence != "cross_entropy":
            _per_token_fn(divergence, alpha, beta)  # fail at construction, not at the first step
        self.divergence = divergence
        self.options = dict(temperature=temperature, t2_scaling=t2_scaling, alpha=alpha, beta=beta,
                            noise_std=noise_std, generator=generator, shift_labels=shift_labels,
                            shared_vocab=shared_vocab, chunk_size=chunk_size, invalid_teacher=invalid_teacher)
        self.skipped = 0  # tokens left out so far because the teacher's logits were invalid (invalid_teacher="skip")

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor | None = None,
                num_items_in_batch: int | Tensor | None = None) -> Tensor:
        out = kd_loss(student_logits, teacher_logits, labels, divergence=self.divergence, **self.options)
        self.skipped += int(out.skipped)
        return out.mean(num_items_in_batch)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.items()
                 if v not in (None, False, "raise") and k != "generator"}
        return f"{self.divergence!r}, " + ", ".join(f"{k}={v}" for k, v in shown.items())


class HiddenStateL2(nn.Module):
    """Squared L2 distance between student and teacher hidden states per token, with an optional learned
    projection of the student's states to the teacher's width (needed when the widths differ).

    forward(student_hidden [..., H_s], teacher_hidden [..., H_t], labels [...] | None) -> KDLossOutput with
    sum over selected tokens of ||W h_s + b - h_t||^2 / H_t (mean_over_width=True, i.e. the MSE per token) or
    of ||W h_s + b - h_t||^2, and the token count. The teacher's states are detached unless train_teacher=True.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, projection: bool | None = None,
                 mean_over_width: bool = True, train_teacher: bool = False):
        super().__init__()
        if projection is None:
            projection = student_dim != teacher_dim
        if not projection and student_dim != teacher_dim:
            raise ValueError(f"student width {student_dim} != teacher width {teacher_dim}: a learned projection "
                             f"is needed (projection=True)")
        self.projection = nn.Linear(student_dim, teacher_dim) if projection else None
        self.mean_over_width = mean_over_width
        self.train_teacher = train_teacher

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, labels: Tensor | None = None,
                shift_labels: bool = False) -> KDLossOutput:
        if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
            raise ValueError(f"student hidden {tuple(student_hidden.shape)} and teacher hidden "
                             f"{tuple(teacher_hidden.shape)} must agree in all but the last dimension")
        rows, _ = _positions(labels, student_hidden.shape[:-1], shift_labels, student_hidden.device)
        h_s = student_hidden.reshape(-1, student_hidden.shape[-1])[rows]
        h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])[rows]
        if not self.train_teacher:
            h_t = h_t.detach()
        if self.projection is not None:
            h_s = self.projection(h_s.to(self.projection.weight.dtype))
        diff = (h_s.float() - h_t.float()) if h_s.dtype != torch.float64 else h_s - h_t
        per_token = diff.square().sum(-1)
        if self.mean_over_width:
            per_token = per_token / h_t.shape[-1]
        return KDLossOutput(per_token.sum(), torch.tensor(rows.numel(), device=student_hidden.device))
