"""The real-model tier: SmolLM2-135M-Instruct fine-tuned (method "sft") into a teacher on the lab's digit addition
(kdi_fast.study.task: same prompts, same 8 digit-slot players), students made of its layers, distilled by kd and
gkd without and with CIP, measured exactly as the lab measures (kdi_fast.study.measure).

    run_real(out_dir, RealConfig())   # resumable: one JSON per (cell, seed) in out_dir/runs/, written atomically

Prompt format: the raw task text and a newline ("7 4 _ _ + 9 8 5 _ =\\n"), in training, generation and interactions
alike (a one-line chat template replaces SmolLM2's, whose ~30-token system prompt would triple every sequence on
the CPU). The answer follows as SmolLM2 tokenizes it ("6 3 6": digits and space tokens) and ends with <|im_end|>.
Masking baseline "pad": SmolLM2's pad token <|im_end|> (the end of every training response).

Layout of out_dir (as the lab's, kdi_fast.study.lab):
  real_config.json, splits.json
  teacher/stage{k}/           the teacher's distill() runs, one per stage (each resumes from its checkpoints)
  teacher_stages.json         val accuracy after each stage (the stopping rule: teacher_target on val)
  teacher.json                the teacher's accuracy (val, test), parameters, steps and training seconds
  teacher_outputs.json        the teacher's greedy outputs on val and test (agreement, fidelity)
  teacher_interactions/{masking}/{i}.safetensors
  runs/{cell}__seed{s}.json   one run: accuracies, agreement, fidelity, interaction scores under both maskings
  work/                       distill() folders of runs in progress (resumed after a kill, removed when written)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._io import write_json_atomic
from . import measure
from .lab import MASKINGS, Cell, _digest, _finite, run_file
from .models import num_parameters
from .task import digit_players, make_splits
from .train import train

__all__ = ["RealConfig", "quick_config", "cells", "run_real", "PLAIN_TEMPLATE", "real_tokenizer"]

# the chat template of the real tier: the user's text and a newline (what distill formats without a template)
PLAIN_TEMPLATE = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"
MAX_ANSWER_TOKENS = 10  # SmolLM2 tokens of the longest answer ("1 9 9 9 8": 5 digits, 4 spaces) and <|im_end|>
MAX_LENGTH = 32  # prompt (at most 17 tokens), newline and answer


STUDENT_FIELDS = ("student_layers", "methods", "cip_weight", "cip_methods", "seeds", "student_steps", "student_lr",
                  "student_batch", "cip_m", "cip_batch_share")


@dataclass(frozen=True)
class RealConfig:
    model: str = "smollm2"  # the teacher's base model (kdi_fast.models.load_model); "tiny" for --quick
    # students keep K of the teacher's 30 layers (kdi_fast.models.student_from_teacher); layers, steps and lr chosen
    # on val (benchmarks/study_calibration.py --real, real/sft_calibration.json): sft at 15 layers, 300 steps, lr
    # 3e-4 scored 52% on val; at 6 layers, 300 steps, lr 1e-3 1.5%
    student_layers: int = 15
    methods: tuple[str, ...] = ("sft", "kd", "gkd")
    cip_weight: float = 0.1  # taken from the lab tier (its validation chose 0.1 over 1.0 for kd and gkd)
    cip_methods: tuple[str, ...] = ("kd", "gkd")
    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 0
    teacher_train: int = 8000
    train: int = 4000
    val: int = 200
    test: int = 200
    interaction_prompts: int = 32
    teacher_stage_steps: int = 50  # the teacher trains in stages (each one distill run of these steps) ...
    teacher_max_stages: int = 16  # ... until its val accuracy reaches teacher_target, at most this many stages
    # (16 x 50 steps: ~25 min of the idle 2-core CPU at 1.7 s a step; may be raised on resume)
    # val accuracy that stops the teacher's training: the 60% plus a margin for the 200 val prompts (one
    # standard error is 3.5 points; a teacher stopped at val 0.600 scored 0.590 on test)
    teacher_target: float = 0.65
    teacher_lr: float = 2e-4
    teacher_batch: int = 8
    student_steps: int = 300
    student_lr: float = 3e-4
    student_batch: int = 8
    cip_m: int = 3
    cip_batch_share: float = 0.25
    checkpoint_every: int = 25
    threads: int = 2


def quick_config() -> RealConfig:
    """The CI grid: a tiny random Llama as the 'teacher' (SmolLM2's tokenizer), every cell, both maskings."""
    return RealConfig(model="tiny", student_layers=1, seeds=(0, 1), teacher_train=40, train=20, val=8, test=8,
                      interaction_prompts=2, teacher_stage_steps=2, teacher_max_stages=1, teacher_target=0.0,
                      teacher_batch=4, student_steps=2, student_batch=2,
                      cip_m=2, checkpoint_every=1, threads=1)


def cells(config: RealConfig) -> list[Cell]:
    """sft (the student before distillation), then each KD method without and with CIP."""
    size = f"layers{config.student_layers}"
    out = []
    for method in config.methods:
        out.append(Cell(size, method))
        if method in config.cip_methods:
            out.append(Cell(size, method, cip=config.cip_weight))
    return out


def real_tokenizer(model: str = "smollm2"):
    """SmolLM2's tokenizer with PLAIN_TEMPLATE as its chat template (see the module's docstring)."""
    from ..models import load_tokenizer

    tok = load_tokenizer("smollm2" if model == "tiny" else model)
    tok.chat_template = PLAIN_TEMPLATE
    return tok


def _base_model(config: RealConfig):
    from ..models import load_model, tiny_causal_lm

    if config.model == "tiny":
        return tiny_causal_lm("llama", hidden_size=32, num_layers=2, seed=config.data_seed)
    return load_model(config.model)


@torch.no_grad()
def greedy_outputs(model, tokenizer, examples, *, batch_size: int = 64) -> list[str]:
    """Greedy answers (at most MAX_ANSWER_TOKENS tokens, stopped at <|im_end|>, special tokens dropped) to the
    prompts in the tier's format; prompts of different lengths are left-padded."""
    from ..distill.datasets import tokenize_prompts

    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    out: list[str] = []
    try:
        for start in range(0, len(examples), batch_size):
            rows = tokenize_prompts(tokenizer, [e.prompt for e in examples[start:start + batch_size]])
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_ANSWER_TOKENS,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def interactions_of(model, tokenizer, examples, *, masking: str, like=None) -> list:
    """kdi_fast.engine.compute_interactions in the tier's format: players the 8 digit slots, y* the true answer,
    baseline "pad"; like: the teacher's results (their y*, players and masking are reused)."""
    from ..engine import compute_interactions

    prompts = [e.prompt for e in examples]
    same = dict(masking=masking, baseline="pad", chat_template=True, progress=False)
    if like is not None:
        return compute_interactions(model, tokenizer, prompts, like=like, **same)
    return compute_interactions(model, tokenizer, prompts, targets=[e.response for e in examples],
                                players=[digit_players()] * len(examples), max_target_tokens=MAX_ANSWER_TOKENS, **same)


class _Real:
    """The shared state of one real-tier run: tokenizer, splits, teacher, its outputs and interactions."""

    def __init__(self, out: Path, config: RealConfig, log):
        self.out, self.config, self.log = out, config, log
        self.tokenizer = real_tokenizer(config.model)
        self.splits = make_splits(teacher_train=config.teacher_train, train=config.train, val=config.val,
                                  test=config.test, seed=config.data_seed)
        self.probe = self.splits.test[:config.interaction_prompts]
        write_json_atomic(out / "splits.json", {
            name: {"size": len(getattr(self.splits, name)), "digest": _digest(getattr(self.splits, name))}
            for name in ("teacher_train", "train", "val", "test")} | {
            "interaction_prompts": len(self.probe), "data_seed": config.data_seed})
        self.teacher = self._teacher()
        self.teacher_val, self.teacher_test = self._teacher_outputs()
        self.teacher_results = {m: self._teacher_interactions(m) for m in MASKINGS}

    def _teacher(self):
        """SmolLM2 fine-tuned with method sft in stages of teacher_stage_steps (each stage a distill run from the
        previous stage's weights, with its own warm-up and decay and data-order seed) until its val accuracy
        reaches teacher_target; raises RuntimeError when teacher_max_stages stages do not reach it."""
        c = self.config
        teacher = _base_model(c)
        stages_path = self.out / "teacher_stages.json"
        stages = json.loads(stages_path.read_text()) if stages_path.is_file() else []
        for k in range(c.teacher_max_stages):
            seconds = train(teacher, self.tokenizer, self.splits.teacher_train, self.out / "teacher" / f"stage{k}",
                            method="sft", steps=c.teacher_stage_steps, batch_size=c.teacher_batch, lr=c.teacher_lr,
                            seed=c.data_seed + k, warmup_steps=max(1, c.teacher_stage_steps // 10),
                            max_length=MAX_LENGTH, max_new_tokens=MAX_ANSWER_TOKENS,
                            checkpoint_every=c.checkpoint_every, validation=self.splits.val[:16])
            if k == len(stages):
                val = measure.text_scores(self.splits.val, greedy_outputs(teacher, self.tokenizer, self.splits.val),
                                          None)["accuracy"]
                stages.append({"stage": k, "steps": (k + 1) * c.teacher_stage_steps, "train_seconds": seconds,
                               "val_accuracy": val})
                write_json_atomic(stages_path, stages)
                self.log(f"teacher stage {k}: {(k + 1) * c.teacher_stage_steps} steps, val accuracy {val:.3f}")
            if stages[k]["val_accuracy"] >= c.teacher_target:
                break
        else:
            raise RuntimeError(
                f"the teacher reached val accuracy {stages[-1]['val_accuracy']:.3f} after {len(stages)} stages of "
                f"{c.teacher_stage_steps} steps, below the target {c.teacher_target}: the task family is too hard "
                f"for this budget; choose an easier one (or more stages) in another output directory")
        teacher.eval()
        info_path = self.out / "teacher.json"
        if info_path.is_file() and json.loads(info_path.read_text())["stages"] != k + 1:  # the target changed
            self.log(f"the teacher now has {k + 1} stages: its accuracy, outputs and interactions are recomputed")
            for stale in (info_path, self.out / "teacher_outputs.json"):
                stale.unlink(missing_ok=True)
            shutil.rmtree(self.out / "teacher_interactions", ignore_errors=True)
        if not info_path.is_file():
            test = measure.text_scores(self.splits.test, greedy_outputs(teacher, self.tokenizer, self.splits.test),
                                       None)
            seconds = sum(st["train_seconds"] for st in stages[:k + 1])
            steps = (k + 1) * c.teacher_stage_steps
            write_json_atomic(info_path, {"model": c.model, "parameters": num_parameters(teacher), "steps": steps,
                                          "stages": k + 1, "batch_size": c.teacher_batch, "lr": c.teacher_lr,
                                          "train_seconds": seconds, "step_seconds": seconds / steps,
                                          "val_accuracy": stages[k]["val_accuracy"],
                                          "test_accuracy": test["accuracy"]})
            self.log(f"teacher: val accuracy {stages[k]['val_accuracy']:.3f}, test accuracy {test['accuracy']:.3f}")
        return teacher

    def _teacher_outputs(self) -> tuple[list[str], list[str]]:
        path = self.out / "teacher_outputs.json"
        if not path.is_file():
            write_json_atomic(path, {"val": greedy_outputs(self.teacher, self.tokenizer, self.splits.val),
                                     "test": greedy_outputs(self.teacher, self.tokenizer, self.splits.test)})
        saved = json.loads(path.read_text())
        return saved["val"], saved["test"]

    def _teacher_interactions(self, masking: str) -> list:
        from ..engine.result import InteractionResult

        folder = self.out / "teacher_interactions" / masking
        paths = [folder / f"{i}.safetensors" for i in range(len(self.probe))]
        if all(p.is_file() for p in paths):
            return [InteractionResult.load(p) for p in paths]
        begun = time.perf_counter()
        results = interactions_of(self.teacher, self.tokenizer, self.probe, masking=masking)
        seconds = time.perf_counter() - begun
        folder.mkdir(parents=True, exist_ok=True)
        for result, path in zip(results, paths):
            result.save(path)
        write_json_atomic(folder / "speed.json", {"masks": sum(r.values.shape[0] for r in results),
                                                  "seconds": seconds})
        return results

    def student(self):
        from ..models import student_from_teacher

        return student_from_teacher(self.teacher, self.config.student_layers)

    def run(self, cell: Cell, seed: int) -> dict:
        c, tok = self.config, self.tokenizer
        work = self.out / "work" / f"{cell.name}__seed{seed}"
        student = self.student()
        seconds = train(student, tok, self.splits.train, work, method=cell.method, steps=c.student_steps,
                        batch_size=c.student_batch, lr=c.student_lr, seed=seed, teacher=self.teacher,
                        cip_weight=cell.cip, cip_m=c.cip_m, cip_batch_share=c.cip_batch_share,
                        warmup_steps=max(1, c.student_steps // 20), validation=self.splits.val[:16],
                        max_length=MAX_LENGTH, max_new_tokens=MAX_ANSWER_TOKENS,
                        checkpoint_every=c.checkpoint_every)
        started = time.perf_counter()
        val = measure.text_scores(self.splits.val, greedy_outputs(student, tok, self.splits.val), self.teacher_val)
        test = measure.text_scores(self.splits.test, greedy_outputs(student, tok, self.splits.test),
                                   self.teacher_test)
        interactions, profiles, masks_per_second = {}, {}, {}
        for masking in MASKINGS:
            teacher_results = self.teacher_results[masking]
            begun = time.perf_counter()
            results = interactions_of(student, tok, self.probe, masking=masking, like=teacher_results)
            masks_per_second[masking] = sum(r.values.shape[0] for r in results) / (time.perf_counter() - begun)
            interactions[masking] = measure.interaction_scores(results, teacher_results)
            profiles[masking] = measure.order_strength(results)
        return {"cell": asdict(cell), "name": cell.name, "seed": seed, "parameters": num_parameters(student),
                "train_seconds": seconds, "eval_seconds": time.perf_counter() - started,
                "val_accuracy": val["accuracy"], "val_agreement": val["agreement"],
                "test_accuracy": test["accuracy"], "test_agreement": test["agreement"],
                "test_fidelity": test["fidelity"], "interactions": interactions, "order_strength": profiles,
                "masks_per_second": masks_per_second, "steps_per_second": c.student_steps / max(seconds, 1e-9),
                "config": {"steps": c.student_steps, "lr": c.student_lr, "batch_size": c.student_batch,
                           "cip_m": c.cip_m, "cip_batch_share": c.cip_batch_share,
                           "student": f"layers:{c.student_layers} of the fine-tuned teacher"}}


def run_real(out_dir: str | Path, config: RealConfig | None = None, *, progress: bool = True,
             log=print) -> list[dict]:
    """Run (or resume) the real tier in out_dir; returns every run's record written so far (also earlier ones)."""
    from tqdm.auto import tqdm

    config = config or RealConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path, changed = out / "real_config.json", []
    if config_path.is_file():
        old, new = json.loads(config_path.read_text()), json.loads(json.dumps(asdict(config)))
        changed = sorted(k for k in new if old.get(k) != new[k])
        # the students' settings may still change (chosen on val) while no student run is written; the teacher's never
        changed = [k for k in changed if k != "teacher_max_stages"]  # a cap: the stages done stay valid
        # the students' settings, and the teacher's stopping target (the stages done stay valid; a teacher with
        # another number of stages gets its outputs and interactions recomputed), may change until a student run
        # is written
        if changed and (any((out / "runs").glob("*.json")) or not set(changed) <= {*STUDENT_FIELDS, "teacher_target"}):
            raise ValueError(f"{out} holds a real-tier run with another configuration ({', '.join(changed)} differ); "
                             f"resume it with the same options or choose another output directory")
    write_json_atomic(config_path, asdict(config))
    torch.set_num_threads(config.threads)
    jobs = [(cell, seed) for cell in cells(config) for seed in config.seeds]
    todo = [(c, s) for c, s in jobs if not run_file(out, c, s).is_file()]
    log(f"real: {len(jobs)} runs ({len(cells(config))} cells x {len(config.seeds)} seeds), {len(todo)} to do")
    if todo or "teacher_target" in changed or not (out / "teacher.json").is_file():
        bar = tqdm(total=len(jobs) + 1, initial=len(jobs) - len(todo), unit="run", desc="real", disable=not progress,
                   dynamic_ncols=True, smoothing=0.05)
        bar.set_postfix_str("teacher", refresh=True)
        real = _Real(out, config, log)
        bar.update(1)
        for cell, seed in todo:
            bar.set_postfix_str(f"{cell.name} seed {seed}", refresh=True)
            record = real.run(cell, seed)
            write_json_atomic(run_file(out, cell, seed), _finite(record))
            shutil.rmtree(out / "work" / f"{cell.name}__seed{seed}", ignore_errors=True)
            bar.update(1)
        bar.close()
    return [json.loads(run_file(out, c, s).read_text()) for c, s in jobs if run_file(out, c, s).is_file()]
