"""`kdi demo`: the transform on a toy game whose interactions are known, then its speed at larger n."""

from __future__ import annotations

import argparse
import time

import torch

from .. import _backend
from ..ops import mobius, zeta


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a small transform demo: a toy game, then timings")
    p.add_argument("--n", type=int, default=20, help="players for the timing (default 20)")
    p.add_argument("--batch", type=int, default=8, help="rows for the timing (default 8)")
    p.set_defaults(run=run)


def _toy_game(n: int = 4) -> torch.Tensor:
    """v(T) = 2 [both 0 and 1 in T] - 1.5 [0, 2 and 3 in T] + 0.5 |T and {2}| + 0.25: AND effects by design."""
    masks = torch.arange(1 << n)
    has = lambda *ps: ((masks[:, None] >> torch.tensor(ps)) & 1).all(-1).double()  # noqa: E731
    return 2 * has(0, 1) - 1.5 * has(0, 2, 3) + 0.5 * has(2) + 0.25


def run(args: argparse.Namespace) -> int:
    n = 4
    v = _toy_game(n)
    interactions = mobius(v)
    print("Toy game v(T) = 2[0,1 in T] - 1.5[0,2,3 in T] + 0.5[2 in T] + 0.25 on 4 players.")
    print("Its non-zero Harsanyi interactions (I = mobius(v)):")
    for mask in torch.nonzero(interactions.abs() > 1e-12).flatten().tolist():
        players = "{" + ",".join(str(i) for i in range(n) if mask >> i & 1) + "}"
        print(f"  I_{players:<10} = {interactions[mask].item():+.3f}")
    err = (zeta(interactions) - v).abs().max().item()
    print(f"universal matching: max |zeta(I) - v| = {err:.1e}\n")

    x = torch.randn(args.batch, 1 << args.n)
    name = _backend.choose("mobius", x.device)
    mobius(x)  # warm-up
    t0 = time.perf_counter()
    out = mobius(x)
    elapsed = time.perf_counter() - t0
    gb = 2 * x.numel() * x.element_size() / 1e9
    print(f"mobius on {args.batch} x 2^{args.n} float32 ({name} backend): {elapsed * 1e3:.2f} ms "
          f"({gb / elapsed:.1f} GB/s read+write)")
    back = zeta(out)
    print(f"round trip max |zeta(mobius(v)) - v| = {(back - x).abs().max().item():.2e} (float32)")
    return 0
