"""Data parallel: under DistributedDataParallel (2 CPU processes, gloo) the CIP gradients equal those of one
process on the same global batch. Each rank takes half of the batch; DDP averages the gradients, and CIP is a
mean over prompts, so the average of the two half-batch means is the global mean."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdi_fast.losses import CIP
from kdi_fast.models import tiny_causal_lm

WORLD = 2


def _global_batch():
    g = torch.Generator().manual_seed(0)
    prompts, targets = (5, 8, 6, 7), (3, 2, 4, 2)
    width = max(p + t for p, t in zip(prompts, targets))
    input_ids = torch.full((4, width), 2)
    labels = torch.full((4, width), -100)
    attention = torch.zeros((4, width), dtype=torch.long)
    for b, (p, t) in enumerate(zip(prompts, targets)):
        row = torch.randint(3, 128, (p + t,), generator=g)
        input_ids[b, :p + t], labels[b, p:p + t], attention[b, :p + t] = row, row[p:], 1
    return dict(input_ids=input_ids, attention_mask=attention, labels=labels)


def _model():
    return tiny_causal_lm("llama", vocab_size=128, hidden_size=32, seed=0).double().train()


def _cip_grads(model, batch, reuse):
    cip = CIP(3, seed=0)
    outputs = model(**batch) if reuse else None
    cip(model, batch, outputs, step=0).backward()


def _worker(rank, port, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        batch = {k: v.chunk(WORLD)[rank] for k, v in _global_batch().items()}
        grads = {}
        for reuse in (False, True):
            model.zero_grad()
            _cip_grads(model, batch, reuse)
            grads[reuse] = [p.grad.clone() for p in model.module.parameters()]
        if rank == 0:
            torch.save(grads, path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_cip_gradients_equal_one_process_on_the_global_batch(tmp_path):
    """Both with CIP running every masked forward and with CIP reusing the caller's (DDP) forward."""
    path = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(_free_port(), str(path)), nprocs=WORLD, join=True)
    distributed = torch.load(path)
    for reuse in (False, True):
        single = _model()
        _cip_grads(single, _global_batch(), reuse)
        assert len(distributed[reuse]) == len(list(single.parameters()))
        for got, want in zip(distributed[reuse], (p.grad for p in single.parameters())):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        assert any(float(g.abs().sum()) > 0 for g in distributed[reuse])
