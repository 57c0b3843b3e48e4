"""The engine on a GPU with a random-weight model of SmolLM2-135M's shape (no download, no tokenizer needed).

For a random prompt of --tokens tokens with --n players (two tokens each, spread) and a 16-token target, the
scheduler computes log p(y*) for all 2^n masks by the prefix tree and by the flat path (every masked input in
full), --repeats times each, interleaved; reported: the median seconds of each with the min-max range, the
ratio flat / prefix tree of the medians, and the largest difference of the log-probs between the two paths.

    python benchmarks/gpu_engine.py --out benchmarks/results/gpu_check/engine.json
    python benchmarks/gpu_engine.py --device cpu --n 4 --layers 2     # a smoke run without a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def smollm2_shape(layers: int):
    """SmolLM2-135M's architecture (Llama: 576 wide, 9 heads, 3 KV heads, 49,152 tokens) with random weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.config.name_or_path = f"smollm2-135m-shape-{layers}L (random)"
    return model


def run(args) -> dict:
    from kdi_fast.engine.masking import MaskedSequence, get_masking
    from kdi_fast.engine.memory import default_memory_budget
    from kdi_fast.engine.scheduler import all_mask_logprobs

    device = torch.device(args.device)
    model = smollm2_shape(args.layers).to(device=device, dtype=getattr(torch, args.dtype))
    g = torch.Generator().manual_seed(0)
    length, target_len = args.tokens, 16
    ids = torch.randint(3, 49152, (length + target_len - 1,), generator=g)
    target = torch.cat([ids[length:], torch.randint(3, 49152, (1,), generator=g)]).to(device)
    owner = torch.full((len(ids),), -1, dtype=torch.int64)
    for i, start in enumerate(torch.linspace(1, length - 3, args.n).long().tolist()):
        owner[start:start + 2] = i
    mode = get_masking("embedding")
    ids = ids.to(device)
    seq = MaskedSequence(ids, owner.to(device), args.n, mode, baseline=mode.resolve(model, None, "pad"),
                         embeds=model.get_input_embeddings()(ids).detach())
    prediction = list(range(length - 1, length - 1 + target_len))
    budget = default_memory_budget(device)
    times: dict[str, list[float]] = {"prefix_tree": [], "flat": []}
    outputs = {}
    with torch.no_grad():
        for repeat in range(args.repeats + 1):  # the first round warms up (kernels, allocator) and is not counted
            for path in times:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out, stats = all_mask_logprobs(model, seq, target, prediction, budget=budget, path=path)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if repeat:
                    times[path].append(time.perf_counter() - start)
                outputs[path] = (out, stats)
    tree, flat = outputs["prefix_tree"][0], outputs["flat"][0]
    summary = {path: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                      "token_forwards": outputs[path][1].token_forwards, "forwards": outputs[path][1].forwards}
               for path, t in times.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": model.config.name_or_path, "dtype": args.dtype, "n": args.n,
        "prompt_tokens": length, "target_tokens": target_len, "repeats": args.repeats, "paths": summary,
        "flat_over_tree_median": summary["flat"]["median_s"] / summary["prefix_tree"]["median_s"],
        "max_abs_diff_logprob": float((tree - flat).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    parser.add_argument("--n", type=int, default=10, help="players (2^n masks; default 10)")
    parser.add_argument("--tokens", type=int, default=64, help="prompt tokens (default 64)")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (default 30, as SmolLM2-135M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
