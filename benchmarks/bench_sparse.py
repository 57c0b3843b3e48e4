"""Sparse interactions of long prompts: kdi_fast vs shapiq's SPEX and ProxySPEX on the same value function.

    python benchmarks/bench_sparse.py                       # the CPU grid quoted in README (see --help)
    python benchmarks/bench_sparse.py --layers 30 --grid 16:1000,16:4000,32:1000,32:4000,64:1000,64:4000,128:4000
                                                            # the full grid, for a GPU

Same model (SmolLM2-135M-Instruct, or its first-and-last-kept student of --layers layers), same prompt (a
reasoning-gym gsm_symbolic problem with at least n words), same players, masking (embedding, pad baseline), y*
(the model's greedy continuation, --target-tokens) and v for every method; every v(x_T) any method asks for is
computed by kdi_fast's engine (engine.values, the mask trie). shapiq 1.8 runs in its own Python 3.12 virtual
environment (--shapiq-python) and gets its values through files (shapiq_side.py).

Per (n, budget): kdi_fast's sparse recovery (method="sparse": its budget includes its own held-out masks), SPEX
and ProxySPEX (index FBII, max_order = n; their internal Moebius coefficients are used) at the same budget of
masks. Reported: R^2 of each reconstruction on the same --test uniformly random masks (not in any budget),
kdi_fast's own held-out R^2, Overlap@K (K = --top-k) of the recovered top interactions with the exact ones
where n <= --exact-max (the exact engine on all 2^n masks), masks evaluated, wall time (method + values), and
the speed of kdi_fast's masks through the trie against the same masks as independent full forwards (the flat
path, timed on --flat-sample of them and scaled linearly: independent forwards cost the same per mask), and the
share of the recovered v's influence that each quarter of the players carries (influence_by_quarter).
--design forest fits kdi_fast on the prefix-sharing forest instead; --summarize lists such a design as its own
method, with the uniform design's paired lead over it and its own paired lead over the other methods.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, results_dir, write_text_atomic  # noqa: E402
from kdi_fast.engine.sparse import uniform_masks  # noqa: E402

# shapiq 1.8 needs Python >= 3.12: its own venv, made by `make shapiq-venv` (or named by $KDI_SHAPIQ_PYTHON)
DEFAULT_SHAPIQ = os.environ.get(
    "KDI_SHAPIQ_PYTHON", str(Path(__file__).resolve().parents[1] / ".venv-shapiq" / "bin" / "python"))


def parse_grid(text: str) -> list[tuple[int, int]]:
    try:
        grid = [tuple(int(x) for x in part.split(":")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--grid {text!r}: give n:budget pairs, e.g. 16:1000,32:1000") from None
    return grid


def moebius_predict(terms: list[tuple[tuple[int, ...], float]], masks: torch.Tensor) -> np.ndarray:
    """sum_{S subset of T} m_S for masks [M, n] bool, any order."""
    x = masks.numpy()
    out = np.zeros(x.shape[0])
    for subset, value in terms:
        out += value * (np.all(x[:, list(subset)], axis=1) if subset else 1.0)
    return out


def r2(truth, predicted) -> float:
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    return float(1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


def top_k(terms, k: int) -> set:
    ranked = sorted(((s, v) for s, v in terms if len(s) > 0), key=lambda t: (-abs(t[1]), len(t[0]), t[0]))
    return {tuple(s) for s, _ in ranked[:k]}


def run_shapiq(method: str, function, n: int, budget: int, seed: int, python: str, proxy: str = "fixed") -> dict:
    """shapiq's `method` in its own process; every game call answered with kdi_fast's engine."""
    exchange = Path(tempfile.mkdtemp(prefix=f"kdi-{method}-"))
    value_seconds, answered = 0.0, 0
    started = time.perf_counter()
    process = subprocess.Popen([python, str(Path(__file__).resolve().parent / "shapiq_side.py"), "--method", method,
                                "--n", str(n), "--budget", str(budget), "--seed", str(seed), "--dir", str(exchange),
                                "--proxy", proxy],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            request = exchange / f"req_{answered}.npy"
            if request.exists():
                masks = torch.from_numpy(np.load(request))
                t0 = time.perf_counter()
                values = function(masks).numpy()
                value_seconds += time.perf_counter() - t0
                np.save(exchange / f"resp_{answered}.tmp.npy", values)
                (exchange / f"resp_{answered}.tmp.npy").rename(exchange / f"resp_{answered}.npy")
                answered += 1
                continue
            if process.poll() is not None:
                break
            time.sleep(0.02)
        _, err = process.communicate()
        result_file = exchange / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else {"error": err[-2000:]}
        if process.returncode != 0 and "error" not in result:
            result["error"] = err[-2000:]
    finally:
        shutil.rmtree(exchange, ignore_errors=True)
    result["seconds_values"] = value_seconds
    result["seconds_total"] = time.perf_counter() - started
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="16:1000,32:1000,64:1000,128:1000", help="n:budget pairs")
    p.add_argument("--layers", type=int, default=4, help="layers of the SmolLM2 student (30 = the full model)")
    p.add_argument("--target-tokens", type=int, default=2)
    p.add_argument("--test", type=int, default=300, help="uniformly random test masks for R^2 (no budget)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--exact-max", type=int, default=0, help="exact interactions (all 2^n masks) up to this n")
    p.add_argument("--flat-sample", type=int, default=48)
    p.add_argument("--methods", default="kdi_fast,SPEX,ProxySPEX")
    p.add_argument("--shapiq-python", default=DEFAULT_SHAPIQ)
    p.add_argument("--proxy", choices=("fixed", "hpo"), default="fixed",
                   help="ProxySPEX's proxy: one LightGBM of its grid (fixed) or its 5-fold grid search (hpo); "
                        "see shapiq_side.py")
    p.add_argument("--design", choices=("uniform", "forest"), default="uniform",
                   help="kdi_fast's training masks: uniformly random (compute_interactions' choice) or the "
                        "prefix-sharing forest (engine.sparse.design_masks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--problems", type=int, default=200,
                   help="gsm_symbolic problems to choose prompts from (400 holds one with 128 words, 3,000 hold 31)")
    p.add_argument("--prompts", type=int, default=1,
                   help="prompts per (n, budget): the shortest problems with n usable words; the summary gives each "
                        "method's mean R^2 and kdi_fast's paired lead over the others, with 95%% t-intervals over "
                        "prompts")
    p.add_argument("--distinct", action="store_true",
                   help="with --prompts: skip a problem that shares half its lower-case words (Jaccard >= 0.5) with "
                        "one already chosen, so the prompts come from different gsm_symbolic templates")
    p.add_argument("--summarize", default=None,
                   help="no runs: the summary (means and kdi_fast's paired lead over prompts) of these result files "
                        "together, comma-separated stems under benchmarks/results, written to --output.md")
    p.add_argument("--quick", action="store_true", help="write to benchmarks/results/quick")
    p.add_argument("--output", default="sparse", help="file stem under benchmarks/results (default sparse)")
    args = p.parse_args()
    if args.summarize:
        out_dir = results_dir(args.quick)
        rows = []
        for stem in (x.strip() for x in args.summarize.split(",") if x.strip()):
            path = out_dir / f"{stem}.json"
            if not path.exists():
                raise SystemExit(f"--summarize: {path} not found (give stems of files under {out_dir})")
            rows += json.loads(path.read_text())["rows"]
        entries = summary(rows, args.top_k)
        write_text_atomic(out_dir / f"{args.output}.json", json.dumps(
            {"command": " ".join(["python", "benchmarks/bench_sparse.py", *sys.argv[1:]]), "summary": entries},
            indent=1))
        write_text_atomic(out_dir / f"{args.output}.md", summary_markdown(entries, args.top_k))
        print(summary_markdown(entries, args.top_k))
        return

    from kdi_fast.data import load_gsm_symbolic
    from kdi_fast.engine import ValueFunction, compute_interactions
    from kdi_fast.engine.players import choose_players, encode_prompt
    from kdi_fast.engine.scheduler import segment_bounds
    from kdi_fast.engine.sparse import design_masks, held_out_count, recover
    from kdi_fast.models import load_model, load_tokenizer, student_from_teacher

    grid = parse_grid(args.grid)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m != "kdi_fast" for m in methods) and not Path(args.shapiq_python).exists():
        raise SystemExit(f"--shapiq-python {args.shapiq_python} not found: create it with `make shapiq-venv` "
                         f"(python3.12 -m venv .venv-shapiq && .venv-shapiq/bin/pip install 'shapiq[sparse]==1.8.0' "
                         f"lightgbm) or name another with --shapiq-python")
    tokenizer = load_tokenizer("smollm2")
    teacher = load_model("smollm2")
    model = teacher if args.layers >= teacher.config.num_hidden_layers else student_from_teacher(teacher, args.layers)
    model.eval()
    problems = [q["question"] for q in load_gsm_symbolic(args.problems, seed=args.seed)]
    rows = []
    exact_tops: dict[tuple, tuple[set, set]] = {}  # (n, prompt) -> (exact top k, exact top k among orders <= 3)
    out_dir = results_dir(args.quick)
    work = []
    for n, budget in grid:
        # the shortest problems with n usable words (short prompts keep the CPU grid small)
        fitting = sorted((q for q in problems if len(choose_players(encode_prompt(tokenizer, q), n)) >= n), key=len)
        if args.distinct:
            fitting = distinct_templates(fitting, args.prompts)
        if len(fitting) < args.prompts:
            print(f"n={n}: {len(fitting)} of {args.problems} gsm_symbolic problems have {n} words, {args.prompts} "
                  f"asked; {'skipped' if not fitting else 'using those'} (raise --problems)", flush=True)
        work += [(n, budget, i, prompt) for i, prompt in enumerate(fitting[:args.prompts])]
    for n, budget, prompt_index, prompt in work:
        function = ValueFunction.prepare(model, tokenizer, prompt, n_players=n, max_target_tokens=args.target_tokens,
                                         exact_players=True)
        flat = ValueFunction.prepare(model, tokenizer, prompt, players=[list(q) for q in function.players],
                                     target_ids=function.target_ids, path="flat")
        generator = torch.Generator().manual_seed(args.seed + 17)
        test = uniform_masks(n, args.test, generator)
        t0 = time.perf_counter()
        test_values = function(test).numpy()
        test_seconds = time.perf_counter() - t0
        flat_sample = uniform_masks(n, args.flat_sample, generator)
        t0 = time.perf_counter()
        flat(flat_sample)
        flat_per_mask = (time.perf_counter() - t0) / args.flat_sample
        exact_top = exact_tops.get((n, prompt))
        if n <= args.exact_max and exact_top is None:  # once per n and prompt: players and y* depend on them only
            exact = compute_interactions(model, tokenizer, [prompt], players=[[list(q) for q in function.players]],
                                         like=None, targets=[tokenizer.decode(function.target_ids)],
                                         progress=False)[0]
            if list(exact.target_ids) != list(function.target_ids):
                raise SystemExit(f"n={n}: the exact run's y* {exact.target_ids} differs from {function.target_ids}")
            subsets = [tuple(i for i in range(n) if m >> i & 1) for m in range(1 << n)]
            terms_exact = list(zip(subsets, exact.interactions.tolist()))
            exact_top = exact_tops[(n, prompt)] = (top_k(terms_exact, args.top_k),
                                         top_k([t for t in terms_exact if len(t[0]) <= 3], args.top_k))
        base = {"n": n, "budget": budget, "prompt": prompt_index, "distinct": args.distinct,
                "prompt_words": len(function.encoded.words),
                "tokens": len(function.seq), "layers": model.config.num_hidden_layers,
                "flat_seconds_per_mask": flat_per_mask, "test_masks": args.test, "test_seconds": test_seconds}
        print(f"n={n} budget={budget}: prompt {prompt_index} of {base['prompt_words']} words, "
              f"{base['tokens']} tokens; "
              f"flat {flat_per_mask:.3f} s/mask", flush=True)
        for method in methods:
            row = dict(base, method=method)
            if method == "kdi_fast":
                order = segment_bounds(function.seq.owner, n)[1]
                held = held_out_count(budget)
                g = torch.Generator().manual_seed(args.seed)
                train = (design_masks(n, budget - held, g, order) if args.design == "forest"
                         else uniform_masks(n, budget - held, g))
                held_masks = uniform_masks(n, held, torch.Generator().manual_seed(args.seed + 1))
                before = dict(function.stats.as_dict())
                t0 = time.perf_counter()
                train_values = function(train)
                train_seconds = time.perf_counter() - t0
                tokens_run = function.stats.token_forwards - before["token_forwards"]
                tokens_naive = function.stats.naive_token_forwards - before["naive_token_forwards"]
                t1 = time.perf_counter()
                held_values = function(held_masks)
                t2 = time.perf_counter()
                rec = recover(train, train_values, held_masks, held_values, seed=args.seed)
                fit_seconds = time.perf_counter() - t2
                row["influence_by_quarter"] = influence_by_quarter(rec, order, torch.Generator().manual_seed(5))
                terms = list(zip(rec.subsets, rec.interactions.tolist()))
                predicted = rec.predict(test).numpy()
                row.update(masks=budget, design=args.design, seconds_values=t2 - t0, seconds_method=fit_seconds,
                           seconds_total=t2 - t0 + fit_seconds, r2_own_held_out=rec.r2_held_out,
                           recovered=len(terms), train_seconds=train_seconds,
                           train_flat_seconds_estimate=flat_per_mask * train.shape[0],
                           trie_speedup=flat_per_mask * train.shape[0] / train_seconds,
                           token_share=tokens_run / tokens_naive, held_out_seconds=t2 - t1)
            else:
                result = run_shapiq(method, function, n, budget, args.seed, args.shapiq_python, args.proxy)
                if "error" in result:
                    row.update(error=result["error"][-300:])
                    print(f"  {method}: error {row['error']}", flush=True)
                    rows.append(row)
                    continue
                terms = [(tuple(s), v) for s, v in result["moebius"]]
                predicted = moebius_predict(terms, test)
                row.update(masks=result["masks"], seconds_values=result["seconds_values"],
                           seconds_method=result["seconds_method"],
                           seconds_total=result["seconds_values"] + result["seconds_method"], recovered=len(terms),
                           values_flat_seconds_estimate=flat_per_mask * result["masks"], proxy=result.get("proxy"))
            row["r2_test"] = r2(test_values, predicted)
            if exact_top is not None:  # also against the best top k that terms of order <= 3 can give
                row[f"overlap_top{args.top_k}_exact"] = len(top_k(terms, args.top_k) & exact_top[0]) / args.top_k
                row[f"overlap_top{args.top_k}_exact_order3"] = (len(top_k(terms, args.top_k) & exact_top[1])
                                                                / args.top_k)
                row[f"exact_top{args.top_k}_orders"] = sorted(len(t) for t in exact_top[0])
            rows.append(row)
            print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                   if k not in base), flush=True)
            write_text_atomic(out_dir / f"{args.output}.json", json.dumps(
                {"command": " ".join(["python", "benchmarks/bench_sparse.py", *sys.argv[1:]]),
                 "machine": machine(), "rows": rows, "summary": summary(rows, args.top_k)}, indent=1))
    write_text_atomic(out_dir / f"{args.output}.md",
                      markdown(rows, args.top_k) + summary_markdown(summary(rows, args.top_k), args.top_k))
    print((out_dir / f"{args.output}.md").read_text())


def influence_by_quarter(recovery, order: list[int], generator: torch.Generator, probes: int = 400) -> list[float]:
    """The share of the recovered v's total influence carried by each quarter of the players in position order
    (`order`: the players by position): player i's influence is E_x (f(x) - f(x with i flipped))^2 over uniformly
    random x (`probes` of them), f the recovered terms. Where the first players carry much of it, masks that
    share those players' values (a shared prefix) lose what the fit needs most."""
    n = len(order)
    x = uniform_masks(n, probes, generator)
    base = recovery.predict(x)
    influence = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        flipped = x.clone()
        flipped[:, i] = ~flipped[:, i]
        influence[i] = ((recovery.predict(flipped) - base) ** 2).mean()
    by_position = influence[torch.tensor(order)]
    total = float(by_position.sum()) or 1.0
    return [float(q.sum()) / total for q in torch.tensor_split(by_position, 4)]


def distinct_templates(problems: list[str], count: int) -> list[str]:
    """The first `count` problems whose set of lower-case words (names and numbers vary within a gsm_symbolic
    template, so they are left out) has Jaccard similarity < 0.5 with every one chosen before."""
    chosen, words = [], []
    for problem in problems:
        these = set(re.findall(r"\b[a-z]+\b", problem))
        if all(len(these & w) < 0.5 * len(these | w) for w in words):
            chosen.append(problem)
            words.append(these)
            if len(chosen) == count:
                break
    return chosen


def summary(rows: list[dict], k: int = 10) -> list[dict]:
    """Per (layers, n, budget, method): mean R^2 on the test masks over prompts (95% t-interval), the mean
    Overlap@k with the exact interactions where measured, and for every method but kdi_fast the paired difference
    kdi_fast - method over the prompts both ran (positive: kdi_fast ahead)."""
    from kdi_fast.metrics import mean_ci

    scores: dict[tuple, dict[tuple, float]] = {}
    overlaps: dict[tuple, list[float]] = {}
    firsts: dict[tuple, list[float]] = {}  # the first quarter of the players' share of the influence
    shares: dict[tuple, list[float]] = {}  # the trie's token share of a prefix-sharing design's training masks
    for r in rows:
        if "r2_test" in r:
            method = r["method"] if r.get("design", "uniform") == "uniform" else f"{r['method']} ({r['design']})"
            group = (r["layers"], r["n"], r["budget"], method)  # --summarize: one prompt set per group
            # the prompt's index, words and tokens: rows of different files pair only on the same prompt
            scores.setdefault(group, {})[(r.get("prompt", 0), r["prompt_words"], r["tokens"])] = r["r2_test"]
            if f"overlap_top{k}_exact" in r:
                overlaps.setdefault(group, []).append(r[f"overlap_top{k}_exact"])
            if "influence_by_quarter" in r:
                firsts.setdefault(group, []).append(r["influence_by_quarter"][0])
            if r.get("design") == "forest":
                shares.setdefault(group, []).append(r["token_share"])
    out = []
    for group in sorted(scores, key=lambda g: (g[0], g[1], g[2], g[3] != "kdi_fast", g[3])):
        layers, n, budget, method = group
        by_prompt = scores[group]
        entry = {"layers": layers, "n": n, "budget": budget, "method": method,
                 "r2_test": mean_ci(list(by_prompt.values())).as_dict()}
        if group in overlaps:
            entry[f"overlap_top{k}_exact"] = mean_ci(overlaps[group]).as_dict()
        if group in firsts:
            entry["influence_first_quarter"] = mean_ci(firsts[group]).as_dict()
        if group in shares:
            entry["token_share"] = mean_ci(shares[group]).as_dict()
        ours = scores.get((layers, n, budget, "kdi_fast"), {})
        shared = sorted(set(ours) & set(by_prompt))
        if method != "kdi_fast" and shared:  # another method, or another kdi_fast design: uniform kdi_fast's lead
            lead = [ours[i] - by_prompt[i] for i in shared]
            entry["kdi_fast_lead"] = dict(mean_ci(lead).as_dict(), min=min(lead),
                                          prompts_ahead=sum(x > 0 for x in lead))
        if method.startswith("kdi_fast ("):  # another design of kdi_fast: its own lead over the other methods
            for (l2, n2, b2, other), theirs in scores.items():
                both = sorted(set(theirs) & set(by_prompt))
                if (l2, n2, b2) == (layers, n, budget) and not other.startswith("kdi_fast") and both:
                    lead = [by_prompt[i] - theirs[i] for i in both]
                    entry.setdefault("lead_over", {})[other] = dict(mean_ci(lead).as_dict(),
                                                                    prompts_ahead=sum(x > 0 for x in lead))
        out.append(entry)
    return out


def summary_markdown(entries: list[dict], k: int = 10) -> str:
    def interval(d: dict) -> str:
        return f"{d['mean']:.3f}" + (f" [{d['low']:.3f}, {d['high']:.3f}]" if d["n"] > 1 else "")

    # the design columns only where a file has them (kdi_fast rows since the influence was added)
    design = any("influence_first_quarter" in e or "token_share" in e for e in entries)
    lines = ["", f"| layers | n | budget | method | prompts | R^2 (test), mean [95% t-interval] | kdi_fast - method, "
             f"paired [95% t-interval] | prompts where kdi_fast is ahead | Overlap@{k} with exact, mean |"
             + (" first quarter of the words' share of the influence | trie's token share |" if design else ""),
             "|---" * (11 if design else 9) + "|"]
    for e in entries:
        lead, overlap = e.get("kdi_fast_lead"), e.get(f"overlap_top{k}_exact")
        lines.append(f"| {e['layers']} | {e['n']} | {e['budget']} | {e['method']} | {e['r2_test']['n']} | "
                     f"{interval(e['r2_test'])} | "
                     + (f"{interval(lead)} | {lead['prompts_ahead']} of {lead['n']} | " if lead else "- | - | ")
                     + (f"{overlap['mean']:.2f} |" if overlap else "- |"))
        if design:
            lines[-1] += "".join(f" {interval(e[key])} |" if key in e else " - |"
                                 for key in ("influence_first_quarter", "token_share"))
    for e in entries:
        for other, lead in e.get("lead_over", {}).items():
            lines.append(f"\n{e['method']} - {other}, {e['layers']} layers, n = {e['n']}, budget {e['budget']}, "
                         f"paired: {interval(lead)}, ahead on {lead['prompts_ahead']} of {lead['n']} prompts.")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], k: int) -> str:
    lines = [f"| n | budget | prompt | method | masks | R^2 (test) | own held-out R^2 | Overlap@{k} exact | terms "
             f"| wall s (method + values) | trie vs independent forwards |", "|---" * 11 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['budget']} | {r.get('prompt', 0)} | {r['method']} | "
                         f"error: {r['error'][:80]} |")
            continue
        overlap = r.get(f"overlap_top{k}_exact")
        own = f"{r['r2_own_held_out']:.3f}" if "r2_own_held_out" in r else "-"
        lines.append(f"| {r['n']} | {r['budget']} | {r.get('prompt', 0)} | {r['method']} | {r['masks']} | "
                     f"{r['r2_test']:.3f} | {own} | ")
        lines[-1] += (f"{overlap:.2f} | " if overlap is not None else "- | ")
        lines[-1] += (f"{r['recovered']} | {r['seconds_total']:.0f} ({r['seconds_method']:.0f} + "
                      f"{r['seconds_values']:.0f}) | ")
        if "trie_speedup" in r and r["token_share"] >= 1.0:
            lines[-1] += "- (path auto ran the masks flat) |"
        else:
            lines[-1] += (f"{r['trie_speedup']:.2f}x ({r['token_share']:.2f} of the tokens) |" if "trie_speedup" in r
                          else "- |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
