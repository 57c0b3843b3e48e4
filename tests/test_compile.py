"""The ops as torch.library custom ops: opcheck (schema, fake impl, autograd registration, AOT dispatch), and
torch.compile with inductor on CPU: a fullgraph CIP-like step and CIP with a compiled student give eager's value
and gradient. Compiles are few and tiny (inductor takes 30-90 s on the shared CPU)."""

import pytest
import torch
from torch.library import opcheck

import kdi_fast
from kdi_fast import ops
from kdi_fast.losses import CIP
from kdi_fast.models import tiny_causal_lm

from test_cip import VOCAB, make_batch

OP_NAMES = ("mobius", "zeta", "mobius_transpose", "zeta_transpose", "target_logprobs", "target_logprobs_backward",
            "masked_embeddings", "masked_embeddings_backward")


def test_every_op_is_registered_under_kdi_fast():
    for name in OP_NAMES:
        assert hasattr(torch.ops.kdi_fast, name), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_order", [None, 2])
def test_opcheck_transforms(dtype, max_order):
    n = 4
    length = ops.num_subsets(n, max_order)
    for name in ("mobius", "zeta", "mobius_transpose", "zeta_transpose"):
        op = getattr(torch.ops.kdi_fast, name)
        for shape in ((length,), (3, length)):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            opcheck(op, (x, max_order, None))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_target_logprobs(bias):
    hidden = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, 11, (7,))
    opcheck(torch.ops.kdi_fast.target_logprobs, (hidden, weight, targets, b, 3, torch.float64, None))


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("baseline_shape", ["H", "TH"])
def test_opcheck_masked_embeddings(batched, baseline_shape):
    B, T, H = (2, 5, 4) if batched else (None, 5, 4)
    lead = (B,) if batched else ()
    embeds = torch.randn(*lead, T, H, dtype=torch.float64, requires_grad=True)
    player = torch.randint(-1, 3, (*lead, T))
    masks = torch.arange(8)
    baseline = torch.randn(*((H,) if baseline_shape == "H" else (T, H)), dtype=torch.float64, requires_grad=True)
    opcheck(torch.ops.kdi_fast.masked_embeddings, (embeds, baseline, player, masks, None))


def test_value_checks_run_inside_the_ops():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ops.target_logprobs(torch.randn(2, 4), torch.randn(5, 4), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="player_of_token holds 63"):
        ops.masked_embeddings(torch.randn(3, 4), torch.tensor([0, 63, -1]), torch.arange(2), torch.zeros(4))


def _penalty(embeds, player, masks, baseline, layer, head, positions, targets, complex_mask):
    """A CIP penalty written with the four ops: masked inputs -> a tanh layer -> log p(y*) -> v -> I."""
    x = ops.masked_embeddings(embeds, player, masks, baseline)  # [M, T, H]
    hidden = torch.tanh(x @ layer)
    rows = hidden[:, positions - 1].reshape(-1, hidden.shape[-1])
    lp = ops.target_logprobs(rows, head, targets.repeat(masks.numel())).view(masks.numel(), -1).mean(-1)
    values = lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-7))
    inter = kdi_fast.mobius(values)
    return inter.abs()[complex_mask].mean() + 1e-3 * kdi_fast.zeta(inter).square().sum()


def test_fullgraph_compile_of_the_ops_matches_eager():
    """torch.compile(fullgraph=True) fails at any graph break: all four ops compile, forward and backward
    (aot_eager: the fake impls and the registered autograd through AOTAutograd, without inductor's codegen)."""
    g = torch.Generator().manual_seed(0)
    T, H, V = 6, 8, 13
    leaves = [torch.randn(T, H, generator=g), torch.randn(H, generator=g), torch.randn(H, H, generator=g) / 3,
              torch.randn(V, H, generator=g)]
    embeds, baseline, layer, head = [t.requires_grad_() for t in leaves]
    args = dict(player=torch.tensor([0, 0, 1, 2, -1, -1]), masks=torch.arange(8), positions=torch.tensor([4, 5]),
                targets=torch.tensor([7, 9]), complex_mask=torch.tensor([bin(m).count("1") >= 2 for m in range(8)]))

    def run(fn):
        loss = fn(embeds=embeds, baseline=baseline, layer=layer, head=head, **args)
        return loss.detach(), torch.autograd.grad(loss, [embeds, baseline, layer, head])

    want_loss, want_grads = run(_penalty)
    torch._dynamo.reset()
    got_loss, got_grads = run(torch.compile(_penalty, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got_loss, want_loss)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want)


def test_cip_on_a_compiled_student_matches_eager_without_breaks_at_the_ops():
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=16, num_layers=1, seed=4)
    batch = make_batch(prompt_lengths=(5, 4), target_lengths=(2, 3))
    cip = CIP(3, seed=1)
    params = list(model.parameters())
    want = cip(model, batch, step=0)
    want_grads = torch.autograd.grad(want, params)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor")
    got = cip(compiled, batch, step=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the student ran compiled
    got_grads = torch.autograd.grad(got, params)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5)

    # the whole CIP call traced by dynamo: its planning (word grouping, python loops over prompts) may break
    # the graph, but never one of the ops (before they were custom ops each broke it at a raw data pointer)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda: cip(model, batch, step=0))()
    ours = [str(r) for r in explanation.break_reasons
            if any(name in str(r) for name in OP_NAMES + ("data_ptr", "kdi_fast/ops", "kdi_fast/_backend"))]
    assert not ours, ours
