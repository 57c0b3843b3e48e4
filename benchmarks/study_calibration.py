"""Calibration of the study's laboratory students: val accuracy of label-only (sft) students by steps and lr.

    python benchmarks/study_calibration.py --size student_m --steps 350,450,500,600 --lrs 0.003,0.01 \
        --seeds 100,101,102,103

Each (size, steps, lr, seed) trains one sft student on the lab's train split (LabConfig's splits, data seed 0)
and scores it on the val split only (never test): exact-match accuracy, answer NLL (nats per answer token,
teacher-forced) and the train accuracy on 500 training problems. The seeds are tuning seeds, disjoint from the
grid's. LabConfig.student_steps is read off this table: the steps at which sft lands in 30-70% val accuracy.

Writes benchmarks/results/study/sft_calibration.json, one row per student, merged with the rows already there
(a rerun replaces the rows of the same (size, steps, lr, seed)); each row is written as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdi_fast._io import write_json_atomic  # noqa: E402
from kdi_fast.study import measure  # noqa: E402
from kdi_fast.study.lab import LabConfig  # noqa: E402
from kdi_fast.study.models import make_model  # noqa: E402
from kdi_fast.study.task import make_splits, make_tokenizer  # noqa: E402
from kdi_fast.study.train import train  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "study" / "sft_calibration.json"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def calibrate_one(size: str, steps: int, lr: float, seed: int, splits, tokenizer, config: LabConfig) -> dict:
    """One sft student of `size` trained `steps` steps at `lr` with tuning seed `seed`: its val scores."""
    student = make_model(size, tokenizer, seed=1000 * (1 + seed))  # the lab's initialisation rule
    with tempfile.TemporaryDirectory() as work:
        seconds = train(student, tokenizer, splits.train, Path(work) / "run", method="sft", steps=steps,
                        batch_size=config.student_batch, lr=lr, seed=seed, warmup_steps=steps // 20)
    val = measure.text_scores(splits.val, measure.greedy_outputs(student, tokenizer, splits.val), None)
    seen = splits.train[:500]
    train_acc = measure.text_scores(seen, measure.greedy_outputs(student, tokenizer, seen), None)
    return {"size": size, "steps": steps, "lr": lr, "seed": seed, "val_accuracy": val["accuracy"],
            "val_nll": measure.answer_nll(student, tokenizer, splits.val), "train_accuracy": train_acc["accuracy"],
            "train_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", required=True, choices=("student_s", "student_m"))
    p.add_argument("--steps", type=_ints, required=True, help="comma-separated step counts")
    p.add_argument("--lrs", type=_floats, required=True, help="comma-separated learning rates")
    p.add_argument("--seeds", type=_ints, default=[100, 101, 102, 103], help="tuning seeds (not the grid's)")
    p.add_argument("--output", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = LabConfig()
    if set(args.seeds) & set(config.seeds):
        p.error(f"--seeds must avoid the grid's seeds {list(config.seeds)} (they are reported on test)")
    tokenizer = make_tokenizer()
    splits = make_splits(teacher_train=config.teacher_train, train=config.train, val=config.val, test=config.test,
                         seed=config.data_seed)
    rows = json.loads(args.output.read_text())["rows"] if args.output.is_file() else []
    for steps in args.steps:
        for lr in args.lrs:
            for seed in args.seeds:
                started = time.perf_counter()
                row = calibrate_one(args.size, steps, lr, seed, splits, tokenizer, config)
                key = (row["size"], row["steps"], row["lr"], row["seed"])
                rows = [r for r in rows if (r["size"], r["steps"], r["lr"], r["seed"]) != key] + [row]
                rows.sort(key=lambda r: (r["size"], r["steps"], r["lr"], r["seed"]))
                write_json_atomic(args.output, {"what": "val accuracy of sft lab students (benchmarks/"
                                                "study_calibration.py)", "rows": rows})
                print(f"{args.size} steps {steps} lr {lr:g} seed {seed}: val accuracy {row['val_accuracy']:.3f}, "
                      f"val NLL {row['val_nll']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
