"""Overhead of `kdi distill --method kd` against TRL's own off-policy distillation trainer, step for step.

    python benchmarks/bench_distill.py [--quick] [--rounds R] [--steps S] [--device cpu|cuda] [--output STEM]

Both train the same student (from the same initial weights) against the same teacher on the same chat-formatted
(prompt, response) pairs, batch size and maximum length, with the same divergence: forward KL(teacher || student)
at temperature 1 on the response tokens, AdamW at the same learning rate, a step logged every step, no checkpoint.
  kdi   kdi_fast.distill.distill(..., DistillConfig("kd")): what `kdi distill --method kd` runs (DistillTrainer)
  trl   trl.experimental.gkd.GKDTrainer with lmbda=0 (no student samples), beta=0 (its generalised JSD is then the
        forward KL), seq_kd=False. TRL's DistillationTrainer (trl>=1.0) samples a completion from the student at
        every step (it is on-policy only), so its step time measures generation, not the training step; GKDTrainer
        with lmbda=0 is TRL's trainer for the same off-policy KD step.
A step's time is the wall time between the ends of consecutive optimizer steps (data, teacher and student forward,
loss, backward, optimizer, logging), taken by the same callback definition in both; the first `warmup` steps of each
run are dropped and the run's median is kept. Rounds are paired and interleaved (kdi then trl, then trl then kdi,
...): the ratio of a round is its kdi median over its trl median; reported: the median ratio over the rounds with
a distribution-free 95% interval (order statistics of the binomial(R, 1/2)). Target (issue 12): <= 1.05.

Writes benchmarks/results/distill.json (with the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_interval as _median_interval, results_dir, write_text_atomic  # noqa: E402


def _models(quick: bool):
    from kdi_fast.models import tiny_causal_lm

    size = dict(hidden_size=64, num_layers=2, num_heads=4) if quick else dict(hidden_size=128, num_layers=2,
                                                                               num_heads=4)
    teacher = tiny_causal_lm("llama", seed=1, **{**size, "num_layers": size["num_layers"] * 2})
    student = tiny_causal_lm("llama", seed=2, **size)
    return teacher, student


def _pairs(n: int):
    from kdi_fast.distill import load_examples

    return load_examples(f"instruct:{n}", seed=0)


class _StepTimes:
    """TrainerCallback: wall time between consecutive ends of optimizer steps (the first from train begin)."""

    def __init__(self):
        self.times: list[float] = []
        self.last = time.perf_counter()

    def on_train_begin(self, *args, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def _run_kdi(teacher, student, tokenizer, examples, args, work: Path) -> list[float]:
    from kdi_fast.distill import DistillConfig, distill

    config = DistillConfig("kd", steps=args.steps, batch_size=args.batch_size, lr=1e-4, max_length=args.max_length,
                           checkpoint_every=10**9, max_grad_norm=1.0)
    out = Path(tempfile.mkdtemp(dir=work))
    distill(teacher, student, tokenizer, examples, out, config, progress=False)
    return [json.loads(line)["seconds"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _run_trl(teacher, student, tokenizer, examples, args, work: Path) -> list[float]:
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

    chats = Dataset.from_list([dict(messages=[{"role": "user", "content": e.prompt},
                                              {"role": "assistant", "content": e.response}]) for e in examples])
    timer = _StepTimes()
    callback = type("Timer", (TrainerCallback,), {"on_train_begin": timer.on_train_begin,
                                                  "on_step_end": timer.on_step_end})()
    config = GKDConfig(output_dir=tempfile.mkdtemp(dir=work), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size, learning_rate=1e-4, lr_scheduler_type="linear",
                       logging_steps=1, report_to="none", use_cpu=args.device == "cpu", bf16=False,
                       save_strategy="no", disable_tqdm=True, lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
                       max_length=args.max_length, max_grad_norm=1.0, seed=0)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=chats,
                         processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    return timer.times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, 3 rounds of 6 steps")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="distill")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 9)
    args.steps = args.steps or (6 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    from kdi_fast.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    examples = _pairs(args.steps * args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            medians = {}
            order = ("kdi", "trl") if r % 2 == 0 else ("trl", "kdi")
            for name in order:
                teacher, student = _models(args.quick)
                teacher, student = teacher.to(args.device), student.to(args.device)
                run = _run_kdi if name == "kdi" else _run_trl
                times = run(teacher, student, tokenizer, examples, args, work)[args.warmup:]
                medians[name] = statistics.median(times)
            rows.append({"round": r, "kdi_s": medians["kdi"], "trl_s": medians["trl"],
                         "ratio": medians["kdi"] / medians["trl"]})
            print(f"round {r}: kdi {medians['kdi'] * 1e3:.1f} ms/step, trl {medians['trl'] * 1e3:.1f} ms/step, "
                  f"ratio {rows[-1]['ratio']:.3f}", flush=True)
    ratios = [row["ratio"] for row in rows]
    low, high = _median_interval(ratios)
    summary = {"median_ratio": statistics.median(ratios), "ci95": [low, high], "rounds": len(rows),
               "kdi_ms_median": 1e3 * statistics.median(r["kdi_s"] for r in rows),
               "trl_ms_median": 1e3 * statistics.median(r["trl_s"] for r in rows), "target": 1.05}
    print(f"kdi / trl step time: median ratio {summary['median_ratio']:.3f} (95% interval {low:.3f} .. {high:.3f}) "
          f"over {len(rows)} rounds")
    import trl
    import transformers

    report = {"benchmark": "distill_step_time", "created": datetime.now(timezone.utc).isoformat(),
              "command": "python benchmarks/bench_distill.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {k: v for k, v in vars(args).items()}, "versions": {"trl": trl.__version__,
              "transformers": transformers.__version__, "torch": torch.__version__},
              "machine": machine(), "summary": summary, "rounds": rows}
    path = results_dir(args.quick) / f"{args.output}.json"
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
