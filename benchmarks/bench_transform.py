"""Benchmark of the Moebius transform: kdi_fast's C++ kernel against the anchors, measured in one run.

    python benchmarks/bench_transform.py [--quick]

Methods, on rows of 2^n values (float32 unless said), batches of 1..256 rows, at most 2^28 values in all:
  cpp          kdi_fast.mobius(x, out=x) (in place, alternating with zeta so the values stay bounded)
  numpy        a numpy butterfly written here (one vectorised in-place update per bit): the anchor
  torch        the plain-torch butterfly, kdi_fast.reference.butterfly_ (the `torch` backend)
  dense        the dense-matrix method: x @ M^T with the 2^n x 2^n Moebius matrix (n <= 13; building M is
               not timed)
  shapiq       shapiq's ExactComputer(...).moebius_transform, one row, float64, one run each (n <= 16)
  copy         dst.copy_(x) into a preallocated buffer of the same size: the memory-bound anchor
Slow methods are skipped where they would take minutes (numpy/torch above 2^26 values); the JSON says so.

Writes benchmarks/results/transform.json, transform.csv and transform.png (atomically), with the machine.
The four targets of issue 2 are measured with the two sides interleaved (ABAB...) and reported as ratios.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import kdi_fast
from _common import machine, results_dir, write_text_atomic
from kdi_fast import _backend
from kdi_fast._io import atomic_write
from kdi_fast.reference import butterfly_

MAX_VALUES = 1 << 28       # cap on batch * 2^n
MAX_SLOW_VALUES = 1 << 26  # numpy / torch butterflies above this would take minutes over the grid
MAX_DENSE_N = 13           # the 2^n x 2^n matrix: 256 MiB in float32 at n = 13
MAX_SHAPIQ_N = 16          # pure Python, 3^n steps: about half a minute at n = 16


# ----------------------------------------------------------------------------------------------- methods


def numpy_butterfly_(a: np.ndarray, n: int, sign: int = -1) -> np.ndarray:
    """In-place subset butterfly over the last axis of a C-contiguous [rows, 2^n] array (the anchor)."""
    rows = a.shape[0]
    for i in range(n):
        view = a.reshape(rows, 1 << (n - i - 1), 2, 1 << i)
        if sign < 0:
            view[:, :, 1] -= view[:, :, 0]
        else:
            view[:, :, 1] += view[:, :, 0]
    return a


def moebius_matrix(n: int, dtype: torch.dtype) -> torch.Tensor:
    """M[S, S'] = (-1)^{|S| - |S'|} if S' is a subset of S, else 0 (the dense-matrix method's matrix)."""
    masks = torch.arange(1 << n)
    subset = (masks[None, :] & ~masks[:, None]) == 0  # [S, S']
    popcount = torch.zeros(1 << n, dtype=torch.int64)
    for i in range(n):
        popcount += (masks >> i) & 1
    parity = (popcount[:, None] - popcount[None, :]) % 2
    return torch.where(subset, 1.0 - 2.0 * parity, 0.0).to(dtype)


def shapiq_moebius(v: np.ndarray, n: int) -> tuple[float, np.ndarray] | None:
    """shapiq's exact Moebius transform of one row v (indexed by bit mask): (seconds, I by bit mask)."""
    try:
        from shapiq import ExactComputer
    except ImportError:
        return None
    weights = 1 << np.arange(n)

    def game(coalitions: np.ndarray) -> np.ndarray:  # [coalitions, n] bool -> values
        return v[coalitions.astype(np.int64) @ weights]

    computer = ExactComputer(game, n_players=n, evaluate_game=True)  # evaluating the game is not timed
    start = time.perf_counter()
    result = computer.moebius_transform
    seconds = time.perf_counter() - start
    out = np.zeros(1 << n)
    for players, position in result.interaction_lookup.items():
        out[sum(1 << p for p in players)] = result.values[position]
    return seconds, out


# ----------------------------------------------------------------------------------------------- timing


def measure(fn, min_repeats: int = 5, min_seconds: float = 0.3, max_seconds: float = 3.0) -> tuple[float, int]:
    """Median wall time of fn() over repeats (after one warm-up call): (seconds, repeats)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > max_seconds:
        return first, 1
    times: list[float] = []
    while len(times) < min_repeats or (sum(times) < min_seconds and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) > max_seconds and len(times) >= 3:
            break
    return statistics.median(times), len(times)


def interleaved(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median times of several functions measured in turn (A B A B ...), so load changes hit all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class Alternating:
    """Calls step(sign) with sign = -1 (Moebius), then +1 (zeta), ...: repeated in-place runs of an anchor keep
    their values bounded instead of overflowing to inf/NaN."""

    def __init__(self, step):
        self.step, self.sign = step, -1

    def __call__(self) -> None:
        self.step(self.sign)
        self.sign = -self.sign


class InPlace:
    """kdi_fast.mobius(x, out=x), then zeta(x, out=x) on the next call: the values stay where they started."""

    def __init__(self, x: torch.Tensor):
        self.x, self.forward = x, True

    def __call__(self) -> None:
        (kdi_fast.mobius if self.forward else kdi_fast.zeta)(self.x, out=self.x)
        self.forward = not self.forward


# ----------------------------------------------------------------------------------------------- the run




def versions() -> dict:
    """numpy's and shapiq's versions (the anchors)."""
    found = {"numpy": np.__version__}
    try:
        import shapiq

        found["shapiq"] = shapiq.__version__
    except ImportError:
        pass
    return found


def grid(quick: bool) -> list[tuple[int, int]]:
    ns = [8, 12, 16, 20, 24] if quick else list(range(8, 25))
    batches = [1, 64] if quick else [1, 4, 16, 64, 256]
    cap = (1 << 24) if quick else MAX_VALUES
    return [(n, b) for n in ns for b in batches if b << n <= cap]


def run_grid(quick: bool, log) -> tuple[list[dict], list[str]]:
    records, skipped = [], []
    matrices: dict[int, torch.Tensor] = {}
    for n, batch in grid(quick):
        values = batch << n
        x = torch.randn(batch, 1 << n)
        dst = torch.empty_like(x)
        methods = {"cpp": InPlace(x), "copy": lambda: dst.copy_(x)}
        if values <= MAX_SLOW_VALUES:
            a = x.numpy().copy()
            t = x.clone()
            methods["numpy"] = Alternating(lambda sign: numpy_butterfly_(a, n, sign))
            methods["torch"] = Alternating(lambda sign: butterfly_(t, n, sign, False))
        else:
            skipped.append(f"numpy, torch at n={n}, batch={batch} ({values:,} values > {MAX_SLOW_VALUES:,})")
        if n <= (12 if quick else MAX_DENSE_N):
            if n not in matrices:
                matrices = {n: moebius_matrix(n, torch.float32).T.contiguous()}
            mt = matrices[n]
            methods["dense"] = lambda: torch.matmul(x, mt, out=dst)
        elif batch == 1:
            skipped.append(f"dense at n={n} (the {1 << n} x {1 << n} matrix needs {(4 << (2 * n)) / 2**30:g} GiB)")
        for name, fn in methods.items():
            seconds, repeats = measure(fn)
            records.append({"method": name, "n": n, "batch": batch, "dtype": "float32", "seconds": seconds,
                            "repeats": repeats, "values": values})
        here = {r["method"]: r["seconds"] for r in records if r["n"] == n and r["batch"] == batch}
        log(f"n={n:2d} batch={batch:3d}: " + "  ".join(f"{k} {s * 1e3:.3g} ms" for k, s in here.items())
            + f"  (cpp / copy {here['cpp'] / here['copy']:.2f})")
    return records, skipped


def run_shapiq(quick: bool, log) -> list[dict]:
    records = []
    for n in ([8, 10, 12] if quick else [8, 10, 12, 14, 16]):
        v = torch.randn(1, 1 << n, dtype=torch.float64)
        got = shapiq_moebius(v[0].numpy(), n)
        if got is None:
            log("shapiq is not installed: skipped (pip install shapiq)")
            return records
        seconds, values = got
        # the same numbers, or the comparison means nothing
        np.testing.assert_allclose(values, kdi_fast.mobius(v)[0].numpy(), rtol=1e-9, atol=1e-9)
        ours, repeats = measure(InPlace(v.clone()))
        records += [{"method": "shapiq", "n": n, "batch": 1, "dtype": "float64", "seconds": seconds, "repeats": 1,
                     "values": 1 << n},
                    {"method": "cpp", "n": n, "batch": 1, "dtype": "float64", "seconds": ours, "repeats": repeats,
                     "values": 1 << n}]
        log(f"shapiq n={n}: {seconds:.3g} s, cpp {ours * 1e6:.3g} us: {seconds / ours:,.0f}x")
    return records


def run_targets(quick: bool, shapiq_records: list[dict], log) -> list[dict]:
    repeats = 7 if quick else 21
    targets = []

    x = torch.randn(64, 1 << 16, dtype=torch.float64)
    a = x.numpy().copy()
    numpy_anchor = Alternating(lambda sign: numpy_butterfly_(a, 16, sign))
    t = interleaved({"cpp": InPlace(x), "numpy": numpy_anchor}, repeats)
    targets.append({"target": "batch 64, n=16, float64: >= 10x faster than the numpy butterfly",
                    "measured": t["numpy"] / t["cpp"], "goal": 10.0, "higher_is_better": True,
                    "detail": {"cpp_ms": t["cpp"] * 1e3, "numpy_ms": t["numpy"] * 1e3}})

    x = torch.randn(1, 1 << 24)
    dst = torch.empty_like(x)
    t = interleaved({"cpp": InPlace(x), "copy": lambda: dst.copy_(x)}, repeats)
    targets.append({"target": "n=24, float32, in place: within 3x of a plain copy of the buffer",
                    "measured": t["cpp"] / t["copy"], "goal": 3.0, "higher_is_better": False,
                    "detail": {"cpp_ms": t["cpp"] * 1e3, "copy_ms": t["copy"] * 1e3}})

    at16 = {r["method"]: r["seconds"] for r in shapiq_records if r["n"] == 16}
    if "shapiq" in at16:
        targets.append({"target": "n=16: >= 10,000x faster than shapiq's exact Moebius",
                        "measured": at16["shapiq"] / at16["cpp"], "goal": 10_000.0, "higher_is_better": True,
                        "detail": {"cpp_ms": at16["cpp"] * 1e3, "shapiq_s": at16["shapiq"]}})
    else:
        log("the shapiq target (n=16) is not measured in --quick runs or without shapiq")

    for batch, n, dtype in [(64, 16, torch.float64), (1, 24, torch.float32)]:
        v = torch.randn(batch, 1 << n, dtype=dtype)
        w = v.clone().requires_grad_(True)
        grad = torch.randn_like(v)

        def forward_backward():
            w.grad = None
            kdi_fast.mobius(w).backward(grad)

        t = interleaved({"forward": lambda: kdi_fast.mobius(v), "forward_backward": forward_backward}, repeats)
        dt = str(dtype).removeprefix("torch.")
        targets.append({"target": f"batch {batch}, n={n}, {dt}: forward + backward within 2.5x of forward",
                        "measured": t["forward_backward"] / t["forward"], "goal": 2.5, "higher_is_better": False,
                        "detail": {"forward_ms": t["forward"] * 1e3, "forward_backward_ms": t["forward_backward"] * 1e3}})
    for tg in targets:
        tg["met"] = tg["measured"] >= tg["goal"] if tg["higher_is_better"] else tg["measured"] <= tg["goal"]
        log(f"{'MET ' if tg['met'] else 'MISS'} {tg['target']}: {tg['measured']:,.2f}x")
    return targets


# ----------------------------------------------------------------------------------------------- output




def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in records if r["dtype"] == "float32" and r["batch"] in (1, 64)})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for method in ["cpp", "copy", "numpy", "torch", "dense"]:
            pts = sorted((r["n"], r["seconds"]) for r in records
                         if r["method"] == method and r["batch"] == batch and r["dtype"] == "float32")
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=method)
        pts = sorted((r["n"], r["seconds"]) for r in records if r["method"] == "shapiq")
        if pts and batch == 1:
            ax.plot(*zip(*pts), marker="s", ms=3, label="shapiq (float64)")
        ax.set_yscale("log")
        ax.set_xlabel("n (2^n values per row)")
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"Moebius transform, batch {batch}, float32")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def markdown(result: dict) -> str:
    """The README tables: the targets, and a compact timing table (milliseconds, medians)."""
    m = result["machine"]
    lines = [f"Measured {result['started'][:10]} on {m['cpu']} ({m['logical_cores']} cores, {m['platform']}), "
             f"torch {m['torch']} with {m['torch_threads']} threads, kdi_fast C++ kernels "
             f"{m['build'].get('simd')} + OpenMP; load average {result['load_average_before'][0]:.2f} before, "
             f"{result['load_average_after'][0]:.2f} after.", "",
             "| target | measured | met |", "| --- | ---: | :---: |"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']:,.2f}x | {'yes' if t['met'] else 'NO'} |")
    lines += ["", "| n | batch | cpp | copy | numpy | torch | dense | numpy / cpp |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    cells: dict[tuple[int, int], dict[str, float]] = {}
    for r in result["records"]:
        if r["dtype"] == "float32":
            cells.setdefault((r["n"], r["batch"]), {})[r["method"]] = r["seconds"] * 1e3
    for (n, batch), row in sorted(cells.items()):
        if n % 4 or batch not in (1, 64):
            continue
        fmt = lambda k: f"{row[k]:.3g}" if k in row else "-"  # noqa: E731
        ratio = f"{row['numpy'] / row['cpp']:.1f}x" if "numpy" in row else "-"
        lines.append(f"| {n} | {batch} | {fmt('cpp')} | {fmt('copy')} | {fmt('numpy')} | {fmt('torch')} | "
                     f"{fmt('dense')} | {ratio} |")
    shapiq = {r["n"]: r["seconds"] for r in result["records"] if r["method"] == "shapiq"}
    ours = {r["n"]: r["seconds"] for r in result["records"] if r["method"] == "cpp" and r["dtype"] == "float64"}
    if shapiq:
        lines += ["", "| n (one row, float64) | shapiq | cpp | shapiq / cpp |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {n} | {shapiq[n]:.3g} s | {ours[n] * 1e6:.3g} us | {shapiq[n] / ours[n]:,.0f}x |"
                  for n in sorted(shapiq)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (about a minute), for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="folder for transform.json/.csv/.png "
                        "(default benchmarks/results, or results/quick with --quick)")
    args = parser.parse_args(argv)
    args.out = args.out or results_dir(args.quick)
    if _backend.choose("mobius", torch.device("cpu")) != "cpp":
        print("kdi_fast._C is not built: the cpp backend is missing (pip install -e .)", file=sys.stderr)
        return 1

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    log(f"machine: {machine()['cpu']}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load {load_before[0]:.2f}")
    records, skipped = run_grid(args.quick, log)
    shapiq_records = run_shapiq(args.quick, log)
    targets = run_targets(args.quick, shapiq_records, log)
    records += shapiq_records
    result = {"benchmark": "transform", "quick": args.quick, "started": started, "machine": {**machine(), "versions": versions()},
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "targets": targets,
              "skipped": skipped, "records": records}
    write_text_atomic(args.out / "transform.json", json.dumps(result, indent=1))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(args.out / "transform.csv", table.getvalue())
    plot(records, args.out / "transform.png")
    log(f"wrote {args.out / 'transform.json'}, .csv and .png (load {os.getloadavg()[0]:.2f} at the end)\n")
    log(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
