"""The KD losses against their textbook formulas, written densely here over explicit probabilities in float64."""

import math

import pytest
import torch

from kdi_fast.losses import kd as kd_module
from kdi_fast.losses import HiddenStateL2, KDLoss, kd_loss

B, L, V = 2, 5, 11


def _logits(seed, shape=(B, L, V), scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def _labels(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :2] = -100  # a prompt part
    labels[1, -1] = -100  # padding
    return labels


# ---- dense textbook formulas, one token per row of probabilities p (teacher), q (student) ----

def kl(a, b):
    return (a * (a / b).log()).sum(-1)


def dense(name, p, q, alpha=None, beta=None):
    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return (beta * kl(p, m) + (1 - beta) * kl(q, m)) / (beta * (1 - beta))
    if name == "skew_forward_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if name == "skew_reverse_kl":
        return kl(q, alpha * q + (1 - alpha) * p)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "l1":
        return (p - q).abs().sum(-1)
    if name == "l2":
        return (p - q).square().sum(-1).sqrt()
    if name == "l2_squared":
        return (p - q).square().sum(-1)
    if name == "ab":  # Cichocki et al.'s general form, alpha, beta, alpha + beta != 0
        a, b = alpha, beta
        return -(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1) / (a * b)
    raise AssertionError(name)


def dense_loss(name, student, teacher, labels, T=1.0, **params):
    q = torch.softmax(student / T, -1)
    p = torch.softmax(teacher / T, -1)
    per_token = dense(name, p, q, **params)
    keep = labels != -100
    return per_token[keep].sum(), int(keep.sum())


CASES = [("forward_kl", {}), ("reverse_kl", {}), ("jsd", dict(beta=0.5)), ("jsd", dict(beta=0.1)),
         ("jsd", dict(beta=0.9)), ("skew_forward_kl", dict(alpha=0.1)), ("skew_reverse_kl", dict(alpha=0.3)),
         ("tvd", {}), ("l1", {}), ("l2", {}), ("l2_squared", {}), ("ab", dict(alpha=0.2, beta=0.7)),
         ("ab", dict(alpha=1.5, beta=-0.5)), ("ab", dict(alpha=-0.3, beta=0.8))]


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_divergence_matches_its_formula_and_gradient(name, params, temperature):
    student = _logits(1).requires_grad_()
    teacher = _logits(2).requires_grad_()
    labels = _labels()
    out = kd_loss(student, teacher, labels, divergence=name, temperature=temperature, chunk_size=3, **params)
    ref_sum, ref_count = dense_loss(name, student, teacher, labels, T=temperature, **params)
    assert int(out.count) == ref_count
    torch.testing.assert_close(out.sum, ref_sum, rtol=1e-10, atol=1e-12)
    g_out = torch.autograd.grad(out.sum, (student, teacher))
    g_ref = torch.autograd.grad(ref_sum, (student, teacher))
    for got, want in zip(g_out, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_cross_entropy_is_the_hard_label_loss():
    student = _logits(1).requires_grad_()
    labels = _labels()
    out = kd_loss(student, None, labels, divergence="cross_entropy", chunk_size=4)
    want = torch.nn.functional.cross_entropy(student.reshape(-1, V), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(out.sum, want)
    torch.testing.assert_close(torch.autograd.grad(out.sum, student)[0], torch.autograd.grad(want, student)[0])
    assert int(out.count) == int((labels != -100).sum())


def test_t2_scaling_multiplies_by_t_squared():
    student, teacher, labels = _logits(1), _logits(2), _labels()
    plain = kd_loss(student, teacher, labels, temperature=3.0)
    scaled = kd_loss(student, teacher, labels, temperature=3.0, t2_scaling=True)
    torch.testing.assert_close(scaled.sum, 9.0 * plain.sum)
    ref, _ = dense_loss("forward_kl", student, teacher, labels, T=3.0)
    torch.testing.assert_close(plain.sum, ref)


# ---- end points: beta of the JSD, alpha of the skewed KLs, alpha and beta of the AB divergence ----

def _end_point_values(name, **params):
    student, teacher, labels = _logits(1), _logits(2), _labels()
    return kd_loss(student, teacher, labels, divergence=name, **params).sum


def test_jsd_ends_are_the_kls_and_continuous():
    fkl = _end_point_values("forward_kl")
    rkl = _end_point_values("reverse_kl")
    torch.testing.assert_close(_end_point_values("jsd", beta=0.0), fkl)
    torch.testing.assert_close(_end_point_values("jsd", beta=1.0), rkl)
    # no jump at the ends: the scaled mixture form approaches the KLs linearly in beta
    for end, beta_of in ((fkl, lambda eps: eps), (rkl, lambda eps: 1 - eps)):
        gaps = [abs(float(_end_point_values("jsd", beta=beta_of(eps)) - end)) for eps in (1e-3, 1e-5)]
        assert gaps[1] < 1e-3 * float(end) and 50 < gaps[0] / gaps[1] < 200


def test_jsd_is_trl_gkd_rescaled():
    trl_gkd = pytest.importorskip("trl.experimental.gkd")
    student, teacher, labels = _logits(1), _logits(2), _labels()
    for beta in (0.2, 0.5, 0.8):
        ours = kd_loss(student, teacher, labels, divergence="jsd", beta=beta, temperature=2.0).sum
        theirs = trl_gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta,
                                                         temperature=2.0, reduction="sum")
        torch.testing.assert_close(ours * beta * (1 - beta), theirs)


def test_skewed_kls_at_alpha_zero_are_the_kls():
    torch.testing.assert_close(_end_point_values("skew_forward_kl", alpha=0.0), _end_point_values("forward_kl"))
    torch.testing.assert_close(_end_point_values("skew_reverse_kl", alpha=0.0), _end_point_values("reverse_kl"))
    near = _end_point_values("skew_forward_kl", alpha=1e-6)
    torch.testing.assert_close(near, _end_point_values("forward_kl"), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(_logits(1), _logits(2), divergence="skew_forward_kl", alpha=1.0)


def _ab_limit_dense(p, q, a, b):
    """The limits of Cichocki's AB divergence, written out on probabilities."""
    if a == 0 and b == 0:
        return 0.5 * (p.log() - q.log()).square().sum(-1)
    if b == 0:
        return (p**a * (p**a / q**a).log() - p**a + q**a).sum(-1) / a**2
    if a == 0:
        return (q**b * (q**b / p**b).log() - q**b + p**b).sum(-1) / b**2
    assert a + b == 0
    return ((q**a / p**a).log() + (q**a / p**a) ** -1 - 1).sum(-1) / a**2


@pytest.mark.parametrize("a,b", [(1.0, 0.0), (0.5, 0.0), (0.0, 1.0), (0.0, 0.4), (0.6, -0.6), (-0.5, 0.5),
                                 (0.0, 0.0)])
def test_ab_divergence_limits(a, b):
    student, teacher, labels = _logits(1), _logits(2), _labels()
    q, p = torch.softmax(student, -1), torch.softmax(teacher, -1)
    keep = labels != -100
    at_limit = kd_loss(student, teacher, labels, divergence="ab", alpha=a, beta=b).sum
    torch.testing.assert_close(at_limit, _ab_limit_dense(p, q, a, b)[keep].sum())
    # continuity: the general formula next to the limit approaches it
    da, db = (1e-4, 1e-4) if (a, b) == (0.0, 0.0) else ((0.0, 1e-6) if b == 0 or a + b == 0 else (1e-6, 0.0))
    if (a, b) == (0.0, 0.0):
        da, db = 1e-4, 2e-4
    near = kd_loss(student, teacher, labels, divergence="ab", alpha=a + da, beta=b + db).sum
    torch.testing.assert_close(near, at_limit, rtol=2e-3, atol=0)


def test_ab_special_cases_are_the_kls():
    torch.testing.assert_close(_end_point_values("ab", alpha=1.0, beta=0.0), _end_point_values("forward_kl"))
    torch.testing.assert_close(_end_point_values("ab", alpha=0.0, beta=1.0), _end_point_values("reverse_kl"))
    with pytest.raises(ValueError, match="alpha and beta"):
        kd_loss(_logits(1), _logits(2), divergence="ab", alpha=0.5)


# ---- selection, normalisation, chunking, vocabularies, noise, dtypes ----

def test_shift_labels_follows_hugging_face():
    student, teacher = _logits(1), _logits(2)
    hf_labels = _labels()
    shifted = torch.cat([hf_labels[:, 1:], torch.full((B, 1), -100)], dim=1)
    a = kd_loss(student, teacher, hf_labels, shift_labels=True)
    b = kd_loss(student, teacher, shifted)
    torch.testing.assert_close(a.sum, b.sum)
    assert int(a.count) == int((hf_labels[:, 1:] != -100).sum())
    ce = kd_loss(student, None, hf_labels, divergence="cross_entropy", shift_labels=True)
    hf = torch.nn.functional.cross_entropy(student[:, :-1].reshape(-1, V), hf_labels[:, 1:].reshape(-1),
                                           reduction="sum")
    torch.testing.assert_close(ce.sum, hf)


def test_no_labels_means_every_token():
    student, teacher = _logits(1), _logits(2)
    out = kd_loss(student, teacher)
    assert int(out.count) == B * L
    torch.testing.assert_close(out.sum, dense_loss("forward_kl", student, teacher, torch.zeros(B, L))[0])


def test_mean_honours_num_items_in_batch():
    student, teacher, labels = _logits(1), _logits(2), _labels()
    out = kd_loss(student, teacher, labels)
    torch.testing.assert_close(out.mean(), out.sum / int(out.count))
    torch.testing.assert_close(out.mean(num_items_in_batch=40), out.sum / 40)
    torch.testing.assert_close(out.mean(torch.tensor(40)), out.sum / 40)
    module = KDLoss("forward_kl")
    torch.testing.assert_close(module(student, teacher, labels, num_items_in_batch=40), out.sum / 40)
    torch.testing.assert_close(module(student, teacher, labels), out.sum / int(out.count))
    empty = kd_loss(student, teacher, torch.full((B, L), -100))
    assert int(empty.count) == 0 and float(empty.mean()) == 0.0


def test_chunks_never_exceed_chunk_size_forward_and_backward(monkeypatch):
    seen = []
    original = kd_module._chunk_loss

    def spy(student, teacher, targets, plan, index):
        seen.append(student.shape[0])
        return original(student, teacher, targets, plan, index)

    monkeypatch.setattr(kd_module, "_chunk_loss", spy)
    student = _logits(1, shape=(3, 40, V)).requires_grad_()
    teacher = _logits(2, shape=(3, 40, V))
    out = kd_loss(student, teacher, divergence="jsd", chunk_size=7)
    forward_calls = len(seen)
    out.sum.backward()
    assert max(seen) <= 7 and forward_calls == math.ceil(120 / 7) and len(seen) == 2 * forward_calls
    whole = kd_loss(student.detach(), teacher, divergence="jsd", chunk_size=1000).sum
    torch.testing.assert_close(out.sum, whole)


def test_different_vocabularies_raise_unless_shared_part_is_asked_for():
    student, teacher = _logits(1, shape=(B, L, V)), _logits(2, shape=(B, L, V + 4))
    with pytest.raises(ValueError, match="shared_vocab=True"):
        kd_loss(student, teacher)
    out = kd_loss(student, teacher, shared_vocab=True)
    want = dense_loss("forward_kl", student, teacher[..., :V], torch.zeros(B, L))[0]
    torch.testing.assert_close(out.sum, want)
    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    kd_loss(s, t, shared_vocab=True, divergence="jsd").sum.backward()
    assert torch.all(t.grad[..., V:] == 0) and t.grad[..., :V].abs().sum() > 0


def test_teacher_noise_is_seeded_consistent_and_of_the_right_size():
    student, teacher, labels = _logits(1), _logits(2), _labels()
    clean = kd_loss(student, teacher, labels).sum

    def noisy(seed, **kw):
        return kd_loss(student, teacher, labels, noise_std=0.5, generator=torch.Generator().manual_seed(seed), **kw)

    torch.testing.assert_close(noisy(0).sum, noisy(0).sum)
    assert float(noisy(0).sum) != float(noisy(1).sum) != float(clean)
    torch.testing.assert_close(kd_loss(student, teacher, labels, noise_std=0.0).sum, clean)
    # the backward replays the forward's noise: gradients agree with finite differences
    torch.autograd.gradcheck(
        lambda x: kd_loss(x, teacher, labels, divergence="jsd", noise_std=0.5, chunk_size=3,
                          generator=torch.Generator().manual_seed(3)).sum,
        (student.clone().requires_grad_(),))
    # size: KL(softmax(sigma * eps) || uniform) ~ sigma^2 / 2 for small sigma and a large vocabulary
    sigma, vocab = 0.1, 1 << 14
    zeros = torch.zeros(4, vocab, dtype=torch.float64)
    got = kd_loss(zeros, zeros, noise_std=sigma, generator=torch.Generator().manual_seed(0)).mean()
    assert abs(float(got) - sigma**2 / 2) < 0.1 * sigma**2 / 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_compute_in_float32(dtype):
    student = _logits(1, dtype=dtype).requires_grad_()
    teacher = _logits(2, dtype=dtype)
    labels = _labels()
    out = kd_loss(student, teacher, labels, divergence="jsd", chunk_size=4)
    assert out.sum.dtype == torch.float32
    out.sum.backward()
    assert student.grad.dtype == dtype
    ref = dense_loss("jsd", student.detach().double(), teacher.double(), labels, beta=0.5)[0]
    torch.testing.assert_close(out.sum.double(), ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs_say_what_to_do():
    student, teacher = _logits(1), _logits(2)
    with pytest.raises(ValueError, match="unknown divergence"):
        kd_loss(student, teacher, divergence="kl")
    with pytest.raises(ValueError, match="beta"):
        kd_loss(student, teacher, divergence="jsd", beta=1.5)
    with pytest.raises(ValueError, match="labels have shape"):
        kd_loss(student, teacher, torch.zeros(B, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="needs labels"):
        kd_loss(student, None, divergence="cross_entropy")
    with pytest.raises(TypeError, match="teacher_logits"):
        kd_loss(student, None)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="unknown divergence"):
        KDLoss("nope")


def test_hidden_state_l2_with_and_without_projection():
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(B, L, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(B, L, 6, generator=g, dtype=torch.float64)
    labels = _labels()
    keep = labels != -100
    same = HiddenStateL2(6, 6)
    assert same.projection is None
    out = same(hs, ht, labels)
    torch.testing.assert_close(out.sum, ((hs - ht).square().sum(-1) / 6)[keep].sum())
    assert int(out.count) == int(keep.sum())
    wide = torch.randn(B, L, 9, generator=g, dtype=torch.float64)
    projected = HiddenStateL2(6, 9).double()
    w, b = projected.projection.weight, projected.projection.bias
    out = projected(hs, wide, labels)
    torch.testing.assert_close(out.sum, ((hs @ w.T + b - wide).square().sum(-1) / 9)[keep].sum())
    out.sum.backward()
    assert w.grad.abs().sum() > 0 and hs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projection"):
        HiddenStateL2(6, 9, projection=False)


# ---- non-finite logits: -inf is probability 0 (a masked vocabulary); NaN and +inf are errors ----

_MASKED = [3, 7]  # vocabulary ids the student cannot produce (logit -inf)
_FINITE_CASES = [("reverse_kl", {}), ("jsd", dict(beta=0.5)), ("jsd", dict(beta=0.9)),
                 ("skew_reverse_kl", dict(alpha=0.1)), ("skew_forward_kl", dict(alpha=0.1)), ("tvd", {}),
                 ("l1", {}), ("l2_squared", {}), ("ab", dict(alpha=0.2, beta=0.7))]


def _xkl(a, b):
    """KL(A||B) on probabilities with 0 log 0 = 0 (and +inf where A > 0 = B)."""
    return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(-1)


def _dense_zero_safe(name, p, q, alpha=None, beta=None):
    if name == "reverse_kl":
        return _xkl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return (beta * _xkl(p, m) + (1 - beta) * _xkl(q, m)) / (beta * (1 - beta))
    if name == "skew_reverse_kl":
        return _xkl(q, alpha * q + (1 - alpha) * p)
    if name == "skew_forward_kl":
        return _xkl(p, alpha * p + (1 - alpha) * q)
    return dense(name, p, q, alpha=alpha, beta=beta)


@pytest.mark.parametrize("name,params", _FINITE_CASES, ids=[f"{n}-{p}" for n, p in _FINITE_CASES])
def test_minus_inf_student_logits_are_zero_probability_with_finite_gradients(name, params):
    base = _logits(1)
    student = base.clone()
    student[..., _MASKED] = -math.inf
    student.requires_grad_()
    teacher, labels = _logits(2), _labels()
    out = kd_loss(student, teacher, labels, divergence=name, chunk_size=3, **params)
    grad = torch.autograd.grad(out.sum, student)[0]
    assert torch.isfinite(out.sum) and torch.isfinite(grad).all()
    assert torch.all(grad[..., _MASKED] == 0)
    # reference: the dense formula with the student's probabilities exactly 0 at the masked ids (constants, so
    # autograd sees only the other ids) and the softmax over the other ids
    kept = [v for v in range(V) if v not in _MASKED]
    finite = base[..., kept].clone().requires_grad_()
    q = torch.zeros_like(base)
    q[..., kept] = torch.softmax(finite, -1)
    p = torch.softmax(teacher, -1)
    keep = labels != -100
    want = _dense_zero_safe(name, p, q, **params)[keep].sum()
    torch.testing.assert_close(out.sum, want, rtol=1e-10, atol=1e-12)
    want_grad = torch.autograd.grad(want, finite)[0]
    torch.testing.assert_close(grad[..., kept], want_grad, rtol=1e-8, atol=1e-12)


def test_forward_kl_with_a_masked_vocabulary_on_both_sides_is_finite():
    student, teacher, labels = _logits(1), _logits(2), _labels()
    student[..., _MASKED] = -math.inf
    teacher[..., _MASKED] = -math.inf
    student.requires_grad_()
    out = kd_loss(student, teacher, labels, chunk_size=3)
    grad = torch.autograd.grad(out.sum, student)[0]
    assert torch.isfinite(out.sum) and torch.isfinite(grad).all()
    keep = [v for v in range(V) if v not in _MASKED]
    want = dense_loss("forward_kl", student[..., keep], teacher[..., keep], labels)[0]
    torch.testing.assert_close(out.sum, want)


def test_forward_kl_where_the_student_excludes_a_teacher_token_is_an_error_naming_it():
    student, teacher = _logits(1), _logits(2)
    student[1, 3, 7] = -math.inf
    with pytest.raises(ValueError, match=r"forward_kl is \+inf at token \(1, 3\).*vocabulary id 7"):
        kd_loss(student, teacher)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_nan_or_plus_inf_teacher_logits_raise_naming_the_token(name, bad):
    student, teacher = _logits(1), _logits(2)
    teacher[0, 4, 2] = bad
    with pytest.raises(ValueError, match=r"teacher logits of token \(0, 4\)"):
        kd_loss(student, teacher, divergence=name, chunk_size=3)


def test_nan_student_logits_raise():
    student, teacher = _logits(1), _logits(2)
    student[1, 0, 5] = math.nan
    with pytest.raises(ValueError, match=r"student logits of token \(1, 0\)"):
        kd_loss(student, teacher, divergence="reverse_kl")


def test_bad_teacher_tokens_can_be_skipped_and_counted():
    student, teacher, labels = _logits(1).requires_grad_(), _logits(2), _labels()
    teacher[0, 3, 1] = math.nan
    teacher[1, 1, :] = -math.inf  # a teacher that gives no token any probability
    out = kd_loss(student, teacher, labels, invalid_teacher="skip", chunk_size=2)
    keep = labels != -100
    keep[0, 3] = keep[1, 1] = False
    ref_sum, ref_count = dense_loss("forward_kl", student, teacher, torch.where(keep, labels, -100))
    assert int(out.count) == ref_count == int((labels != -100).sum()) - 2 and int(out.skipped) == 2
    torch.testing.assert_close(out.sum, ref_sum)
    grad = torch.autograd.grad(out.sum, student)[0]
    assert torch.isfinite(grad).all() and torch.all(grad[0, 3] == 0) and torch.all(grad[1, 1] == 0)
    with pytest.raises(ValueError, match="invalid_teacher"):
        kd_loss(student, teacher, labels, invalid_teacher="ignore")
