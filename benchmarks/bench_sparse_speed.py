"""The engine against independent full forwards, on the masks the sparse recovery evaluates (issue 14's 3x goal).

    python benchmarks/bench_sparse_speed.py --layers 2 --n 64 --budgets 1000 --rounds 5 --output sparse_speed_uniform

For each budget Q: the masks compute_interactions(method="sparse", budget=Q) evaluates for a prompt of n players
(--design uniform, the default and what method="sparse" draws: its uniformly random training masks and its
uniformly random held-out masks, the same seeds; --design forest: engine.sparse.design_masks's prefix-sharing
training masks and the same held-out masks). Timed per round, in one process, the order rotated every round:

- engine: the prepared value function (path "auto": the mask trie, or independent forwards when the trie would
  share little (engine.values.TRIE_MAX_TOKEN_SHARE); target-only LM head, memory-budgeted batches);
- flat: the same value function with path="flat" (every mask an independent forward, still batched and with the
  target-only head);
- hf_batch<B>: what SPEX's code does: every mask an independent forward of the Hugging Face model, the full LM
  head over all positions (model(...).logits), B masks per forward;
- hf_batch1: the same, one mask per forward.

flat and the hf_* paths cost the same per mask whatever the mask set, so each round times them on --sample masks
(a fresh random sample per round) and scales to all masks; the engine always runs every mask (its sharing
depends on the whole set). A round's ratio is (path seconds) / (engine seconds), and (hf_* seconds) / (flat seconds); reported: the median ratio over
rounds with a distribution-free 95% interval (order statistics of binomial(R, 1/2)), the token share of the trie,
and the largest difference of each path's values from the engine's on the sampled masks. --paths leaves paths
out (e.g. the engine on a deep model, where its all-masks rounds would dominate; the token share that decides
path="auto" is still recorded, planned without a forward).

Model: SmolLM2-135M-Instruct cut to --layers layers (first and last kept), or with --random-weights a random
model of its shape (the same arithmetic: what benchmarks/gpu_check.sh runs on a GPU machine, --device cuda, where
the model's files do not travel). Prompt: the shortest gsm_symbolic problem (seed 0) with n usable words, or
--prompt-file (--chat-template: in the chat template); y* = --target-tokens greedy tokens (or --target); --masking
(embedding by default; under attention masking the engine's flat path runs only the kept tokens, the hf_* paths
every token with an attention mask). The engine's flat path runs the tokens before the first player (the chat
template's system turn) once for all masks; the hf_* paths run them in every forward. Writes
benchmarks/results/<--output>.json (or --out).
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


def hf_values(function, masks: torch.Tensor, batch: int) -> torch.Tensor:
    """v(x_T) [M] by independent full forwards of the Hugging Face model: full logits at every position, B masks
    per forward (what SPEX's value functions do), then log p(y*) at the prediction positions."""
    from kdi_fast.engine.value import values_from_logprobs

    model, seq = function.model, function.seq
    prediction = torch.tensor(function.prediction)
    out = []
    with torch.no_grad():
        for start in range(0, masks.shape[0], batch):
            chunk = masks[start:start + batch]
            logits = model(**seq.full_inputs(chunk), use_cache=False).logits  # [B, T, V]: the full head
            logprobs = torch.log_softmax(logits[:, prediction].double(), dim=-1)
            out.append(logprobs.gather(2, function.target[None, :, None].expand(chunk.shape[0], -1, 1))[..., 0])
    return values_from_logprobs(torch.cat(out).cpu(), eps=function.eps)  # .cpu(): a GPU run's timing waits for it


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--budgets", default="1000", help="comma-separated budgets Q")
    p.add_argument("--layers", type=int, default=2, help="layers of the SmolLM2 student (30 = the full model)")
    p.add_argument("--target-tokens", type=int, default=2, help="greedy tokens of y* (when no --target)")
    p.add_argument("--target", default=None,
                   help="y* as text, instead of the model's greedy tokens (a model whose greedy answer is empty)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sample", type=int, default=64, help="masks per round for the flat and hf_* paths")
    p.add_argument("--hf-batch", type=int, default=32, help="masks per forward of hf_batch<B>")
    p.add_argument("--masking", choices=("embedding", "token", "attention"), default="embedding")
    p.add_argument("--chat-template", action="store_true",
                   help="the prompt in SmolLM2's chat template (its system turn: a prefix the engine runs once for "
                        "all masks, the hf_* paths in every forward)")
    p.add_argument("--design", choices=("uniform", "forest"), default="uniform")
    p.add_argument("--paths", default="engine,flat,hf_batch,hf_batch1",
                   help="paths to time: engine (all the masks, every round), flat, hf_batch (--hf-batch masks per "
                        "forward), hf_batch1; leave engine out where the model is deep: path='auto' runs such "
                        "masks flat (the file records the token share that decides it)")
    p.add_argument("--random-weights", action="store_true",
                   help="a random-weight model of SmolLM2-135M's shape (gpu_engine.smollm2_shape): the same "
                        "arithmetic without the model's files, for a GPU machine where only the repository travels "
                        "(give --target: a random model's greedy answer means nothing)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tokenizer", default="smollm2", help="tokenizer directory (default SmolLM2-135M-Instruct's)")
    p.add_argument("--prompt-file", default=None,
                   help="the prompt as a text file, instead of the shortest gsm_symbolic problem with n words")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="the JSON file to write (default benchmarks/results/<--output>.json)")
    p.add_argument("--output", default="sparse_speed", help="file stem under benchmarks/results")
    p.add_argument("--quick", action="store_true", help="write to benchmarks/results/quick")
    args = p.parse_args()
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2")

    from kdi_fast.engine import ValueFunction
    from kdi_fast.engine.players import choose_players, encode_prompt
    from kdi_fast.engine.scheduler import segment_bounds, shared_prefix
    from kdi_fast.engine.sparse import default_branching, design_masks, held_out_count, uniform_masks
    from kdi_fast.models import load_model, load_tokenizer, student_from_teacher

    tokenizer = load_tokenizer(args.tokenizer)
    if args.random_weights:
        from gpu_engine import smollm2_shape

        model = smollm2_shape(args.layers)
    else:
        teacher = load_model("smollm2")
        model = (teacher if args.layers >= teacher.config.num_hidden_layers
                 else student_from_teacher(teacher, args.layers))
    model = model.to(args.device).eval()
    n = args.n
    if args.prompt_file:
        prompt = Path(args.prompt_file).read_text().strip()
    else:
        from kdi_fast.data import load_gsm_symbolic

        problems = [q["question"] for q in load_gsm_symbolic(200, seed=args.seed)]
        prompt = min((q for q in problems if len(choose_players(encode_prompt(tokenizer, q), n)) >= n), key=len,
                     default=None)
        if prompt is None:
            raise SystemExit(f"no gsm_symbolic problem with {n} usable words; lower --n")
    engine = ValueFunction.prepare(model, tokenizer, prompt, target=args.target, n_players=n,
                                   max_target_tokens=args.target_tokens, exact_players=True,
                                   masking=args.masking, chat_template=args.chat_template)
    flat = ValueFunction.prepare(model, tokenizer, prompt, players=[list(q) for q in engine.players],
                                 target_ids=engine.target_ids, path="flat",
                                 masking=args.masking, chat_template=args.chat_template)
    order = segment_bounds(engine.seq.owner, n)[1]
    out = Path(args.out) if args.out else results_dir(args.quick) / f"{args.output}.json"
    known = {"engine": "engine", "flat": "flat", "hf_batch": f"hf_batch{args.hf_batch}", "hf_batch1": "hf_batch1"}
    asked = [x.strip() for x in args.paths.split(",") if x.strip()]
    if len(asked) < 2 or any(x not in known for x in asked):
        raise SystemExit(f"--paths: two or more of {', '.join(known)}, comma-separated; got {args.paths!r}")
    paths = [known[x] for x in known if x in asked]  # always in this order: the first is the reference

    def synchronize() -> None:  # the GPU's queued work counts in the path that queued it
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for budget in (int(b) for b in args.budgets.split(",") if b.strip()):
        held = held_out_count(budget)
        if args.design == "uniform":  # exactly what compute_sparse_interactions draws (seed args.seed)
            masks = torch.cat([uniform_masks(n, budget - held, torch.Generator().manual_seed(args.seed)),
                               uniform_masks(n, held, torch.Generator().manual_seed(args.seed + 1_000_003))])
        else:  # the forest's training masks and the same uniformly random held-out masks
            masks = torch.cat([design_masks(n, budget - held, torch.Generator().manual_seed(args.seed), order),
                               uniform_masks(n, held, torch.Generator().manual_seed(args.seed + 1_000_003))])
        count = masks.shape[0]
        sample_size = min(args.sample, count)
        engine(masks[:8]), flat(masks[:8]), hf_values(engine, masks[:2], 2)  # warm-up, out of the timed rounds
        share, engine_path = engine.token_share(masks[:count - held]), engine.planned_path(masks[:count - held])
        seconds = {name: [] for name in paths}
        differences = {name: 0.0 for name in paths[1:]}  # against the first path, on each round's sample
        before = dict(engine.stats.as_dict())
        load = [os.getloadavg()[0]]
        sampler = torch.Generator().manual_seed(args.seed + 99)
        for r in range(args.rounds):
            sample = masks[torch.randperm(count, generator=sampler)[:sample_size]]
            rotated = paths[r % len(paths):] + paths[:r % len(paths)]
            results = {}
            for name in rotated:
                synchronize()
                t0 = time.perf_counter()
                if name == "engine":
                    # two calls, as compute_interactions makes them: the training masks, then the held-out ones
                    train_values = engine(masks[:count - held])
                    engine_path = engine.stats.path  # the training masks' path (the held-out ones' share little)
                    results[name] = torch.cat([train_values, engine(masks[count - held:])])
                elif name == "flat":
                    results[name] = flat(sample)
                else:
                    results[name] = hf_values(engine, sample, 1 if name == "hf_batch1" else args.hf_batch)
                synchronize()
                elapsed = time.perf_counter() - t0
                seconds[name].append(elapsed if name == "engine" else elapsed * count / sample_size)
            reference = engine(sample) if "engine" in paths else results[paths[0]]
            for name in paths[1:]:
                differences[name] = max(differences[name], float((results[name] - reference).abs().max()))
            load.append(os.getloadavg()[0])
            print(f"Q={budget} round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()), flush=True)
        engine_stats = {k: engine.stats.as_dict()[k] - before[k] for k in ("token_forwards", "naive_token_forwards")}
        row = {"n": n, "budget": budget, "design": args.design, "masks": count,
               "distinct_masks": int(torch.unique(masks, dim=0).shape[0]), "rounds": args.rounds,
               "sample": sample_size, "hf_batch": args.hf_batch,
               "branching": default_branching(n, count) if args.design == "forest" else None,
               "seconds": seconds, "ratios": {}, "max_abs_difference": differences, "load_average_1min": load}
        # the engine also ran `reference` (the sample) each round: its token counts include those, out of the share
        if "engine" in paths:
            row["token_share_including_samples"] = (engine_stats["token_forwards"]
                                                    / engine_stats["naive_token_forwards"])
        row["token_share"] = share  # of the prefix tree on the training masks, planned without a forward
        if "flat" in paths:  # < 1 under attention masking (hidden tokens do not run), padding included
            row["flat_token_share"] = flat.stats.token_forwards / flat.stats.naive_token_forwards
        row["engine_path"] = engine_path  # the path "auto" takes on all the masks
        for reference in [p for p in ("engine", "flat") if p in paths]:
            for name in paths[paths.index(reference) + 1:]:
                ratios = [a / b for a, b in zip(seconds[name], seconds[reference])]
                low, high = median_interval(ratios)
                key = name if reference == "engine" else f"{name}_vs_flat"
                row["ratios"][key] = {"median": statistics.median(ratios), "interval95": [low, high], "all": ratios}
        rows.append(row)
        print(f"Q={budget}: {count} masks; {paths[0]} {statistics.median(seconds[paths[0]]):.1f} s; " + "; ".join(
            f"{k} {v['median']:.2f}x [{v['interval95'][0]:.2f}, {v['interval95'][1]:.2f}]"
            for k, v in row["ratios"].items()), flush=True)
        write_text_atomic(out, json.dumps({
            "command": " ".join(["python", "benchmarks/bench_sparse_speed.py", *sys.argv[1:]]), "machine": machine(),
            "model": (f"SmolLM2-135M's shape, random weights, {model.config.num_hidden_layers} layers"
                      if args.random_weights else f"SmolLM2-135M-Instruct, {model.config.num_hidden_layers} layers"),
            "device": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu",
            "prompt": prompt,
            "prompt_tokens": len(engine.seq), "players": n, "masking": args.masking,
            "chat_template": args.chat_template,
            "shared_prefix_tokens": shared_prefix(model, engine.seq, engine.prediction),
            "target": tokenizer.decode(engine.target_ids), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
