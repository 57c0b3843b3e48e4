"""The laboratory tier: one teacher, two student sizes, the grid of methods x CIP x seeds, and the sweeps.

    run_lab(out_dir, LabConfig())     # resumable: one JSON per (cell, seed) in out_dir/runs/, written atomically

Layout of out_dir:
  splits.json                 sizes and a digest of each split
  teacher/                    the teacher's distill() run (its student/ folder is the teacher)
  teacher.json                the teacher's accuracy (val, test) and parameters
  teacher_interactions/{masking}/{i}.safetensors   the teacher's InteractionResults (the like= of every student)
  runs/{cell}__seed{s}.json   one run: accuracies, agreement, fidelity, interaction scores under both maskings
  work/                       distill() folders of runs in progress (removed when a run is written)

A killed run leaves its run file absent; a rerun skips every written run and redoes only the missing ones.
The teacher's training resumes from its checkpoint (distill's own resumption).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._io import write_json_atomic
from . import measure
from .models import make_model, num_parameters
from .task import make_splits, make_tokenizer
from .train import train

__all__ = ["LabConfig", "Cell", "grid", "run_lab", "quick_config"]

MASKINGS = ("embedding", "attention")
KD_METHODS = ("kd", "rkl", "gkd", "distillm", "abkd", "seqkd")
METHODS = ("sft", *KD_METHODS)


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid (run at several seeds)."""

    size: str
    method: str
    cip: float = 0.0
    temperature: float = 1.0
    noise: float = 0.0

    @property
    def name(self) -> str:
        parts = [self.size, self.method]
        if self.cip:
            parts.append(f"cip{self.cip:g}")
        if self.temperature != 1.0:
            parts.append(f"T{self.temperature:g}")
        if self.noise:
            parts.append(f"sigma{self.noise:g}")
        return "_".join(parts)


@dataclass(frozen=True)
class LabConfig:
    sizes: tuple[str, ...] = ("student_s", "student_m")
    methods: tuple[str, ...] = METHODS
    cip_weights: tuple[float, ...] = (0.1, 1.0)  # the first for every method; all of them for kd and gkd
    multi_cip_methods: tuple[str, ...] = ("kd", "gkd")
    noises: tuple[float, ...] = (1.0, 2.0, 5.0)  # kd, smaller size (sigma 0 is the kd cell itself)
    temperatures: tuple[float, ...] = (2.0, 5.0)  # kd, smaller size (T 1 is the kd cell itself)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    data_seed: int = 0
    teacher_train: int = 20000
    train: int = 5000
    val: int = 500
    test: int = 500
    interaction_prompts: int = 32
    teacher_steps: int = 1500
    teacher_lr: float = 2e-3
    teacher_batch: int = 64
    student_steps: int = 350  # chosen on val: sft val accuracy in 30-70% at both sizes
    student_lr: float = 3e-3
    student_batch: int = 64
    cip_m: int = 3
    cip_batch_share: float = 0.25  # CIP on a quarter of each batch's prompts (2^m masked forwards each)
    threads: int = 1


def quick_config() -> LabConfig:
    """A tiny grid for the CI test: every method, both maskings, a few steps, 2 seeds, one CIP weight."""
    return LabConfig(cip_weights=(0.5,), noises=(5.0,), temperatures=(2.0,), seeds=(0, 1), teacher_train=200,
                     train=100, val=16, test=16, interaction_prompts=2, teacher_steps=4, teacher_batch=8,
                     student_steps=2, student_batch=4, cip_m=2, threads=1)


def grid(config: LabConfig) -> list[Cell]:
    """Every cell, most important first (runs go cell by cell, all seeds of a cell together, so a grid stopped
    early has its first cells complete at every seed): sft, kd, kd+CIP, gkd, gkd+CIP at both sizes, the noise
    and temperature sweeps, then the other methods without and with CIP, then the further CIP weights."""
    cells: list[Cell] = []
    for size in config.sizes:
        cells += [Cell(size, "sft"), Cell(size, "kd"), Cell(size, "kd", cip=config.cip_weights[0])]
    small = config.sizes[0]
    cells += [Cell(small, "kd", noise=s) for s in config.noises]
    cells += [Cell(small, "kd", temperature=t) for t in config.temperatures]
    for size in config.sizes:
        cells += [Cell(size, "gkd"), Cell(size, "gkd", cip=config.cip_weights[0])]
    for size in config.sizes:
        for method in config.methods:
            for i, weight in enumerate(config.cip_weights):
                if i > 0 and method not in config.multi_cip_methods:
                    continue
                for cip in (0.0, weight):
                    cell = Cell(size, method, cip=cip)
                    if cell not in cells:
                        cells.append(cell)
    return cells


def _digest(examples) -> str:
    return hashlib.sha256("\n".join(e.prompt + "|" + e.response for e in examples).encode()).hexdigest()[:16]


class _Lab:
    """The shared state of one lab run: tokenizer, splits, teacher, its outputs and interactions."""

    def __init__(self, out: Path, config: LabConfig, log):
        self.out, self.config, self.log = out, config, log
        self.tokenizer = make_tokenizer()
        self.splits = make_splits(teacher_train=config.teacher_train, train=config.train, val=config.val,
                                  test=config.test, seed=config.data_seed)
        self.probe = self.splits.test[:config.interaction_prompts]  # the prompts of every interaction measure
        write_json_atomic(out / "splits.json", {
            name: {"size": len(getattr(self.splits, name)), "digest": _digest(getattr(self.splits, name))}
            for name in ("teacher_train", "train", "val", "test")} | {
            "interaction_prompts": len(self.probe), "data_seed": config.data_seed})
        self.teacher = self._teacher()
        self.teacher_val = measure.greedy_outputs(self.teacher, self.tokenizer, self.splits.val)
        self.teacher_test = measure.greedy_outputs(self.teacher, self.tokenizer, self.splits.test)
        self.teacher_results = {m: self._teacher_interactions(m) for m in MASKINGS}
        self.logits_cache: dict = {}

    def _teacher(self):
        c = self.config
        teacher = make_model("teacher", self.tokenizer, seed=c.data_seed)
        started = time.perf_counter()
        seconds = train(teacher, self.tokenizer, self.splits.teacher_train, self.out / "teacher", method="sft",
                        steps=c.teacher_steps, batch_size=c.teacher_batch, lr=c.teacher_lr, seed=c.data_seed,
                        warmup_steps=c.teacher_steps // 20)
        info_path = self.out / "teacher.json"
        if not info_path.is_file():
            val = measure.text_scores(self.splits.val, measure.greedy_outputs(teacher, self.tokenizer,
                                                                              self.splits.val), None)
            test = measure.text_scores(self.splits.test, measure.greedy_outputs(teacher, self.tokenizer,
                                                                                self.splits.test), None)
            write_json_atomic(info_path, {"parameters": num_parameters(teacher), "steps": c.teacher_steps,
                                          "train_seconds": seconds, "val_accuracy": val["accuracy"],
                                          "test_accuracy": test["accuracy"]})
            self.log(f"teacher: {num_parameters(teacher)} parameters, val accuracy {val['accuracy']:.3f}, "
                     f"test accuracy {test['accuracy']:.3f} ({time.perf_counter() - started:.0f} s)")
        teacher.eval()
        return teacher

    def _teacher_interactions(self, masking: str) -> list:
        from ..engine.result import InteractionResult

        folder = self.out / "teacher_interactions" / masking
        paths = [folder / f"{i}.safetensors" for i in range(len(self.probe))]
        if all(p.is_file() for p in paths):
            return [InteractionResult.load(p) for p in paths]
        results = measure.interactions_of(self.teacher, self.tokenizer, self.probe, masking=masking)
        folder.mkdir(parents=True, exist_ok=True)
        for result, path in zip(results, paths):
            result.save(path)
        return results

    def run(self, cell: Cell, seed: int) -> dict:
        c, tok = self.config, self.tokenizer
        work = self.out / "work" / f"{cell.name}__seed{seed}"
        student = make_model(cell.size, tok, seed=1000 * (1 + seed))
        seconds = train(student, tok, self.splits.train, work, method=cell.method, steps=c.student_steps,
                        batch_size=c.student_batch, lr=c.student_lr, seed=seed, teacher=self.teacher,
                        temperature=cell.temperature, teacher_noise=cell.noise, cip_weight=cell.cip, cip_m=c.cip_m,
                        cip_batch_share=c.cip_batch_share,
                        warmup_steps=c.student_steps // 20, teacher_logits_cache=self.logits_cache,
                        seqkd_cache=self.out / "seqkd_teacher_outputs.json", validation=self.splits.val[:16])
        started = time.perf_counter()
        val = measure.text_scores(self.splits.val, measure.greedy_outputs(student, tok, self.splits.val),
                                  self.teacher_val)
        test = measure.text_scores(self.splits.test, measure.greedy_outputs(student, tok, self.splits.test),
                                   self.teacher_test)
        interactions, profiles, masks_per_second = {}, {}, {}
        for masking in MASKINGS:
            teacher_results = self.teacher_results[masking]
            begun = time.perf_counter()
            results = measure.interactions_of(student, tok, self.probe, masking=masking, like=teacher_results)
            masks_per_second[masking] = sum(r.values.shape[0] for r in results) / (time.perf_counter() - begun)
            interactions[masking] = measure.interaction_scores(results, teacher_results)
            profiles[masking] = measure.order_strength(results)
        record = {"cell": asdict(cell), "name": cell.name, "seed": seed, "parameters": num_parameters(student),
                  "train_seconds": seconds, "eval_seconds": time.perf_counter() - started,
                  "val_accuracy": val["accuracy"], "val_agreement": val["agreement"],
                  "test_accuracy": test["accuracy"], "test_agreement": test["agreement"],
                  "test_fidelity": test["fidelity"], "interactions": interactions, "order_strength": profiles,
                  "masks_per_second": masks_per_second, "steps_per_second": c.student_steps / max(seconds, 1e-9),
                  "config": {"steps": c.student_steps, "lr": c.student_lr, "batch_size": c.student_batch,
                             "cip_m": c.cip_m, "cip_batch_share": c.cip_batch_share}}
        return record


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run_file(out: Path, cell: Cell, seed: int) -> Path:
    return out / "runs" / f"{cell.name}__seed{seed}.json"


def run_lab(out_dir: str | Path, config: LabConfig | None = None, *, progress: bool = True,
            log=print, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Run (or resume) the lab grid in out_dir; returns every run's record (also the ones written before).

    shard=(i, k): run only jobs i, i + k, i + 2k, ... of the grid's order (k processes share a CPU's cores; each
    writes its own runs, so they never overlap); the records returned are those written so far."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be (i, k) with 0 <= i < k, got {shard}")
    from tqdm.auto import tqdm

    config = config or LabConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "lab_config.json"
    if config_path.is_file():
        old = json.loads(config_path.read_text())
        if old != json.loads(json.dumps(asdict(config))):
            raise ValueError(f"{out} holds a lab run with another configuration; resume it with the same options "
                             f"or choose another output directory")
    write_json_atomic(config_path, asdict(config))
    torch.set_num_threads(config.threads)
    jobs = [(cell, seed) for cell in grid(config) for seed in config.seeds]
    todo = [(c, s) for c, s in jobs[index::count] if not run_file(out, c, s).is_file()]
    log(f"lab: {len(jobs)} runs ({len(grid(config))} cells x {len(config.seeds)} seeds), {len(todo)} to do")
    if todo:
        lab = _Lab(out, config, log)
        mine = len(jobs[index::count])
        bar = tqdm(total=mine, initial=mine - len(todo), unit="run", desc="lab", disable=not progress,
                   dynamic_ncols=True, smoothing=0.05)
        for cell, seed in todo:
            bar.set_postfix_str(f"{cell.name} seed {seed}", refresh=True)
            record = lab.run(cell, seed)
            write_json_atomic(run_file(out, cell, seed), _finite(record))
            shutil.rmtree(out / "work" / f"{cell.name}__seed{seed}", ignore_errors=True)
            bar.update(1)
        bar.close()
    return [json.loads(run_file(out, c, s).read_text()) for c, s in jobs if run_file(out, c, s).is_file()]
