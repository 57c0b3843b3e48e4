"""Calibration of the study's students: val accuracy of label-only (sft) students by steps and lr.

    python benchmarks/study_calibration.py --size student_m --steps 350,450,500,600 --lrs 0.003,0.01 \
        --seeds 100,101,102,103
    python benchmarks/study_calibration.py --real runs/study-real --size layers6 --steps 300 --lrs 0.001 --seeds 100

Lab tier (--size student_s|student_m): a fresh model of that size, LabConfig's splits.
Real tier (--real DIR --size layersK): the fine-tuned teacher of the real-tier run in DIR cut to K layers
(kdi_fast.models.student_from_teacher, as the tier's students), RealConfig's splits and prompt format.

Each (size, steps, lr, seed) trains one sft student on the tier's train split and scores it on the val split
only (never test): exact-match accuracy, answer NLL (nats per answer token, teacher-forced) and the accuracy on
500 training problems. Seeds may be tuning seeds or the grid's own: only val and train are scored, so choosing
the steps on the grid's seeds is choosing them on val. LabConfig.student_steps is read off this table: the
steps at which sft, at the lr the lab's tuning chooses, lands in 30-70% val accuracy.

Writes benchmarks/results/study/sft_calibration.json (real tier: real/sft_calibration.json), one row per
student, merged with the rows already there (a rerun replaces the rows of the same (size, steps, lr, seed));
each row is written as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


@dataclass
class _Setup:
    """What one tier's sft students need: a fresh student per seed, the tokenizer, the splits, the batch size,
    extra options of `train`, and the tier's greedy decoder."""
    make_student: Callable[[int], torch.nn.Module]
    tokenizer: object
    splits: object
    batch: int
    greedy: Callable
    options: dict = field(default_factory=dict)


def _lab_setup(size: str) -> _Setup:
    """The lab tier's students of `size` (fresh models, the lab's initialisation rule)."""
    config = LabConfig()
    if size not in config.sizes:
        raise SystemExit(f"--size must be one of {', '.join(config.sizes)} for the lab tier, got {size!r}")
    tokenizer = make_tokenizer()
    splits = make_splits(teacher_train=config.teacher_train, train=config.train, val=config.val, test=config.test,
                         seed=config.data_seed)

    def make_student(seed: int):
        return make_model(size, tokenizer, seed=1000 * (1 + seed))  # the lab's initialisation rule

    return _Setup(make_student, tokenizer, splits, config.student_batch, measure.greedy_outputs)


def _real_setup(run_dir: Path, size: str) -> _Setup:
    """The same for the real tier: the teacher of the run in run_dir, cut to `size` = "layersK"."""
    from transformers import AutoModelForCausalLM

    from kdi_fast.models import student_from_teacher
    from kdi_fast.study import real
    from kdi_fast.study.lab import read_config

    if not size.startswith("layers") or not size[6:].isdigit():
        raise SystemExit(f"--size must be layersK (K layers of the teacher) for the real tier, got {size!r}")
    info = run_dir / "teacher.json"
    if not info.is_file():
        raise SystemExit(f"{run_dir} has no finished teacher ({info} is missing): run `kdi study real` first")
    config = read_config(real.RealConfig, run_dir / "real_config.json")
    stages = json.loads(info.read_text())["stages"]
    teacher = AutoModelForCausalLM.from_pretrained(run_dir / "teacher" / f"stage{stages - 1}" / "student")
    tokenizer = real.real_tokenizer(config.model)
    splits = make_splits(teacher_train=config.teacher_train, train=config.train, val=config.val, test=config.test,
                         seed=config.data_seed)

    def make_student(seed: int):
        return student_from_teacher(teacher, int(size[6:]))

    options = {"max_length": real.MAX_LENGTH, "max_new_tokens": real.MAX_ANSWER_TOKENS}
    return _Setup(make_student, tokenizer, splits, config.student_batch, real.greedy_outputs, options)


def calibrate_one(setup: _Setup, size: str, steps: int, lr: float, seed: int) -> dict:
    """One sft student of `size` trained `steps` steps at `lr` with seed `seed`: its val scores."""
    student, tokenizer, splits = setup.make_student(seed), setup.tokenizer, setup.splits
    with tempfile.TemporaryDirectory() as work:
        seconds = train(student, tokenizer, splits.train, Path(work) / "run", method="sft", steps=steps,
                        batch_size=setup.batch, lr=lr, seed=seed, warmup_steps=max(1, steps // 20), **setup.options)
    val = measure.text_scores(splits.val, setup.greedy(student, tokenizer, splits.val), None)
    seen = splits.train[:500]
    train_acc = measure.text_scores(seen, setup.greedy(student, tokenizer, seen), None)
    return {"size": size, "steps": steps, "lr": lr, "seed": seed, "val_accuracy": val["accuracy"],
            "val_nll": measure.answer_nll(student, tokenizer, splits.val), "train_accuracy": train_acc["accuracy"],
            "train_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", required=True, help="student_s|student_m (lab) or layersK (real, with --real)")
    p.add_argument("--real", type=Path, default=None, help="a real-tier run directory: calibrate its students")
    p.add_argument("--steps", type=_ints, required=True, help="comma-separated step counts")
    p.add_argument("--lrs", type=_floats, required=True, help="comma-separated learning rates")
    p.add_argument("--seeds", type=_ints, default=[100, 101, 102, 103], help="seeds (scored on val only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", type=Path, default=None, help="default: results/study/[real/]sft_calibration.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = _real_setup(args.real, args.size) if args.real else _lab_setup(args.size)
    output = args.output or (OUT.parent / "real" / OUT.name if args.real else OUT)
    rows = json.loads(output.read_text())["rows"] if output.is_file() else []
    for steps in args.steps:
        for lr in args.lrs:
            for seed in args.seeds:
                started = time.perf_counter()
                row = calibrate_one(setup, args.size, steps, lr, seed)
                key = (row["size"], row["steps"], row["lr"], row["seed"])
                rows = [r for r in rows if (r["size"], r["steps"], r["lr"], r["seed"]) != key] + [row]
                rows.sort(key=lambda r: (r["size"], r["steps"], r["lr"], r["seed"]))
                write_json_atomic(output, {"what": "val accuracy of sft students (benchmarks/"
                                                "study_calibration.py)", "rows": rows})
                print(f"{args.size} steps {steps} lr {lr:g} seed {seed}: val accuracy {row['val_accuracy']:.3f}, "
                      f"val NLL {row['val_nll']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
