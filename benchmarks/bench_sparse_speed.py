"""The mask trie against independent full forwards, on the masks the sparse recovery evaluates (issue 14's 3x goal).

    python benchmarks/bench_sparse_speed.py --layers 4 --n 32 --budgets 1000,4000 --rounds 7

For each budget Q: the training masks compute_interactions(method="sparse", budget=Q) draws for a prompt of n
players (engine.sparse.design_masks: the prefix-sharing forest; the held-out masks, uniformly random and shared
by no design, are left out). The same masks are evaluated by the same prepared value function twice per round:
path "prefix_tree" (the trie of engine.values) and path "flat" (every mask an independent full forward), in
alternating order (trie then flat, flat then trie, ...), in one process. The ratio of a round is its flat seconds
over its trie seconds; reported: the median ratio over the rounds with a distribution-free 95% interval (order
statistics of the binomial(R, 1/2)), the token share (positions the trie ran over positions of independent
forwards), the branching of the design, and that both paths return the same values.

Model: SmolLM2-135M-Instruct cut to --layers layers (first and last kept), prompt: the shortest gsm_symbolic
problem (seed 0) with n usable words, y* = --target-tokens greedy tokens, embedding masking. Writes
benchmarks/results/sparse_speed.json (or results/quick with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_interval, results_dir, write_text_atomic  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--budgets", default="1000,4000", help="comma-separated budgets Q")
    p.add_argument("--layers", type=int, default=4, help="layers of the SmolLM2 student (30 = the full model)")
    p.add_argument("--target-tokens", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="write to benchmarks/results/quick")
    args = p.parse_args()
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2 (one of each order)")

    from kdi_fast.data import load_gsm_symbolic
    from kdi_fast.engine import ValueFunction
    from kdi_fast.engine.players import choose_players, encode_prompt
    from kdi_fast.engine.scheduler import segment_bounds
    from kdi_fast.engine.sparse import default_branching, design_masks, held_out_count
    from kdi_fast.models import load_model, load_tokenizer, student_from_teacher

    tokenizer = load_tokenizer("smollm2")
    teacher = load_model("smollm2")
    model = teacher if args.layers >= teacher.config.num_hidden_layers else student_from_teacher(teacher, args.layers)
    model.eval()
    n = args.n
    problems = [q["question"] for q in load_gsm_symbolic(200, seed=args.seed)]
    prompt = min((q for q in problems if len(choose_players(encode_prompt(tokenizer, q), n)) >= n), key=len,
                 default=None)
    if prompt is None:
        raise SystemExit(f"no gsm_symbolic problem with {n} usable words; lower --n")
    trie = ValueFunction.prepare(model, tokenizer, prompt, n_players=n, max_target_tokens=args.target_tokens,
                                 exact_players=True, path="prefix_tree")
    flat = ValueFunction.prepare(model, tokenizer, prompt, players=[list(q) for q in trie.players],
                                 target_ids=trie.target_ids, path="flat")
    order = segment_bounds(trie.seq.owner, n)[1]
    out = results_dir(args.quick) / "sparse_speed.json"
    rows = []
    for budget in (int(b) for b in args.budgets.split(",") if b.strip()):
        count = budget - held_out_count(budget)
        masks = design_masks(n, count, torch.Generator().manual_seed(args.seed), order)
        trie(masks[:8]), flat(masks[:8])  # warm-up: first-call allocations out of the timed rounds
        seconds = {"trie": [], "flat": []}
        before = dict(trie.stats.as_dict())
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for name in (("trie", "flat") if r % 2 == 0 else ("flat", "trie")):
                function = trie if name == "trie" else flat
                t0 = time.perf_counter()
                values = function(masks)
                seconds[name].append(time.perf_counter() - t0)
                if name == "trie":
                    trie_values = values
                else:
                    flat_values = values
            load.append(os.getloadavg()[0])
            print(f"Q={budget} round {r}: trie {seconds['trie'][-1]:.1f} s, flat {seconds['flat'][-1]:.1f} s, "
                  f"ratio {seconds['flat'][-1] / seconds['trie'][-1]:.2f}", flush=True)
        ratios = [f / t for f, t in zip(seconds["flat"], seconds["trie"])]
        low, high = median_interval(ratios)
        tokens = trie.stats.token_forwards - before["token_forwards"]
        naive = trie.stats.naive_token_forwards - before["naive_token_forwards"]
        rows.append({"n": n, "budget": budget, "masks": count, "distinct_masks": int(torch.unique(masks, dim=0).shape[0]),
                     "branching": default_branching(n, count), "rounds": args.rounds,
                     "ratio_median": statistics.median(ratios), "ratio_interval95": [low, high], "ratios": ratios,
                     "trie_seconds": seconds["trie"], "flat_seconds": seconds["flat"],
                     "token_share": tokens / naive, "forwards_per_round": None,
                     "max_abs_difference": float((trie_values - flat_values).abs().max()),
                     "load_average_1min": load})
        rows[-1]["forwards_per_round"] = (trie.stats.forwards - before["forwards"]) / args.rounds
        print(f"Q={budget}: {count} masks, b={rows[-1]['branching']}, trie {statistics.median(ratios):.2f}x faster "
              f"[{low:.2f}, {high:.2f}], token share {tokens / naive:.3f}", flush=True)
        write_text_atomic(out, json.dumps({
            "command": " ".join(["python", "benchmarks/bench_sparse_speed.py", *sys.argv[1:]]), "machine": machine(),
            "model": f"SmolLM2-135M-Instruct, {model.config.num_hidden_layers} layers", "prompt": prompt,
            "prompt_tokens": len(trie.seq), "players": n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
