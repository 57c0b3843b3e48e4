"""Benchmark of the ops behind the Triton kernels: ours against autograd through the plain-torch twin, one run.

    python benchmarks/bench_kernels.py [--quick]

  target_logprobs    forward + backward of log_softmax(h W^T)[y] at the SmolLM2-135M head shape
                     (H=576, V=49152; N rows = masked inputs x target tokens), chunk 256:
                       ours       kdi_fast.ops.target_logprobs (recomputing backward; triton on CUDA, torch on CPU)
                       reference  autograd through kdi_fast.reference.target_logprobs (the same chunks)
                     time, and peak memory allocated by torch during the call (CPU: torch.profiler memory events;
                     CUDA: max_memory_allocated), against the size of one [N, V] float32 tensor.
  masked_embeddings  forward + backward of the masked batch, M=1024 masks of T=64 tokens, H=576:
                       ours vs autograd through kdi_fast.reference.masked_embeddings.
  mobius (CUDA only) the Triton butterfly in place at n=16..24 against a copy of the same buffer (memory bound).

Triton kernels are timed only on a GPU: on a CPU they run in the interpreter, a test vehicle, so there the
`ours` rows measure the torch backend of the same autograd.Function. Writes benchmarks/results/kernels.json
and kernels.csv (atomically), with the machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdi_fast import reference  # noqa: E402
from kdi_fast.ops import masked_embeddings, mobius, target_logprobs  # noqa: E402
from _common import machine, results_dir, write_text_atomic  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated by torch while fn() runs, above what was allocated before."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def bench_target_logprobs(device: torch.device, rows: int, repeats: int) -> list[dict]:
    H, V, chunk = 576, 49152, 256
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, H, generator=g).to(device).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(device).requires_grad_(True)
    targets = torch.randint(0, V, (rows,), generator=g).to(device)

    def ours():
        grads = torch.autograd.grad(target_logprobs(hidden, weight, targets, chunk_size=chunk).sum(),
                                    (hidden, weight))
        del grads

    def ref():
        grads = torch.autograd.grad(reference.target_logprobs(hidden, weight, targets, chunk_size=chunk).sum(),
                                    (hidden, weight))
        del grads

    out = []
    for method, fn in (("ours", ours), ("reference", ref)):
        out.append({"op": "target_logprobs", "method": method, "shape": f"N={rows} H={H} V={V} chunk={chunk}",
                    "seconds": timed(fn, device, repeats), "peak_mib": peak_bytes(fn, device) / 2**20,
                    "n_by_v_mib": rows * V * 4 / 2**20})
    return out


def bench_masked_embeddings(device: torch.device, masks: int, repeats: int) -> list[dict]:
    T, H, players = 64, 576, 10
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(T, H, generator=g).to(device).requires_grad_(True)
    baseline = torch.randn(H, generator=g).to(device).requires_grad_(True)
    player = torch.randint(-1, players, (T,), generator=g).to(device)
    mask_bits = torch.arange(masks, device=device) % (1 << players)
    grad = torch.randn(masks, T, H, generator=g).to(device)

    def run(fn):
        def go():
            grads = torch.autograd.grad(fn(embeds, player, mask_bits, baseline), (embeds, baseline), grad)
            del grads
        return go

    out = []
    for method, fn in (("ours", masked_embeddings), ("reference", reference.masked_embeddings)):
        go = run(fn)
        out.append({"op": "masked_embeddings", "method": method, "shape": f"M={masks} T={T} H={H}",
                    "seconds": timed(go, device, repeats), "peak_mib": peak_bytes(go, device) / 2**20,
                    "n_by_v_mib": None})
    return out


def bench_mobius_cuda(device: torch.device, repeats: int) -> list[dict]:
    out = []
    for n in (16, 20, 24):
        x = torch.randn(max(1, (1 << 24) >> n), 1 << n, device=device)
        dst = torch.empty_like(x)
        for method, fn in (("triton", lambda: mobius(x, out=x, backend="triton")), ("copy", lambda: dst.copy_(x))):
            out.append({"op": "mobius", "method": method, "shape": f"{x.shape[0]} x 2^{n} float32",
                        "seconds": timed(fn, device, repeats), "peak_mib": None, "n_by_v_mib": None})
    return out






def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 2 if args.quick else 3
    rows = bench_target_logprobs(device, 256 if args.quick else 1024, repeats)
    rows += bench_masked_embeddings(device, 256 if args.quick else 1024, repeats)
    if device.type == "cuda":
        rows += bench_mobius_cuda(device, repeats)
    out = results_dir(args.quick)
    result = {"machine": machine(), "device": str(device), "quick": args.quick, "rows": rows}
    write_text_atomic(out / "kernels.json", json.dumps(result, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "kernels.csv", buf.getvalue())
    print(f"{'op':<18} {'method':<10} {'shape':<34} {'ms':>9} {'peak MiB':>9}")
    for r in rows:
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        print(f"{r['op']:<18} {r['method']:<10} {r['shape']:<34} {r['seconds'] * 1e3:>9.1f} {peak:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
