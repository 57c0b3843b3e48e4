"""Benchmark of the masked-batch engine against the naive method of the field (issue 3, item 11).

For a ~64-token prompt, n players and a 16-token target, both compute v(x_T) for all 2^n masks and I = mobius(v):

  naive:  masked inputs built in Python (per mask, per token: the embedding or the baseline), full forwards of
          the model with full logits [B, S, vocab] and a full log-softmax, then I = M v with the dense
          2^n x 2^n Moebius matrix;
  engine: kdi_fast.compute_interactions (prefix tree, LM head at the target positions only, fast transform).

Both run B masks per forward (the engine: B masks per forward of the tail, the part that runs for every mask).
Players sit spread through the prompt (the automatic choice) or at its start (the first n words). Each
(model, layout, method) runs in its own process; peak working memory = the process's peak resident memory
during the run minus its resident memory before it (weights loaded, one warm-up forward done), read from
/proc/self/status (VmHWM, reset through /proc/self/clear_refs).

    python benchmarks/bench_engine.py                      # n=10, GPT-2-small shape and SmolLM2-135M
    python benchmarks/bench_engine.py --quick              # n=6, GPT-2 shape, spread: a minute

Writes benchmarks/results/engine.json and engine.csv; prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import machine, results_dir, write_text_atomic
PROMPT = ("Maria runs a small bakery in town. Every morning she bakes 48 croissants and 36 muffins. She sells "
          "croissants for 3 dollars each and muffins for 2 dollars each. On Monday she sold all croissants "
          "and half the muffins. How much did she make?")  # 65 SmolLM2 tokens
TARGET = " To find the total, multiply the number of croissants by their price and"  # 16 SmolLM2 tokens
TARGET_TOKENS = 16


# ----------------------------------------------------------------------------------------------------------
# Models and memory
# ----------------------------------------------------------------------------------------------------------


def load(model_name: str):
    from kdi_fast.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    if model_name == "smollm2":
        return load_model("smollm2"), tokenizer
    if model_name == "gpt2":  # GPT-2 small's shape (124M), random weights: timing only
        from transformers import AutoModelForCausalLM, GPT2Config

        torch.manual_seed(0)
        config = GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = AutoModelForCausalLM.from_config(config).eval()
        model.config.name_or_path = "gpt2-small-shape (random)"
        return model, tokenizer
    raise ValueError(f"unknown model {model_name!r}")


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def reset_peak() -> int:
    """Reset the peak-RSS counter; returns the resident memory now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


# ----------------------------------------------------------------------------------------------------------
# The naive method
# ----------------------------------------------------------------------------------------------------------


def dense_mobius_matrix(n: int) -> torch.Tensor:
    """M [2^n, 2^n] float64 with M[S, T] = (-1)^(|S| - |T|) for T subset of S, else 0."""
    masks = torch.arange(1 << n)
    subset = (masks[None, :] & ~masks[:, None]) == 0  # T (column) subset of S (row)
    popcount = torch.tensor([bin(m).count("1") for m in range(1 << n)])
    sign = 1.0 - 2.0 * ((popcount[:, None] - popcount[None, :]) % 2).double()
    return torch.where(subset, sign, torch.zeros((), dtype=torch.float64))


@torch.no_grad()
def naive_interactions(model, ids: list[int], owner: list[int], n: int, target: list[int], prompt_length: int,
                       baseline: torch.Tensor, masks_per_forward: int) -> tuple[torch.Tensor, torch.Tensor]:
    from kdi_fast.reference import logodds_from_mean_logprob

    embeds = model.get_input_embeddings()(torch.tensor(ids))
    positions = torch.arange(len(ids))[None]
    predict = torch.arange(prompt_length - 1, prompt_length - 1 + len(target))
    target_t = torch.tensor(target)
    values = torch.empty(1 << n, dtype=torch.float64)
    for start in range(0, 1 << n, masks_per_forward):
        chunk = range(start, min(start + masks_per_forward, 1 << n))
        batch = torch.stack([torch.stack([embeds[t] if owner[t] < 0 or mask >> owner[t] & 1 else baseline
                                          for t in range(len(ids))]) for mask in chunk])
        logits = model(inputs_embeds=batch, position_ids=positions.expand(len(chunk), -1)).logits
        logprobs = logits.log_softmax(-1)[:, predict, target_t]
        values[start:start + len(chunk)] = logodds_from_mean_logprob(logprobs.double().mean(-1))
    return values, dense_mobius_matrix(n) @ values


# ----------------------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ----------------------------------------------------------------------------------------------------------


def players_for(encoded, n: int, layout: str):
    from kdi_fast.engine.players import choose_players

    if layout == "spread":
        return choose_players(encoded, n)
    if layout == "start":
        return [(w,) for w in range(n)]
    raise ValueError(layout)


def worker(model_name: str, layout: str, method: str, n: int, masks_per_forward: int) -> dict:
    from kdi_fast.engine import compute_interactions
    from kdi_fast.engine.masking import baseline_embedding
    from kdi_fast.engine.players import encode_prompt, player_of_token
    from kdi_fast.engine.scheduler import segment_bounds

    torch.manual_seed(0)
    model, tokenizer = load(model_name)
    encoded = encode_prompt(tokenizer, PROMPT)
    players = players_for(encoded, n, layout)
    target = tokenizer(TARGET, add_special_tokens=False)["input_ids"]
    assert len(target) == TARGET_TOKENS, len(target)
    ids = list(encoded.input_ids) + target[:-1]
    owner = player_of_token(encoded, players) + [-1] * (len(target) - 1)
    bounds, _ = segment_bounds(torch.tensor(owner), n)
    tail = bounds[-1] - bounds[-2]
    baseline = baseline_embedding(model, tokenizer, "pad")
    with torch.no_grad():  # warm-up: one small forward (one-time initialisation is not measured)
        model(input_ids=torch.tensor([ids[:8]]))

    rss_before = reset_peak()
    started, cpu_started = time.perf_counter(), time.process_time()
    if method == "naive":
        values, interactions = naive_interactions(model, ids, owner, n, target, len(encoded.input_ids), baseline,
                                                  masks_per_forward)
        token_forwards = (1 << n) * len(ids)
        extra = {}
    else:
        result = compute_interactions(model, tokenizer, [PROMPT], targets=[TARGET], players=[players],
                                      max_batch_tokens=masks_per_forward * tail, progress=False)[0]
        values, interactions = result.values, result.interactions
        token_forwards = result.stats["token_forwards"]
        extra = {"rows_per_forward": result.stats["rows_per_forward"], "forwards": result.stats["forwards"]}
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = peak_rss() - rss_before
    return {"model": model_name, "layout": layout, "method": method, "n": n, "masks": 1 << n,
            "prompt_tokens": len(encoded.input_ids), "target_tokens": len(target), "sequence": len(ids),
            "tail_tokens": tail, "player_words": [encoded.words[p[0]] for p in players],
            "masks_per_forward": masks_per_forward, "seconds": seconds, "masks_per_second": (1 << n) / seconds,
            "cpu_seconds": cpu_seconds, "load_average_1min": os.getloadavg()[0],
            "token_forwards": token_forwards, "peak_working_bytes": peak,
            "values": values.tolist(), "interactions": interactions.tolist(), **extra}


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------


def run_worker(args, model_name, layout, method) -> dict:
    command = [sys.executable, __file__, "--worker", model_name, layout, method, "--n", str(args.n),
               "--masks-per-forward", str(args.masks_per_forward)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--models", default="gpt2,smollm2")
    parser.add_argument("--layouts", default="spread,start")
    parser.add_argument("--masks-per-forward", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="n=6, GPT-2 shape, spread players only")
    parser.add_argument("--out", default=None, help="default benchmarks/results/engine.json (results/quick/ with --quick)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "LAYOUT", "METHOD"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.n, args.masks_per_forward)))
        return 0
    if args.quick:
        args.n, args.models, args.layouts = 6, "gpt2", "spread"

    rows = []
    load_before = os.getloadavg()[0]
    for model_name in args.models.split(","):
        for layout in args.layouts.split(","):
            runs = {method: run_worker(args, model_name, layout, method) for method in ("naive", "engine")}
            naive, engine = runs["naive"], runs["engine"]
            v_err = max(abs(a - b) for a, b in zip(naive["values"], engine["values"]))
            i_err = max(abs(a - b) for a, b in zip(naive["interactions"], engine["interactions"]))
            for run in runs.values():
                run.pop("values"), run.pop("interactions")
            rows.append({"model": model_name, "layout": layout, "n": args.n, "naive": naive, "engine": engine,
                         "throughput_ratio": engine["masks_per_second"] / naive["masks_per_second"],
                         "cpu_time_ratio": naive["cpu_seconds"] / engine["cpu_seconds"],
                         "token_forward_ratio": naive["token_forwards"] / engine["token_forwards"],
                         "memory_ratio": engine["peak_working_bytes"] / max(naive["peak_working_bytes"], 1),
                         "max_abs_diff_values": v_err, "max_abs_diff_interactions": i_err})
            print(f"{model_name:8s} {layout:6s} naive {naive['masks_per_second']:7.1f}/s "
                  f"{naive['peak_working_bytes'] / 2**20:7.0f} MiB | engine {engine['masks_per_second']:7.1f}/s "
                  f"{engine['peak_working_bytes'] / 2**20:7.0f} MiB | x{rows[-1]['throughput_ratio']:.2f} "
                  f"mem {rows[-1]['memory_ratio']:.3f} | max|dv| {v_err:.1e}", flush=True)
    report = {"machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
              "prompt": PROMPT, "target": TARGET, "masks_per_forward": args.masks_per_forward, "rows": rows}
    out = Path(args.out) if args.out else results_dir(args.quick) / "engine.json"
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["model", "layout", "n", "method", "masks_per_second", "seconds", "token_forwards",
                     "peak_working_MiB"])
    for row in rows:
        for method in ("naive", "engine"):
            r = row[method]
            writer.writerow([row["model"], row["layout"], row["n"], method, f"{r['masks_per_second']:.2f}",
                             f"{r['seconds']:.2f}", r["token_forwards"], f"{r['peak_working_bytes'] / 2**20:.1f}"])
    write_text_atomic(out.with_suffix(".csv"), table.getvalue())
    print()
    print(markdown_table(report))
    return 0


def markdown_table(report: dict) -> str:
    lines = ["| model | players | naive masks/s | engine masks/s | speed-up | token-forwards naive / engine | "
             "peak working memory naive / engine | memory ratio | max abs diff of v |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        naive, engine = row["naive"], row["engine"]
        lines.append(
            f"| {row['model']} | {row['layout']} | {naive['masks_per_second']:.1f} | {engine['masks_per_second']:.1f} "
            f"| {row['throughput_ratio']:.2f}x | {naive['token_forwards']:,} / {engine['token_forwards']:,} "
            f"| {naive['peak_working_bytes'] / 2**20:.0f} / {engine['peak_working_bytes'] / 2**20:.0f} MiB "
            f"| {row['memory_ratio']:.3f} | {row['max_abs_diff_values']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
