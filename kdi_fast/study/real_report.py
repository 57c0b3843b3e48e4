"""The real tier's report: findings.json, runs.csv, REPORT.md and plots from a `kdi study real` directory.

The claims are the lab's (kdi_fast.study.analysis.findings, the same statistics) where the real tier can speak:
sparsity after distillation, simple vs complex inheritance, the correlations with accuracy and CIP. The seed-001
claims (teacher noise, temperature, two student sizes) are not run in this tier and are reported as such. With 2
seeds a bootstrap interval over seeds has only 3 distinct resamples of a mean: such intervals are too coarse to
separate methods, and the report says so rather than reading a verdict into them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._io import write_json_atomic, write_text_atomic
from .analysis import findings
from .lab import MASKINGS, read_config
from .measure import K, MAX_SIMPLE_ORDER, SALIENT, chance_overlap
from .real import RealConfig, cells
from .report import _cell_table, _ci, _fmt, _plots, findings_table, replace_readme_block, write_runs_csv

__all__ = ["write_real_report", "REAL_CLAIMS", "README_BEGIN", "README_END"]

REAL_CLAIMS = ("sparsity", "simple_vs_complex", "correlation_gini_complex", "correlation_salient_complex_overlap",
               "cip")
_NOT_RUN = ("noise_collapse", "best_temperature", "kd_helps_smaller")
_MIN_SEEDS = 3  # fewer seeds: bootstrap intervals over seeds cannot separate methods
README_BEGIN, README_END = "<!-- real-tier-findings -->", "<!-- /real-tier-findings -->"


def _load_config(real_dir: Path) -> RealConfig:
    return read_config(RealConfig, real_dir / "real_config.json")


def calibration(real_dir: str | Path) -> dict:
    """Times and accuracies measured by a real-tier run so far: teacher stages (val accuracy, seconds), the teacher's
    interaction speed, per cell the median training seconds, steps/s and masks/s, and the projected hours of the
    whole tier (None before the teacher's interactions and one run are done)."""
    real = Path(real_dir)
    config = _load_config(real)

    def read(path: Path, default):
        return json.loads(path.read_text()) if path.is_file() else default

    speed = {m: read(real / "teacher_interactions" / m / "speed.json", None) for m in MASKINGS}
    speed = {m: v for m, v in speed.items() if v is not None}
    records = [json.loads(p.read_text()) for p in sorted((real / "runs").glob("*.json"))]
    runs: dict[str, dict] = {}
    for name in sorted({r["name"] for r in records}):
        recs = [r for r in records if r["name"] == name]
        runs[name] = {key: float(np.median([get(r) for r in recs])) for key, get in (
            ("train_seconds", lambda r: r["train_seconds"]), ("steps_per_second", lambda r: r["steps_per_second"]),
            ("masks_per_second", lambda r: np.mean(list(r["masks_per_second"].values()))),
            ("run_seconds", lambda r: r["train_seconds"] + r["eval_seconds"]))}
    stages = read(real / "teacher_stages.json", [])
    in_progress = None  # the stage being trained: its last logged step (a killed or running run resumes there)
    log = real / "teacher" / f"stage{len(stages)}" / "train_log.jsonl"
    if log.is_file() and log.read_text().strip():
        last = json.loads(log.read_text().strip().splitlines()[-1])
        in_progress = {"stage": len(stages), "step": last.get("step"), "of": config.teacher_stage_steps,
                       "last_step_seconds": last.get("seconds"), "loss": last.get("loss")}
    projected = None
    if speed and runs:
        per_run = float(np.median([v["run_seconds"] for v in runs.values()]))
        total = (sum(st["train_seconds"] for st in stages) + sum(v["seconds"] for v in speed.values())
                 + per_run * len(cells(config)) * len(config.seeds))
        projected = total / 3600
    return {"teacher": read(real / "teacher.json", None), "teacher_stages": stages,
            "teacher_stage_in_progress": in_progress, "teacher_interactions": speed,
            "runs": runs, "projected_hours": projected, "splits": read(real / "splits.json", None)}


def _results_lines(found: dict, table: list[dict]) -> list[str]:
    """The findings table and the per-cell table (test accuracy etc.), as markdown lines."""
    lines = findings_table(found) if found else ["No run finished yet."]
    lines += ["", "Not run in this tier (lab tier only): teacher noise, temperature, two student sizes.", "",
              "Cells (test accuracy: mean [95% CI] over seeds; the other columns: means):", "", "| cell | seeds | test accuracy | agreement | BLEU fidelity | Gini emb | Gini att | "
              "Overlap simple/complex emb |", "|---|---|---|---|---|---|---|---|"]
    for c in table:
        lines.append(f"| {c['cell']} | {c['seeds']} | {_ci(c['test_accuracy'])} | {_fmt(c['agreement']['mean'])} | "
                     f"{_fmt(c['fidelity']['mean'], 1)} | {_fmt(c['embedding_gini']['mean'])} | "
                     f"{_fmt(c['attention_gini']['mean'])} | {_fmt(c['embedding_overlap_simple']['mean'])} / "
                     f"{_fmt(c['embedding_overlap_complex']['mean'])} |")
    return lines


def write_real_report(real_dir: str | Path, out_dir: str | Path, *, command: str = "", plots: bool = True,
                      readme: str | Path | None = None) -> dict:
    """Read real_dir's runs, write findings.json, runs.csv, REPORT.md (and plots), a copy of every run's JSON and
    of the calibration to out_dir; returns the findings. A directory with runs missing gives a partial report.
    `readme`: also write the status, findings and cells between README_BEGIN and README_END of that file."""
    real, out = Path(real_dir), Path(out_dir)
    if not (real / "real_config.json").is_file():
        raise FileNotFoundError(f"{real} holds no real-tier run: run `kdi study real --out {real}` first")
    config = _load_config(real)
    size = f"layers{config.student_layers}"
    expected = len(cells(config)) * len(config.seeds)
    records = [json.loads(p.read_text()) for p in sorted((real / "runs").glob("*.json"))]
    out.mkdir(parents=True, exist_ok=True)
    teacher = json.loads((real / "teacher.json").read_text()) if (real / "teacher.json").is_file() else None
    splits = json.loads((real / "splits.json").read_text()) if (real / "splits.json").is_file() else None
    calib = calibration(real)
    speed = calib["teacher_interactions"]
    found, everything = {}, {}
    if records:
        everything = findings(records, sizes=[size])
        found = {name: everything[name] for name in REAL_CLAIMS}
    seeds = sorted({r["seed"] for r in records})
    for f in found.values():
        if len(seeds) < _MIN_SEEDS and f["verdict"] != "not separable":
            f["verdict_as_computed"] = f["verdict"]
            f["verdict"] = f"not separable at this scale ({len(seeds)} seeds; computed: {f['verdict']})"
    status = "complete" if len(records) == expected else f"partial: {len(records)} of {expected} runs"
    table = _cell_table(records) if records else []
    write_json_atomic(out / "findings.json", {
        "status": status, "findings": found, "not_run": list(_NOT_RUN), "teacher": teacher, "splits": splits,
        "config": json.loads((real / "real_config.json").read_text()), "cells": table, "runs": len(records)},
        default=str)
    runs_out = out / "runs"
    runs_out.mkdir(exist_ok=True)
    for p in sorted((real / "runs").glob("*.json")):
        write_text_atomic(runs_out / p.name, p.read_text())
    write_json_atomic(out / "calibration.json", calib)
    if records:
        write_runs_csv(records, out / "runs.csv")
    figures = _plots(records, everything, out, [size]) if plots and records else []

    chance = chance_overlap(8)
    lines = ["# The study, real-model tier", "", f"**Status: {status}.**", "",
             f"Command: `{command}`" if command else "", "", "## Set-up", "",
             f"Teacher: {config.model} (SmolLM2-135M-Instruct unless --quick) fine-tuned with kdi_fast.distill "
             f"method sft in stages of {config.teacher_stage_steps} steps (batch {config.teacher_batch}, lr "
             f"{config.teacher_lr}) until val accuracy >= {config.teacher_target} (at most "
             f"{config.teacher_max_stages} stages), on the "
             f"lab's task (little-endian digit addition, `7 4 _ _ + 9 8 5 _ =` -> `6 3 6`; players: the 8 digit slots).",
             "Prompt format: the task text and a newline (a one-line chat template replaces SmolLM2's system prompt); "
             "masking baseline `pad` = SmolLM2's pad token <|im_end|>, which ends every training response."]
    if teacher:
        lines.append(f"Teacher accuracy: val {teacher['val_accuracy']:.3f}, test {teacher['test_accuracy']:.3f} "
                     f"({teacher['parameters']} parameters, {teacher['train_seconds']:.0f} s of training, "
                     f"{teacher['step_seconds']:.1f} s per step; {teacher['steps']} steps in {teacher['stages']} "
                     f"stages).")
    if splits:
        lines.append("Splits: " + ", ".join(f"{k} {v['size']}" for k, v in splits.items() if isinstance(v, dict)) +
                     f"; interactions on the first {splits['interaction_prompts']} test prompts; steps and learning "
                     "rates chosen on val only; test used once, for the numbers below.")
    lines += [f"Students: layers:{config.student_layers} of the fine-tuned teacher (kdi_fast.models."
              f"student_from_teacher; initial weights identical across seeds, seeds vary data order, sampling and "
              f"CIP partitions); {config.student_steps} steps, batch {config.student_batch}, lr {config.student_lr}; "
              f"seeds {list(config.seeds)}; one learning rate for every method, chosen on val for sft (kd and "
              f"gkd were not tuned separately: CPU budget). CIP: weight {config.cip_weight:g} (taken from the lab "
              f"tier, whose validation chose 0.1 over 1.0), m = {config.cip_m}, share {config.cip_batch_share} of each batch.",
              ""]
    lines += ["## Calibration (calibration.json)", ""]
    lines += [f"- teacher stage {st['stage']}: {st['steps']} steps, val accuracy {st['val_accuracy']:.3f}, "
              f"{st['train_seconds']:.0f} s" for st in calib["teacher_stages"]]
    if calib["teacher_stage_in_progress"]:
        p = calib["teacher_stage_in_progress"]
        lines.append(f"- teacher stage {p['stage']} in progress: step {p['step']} of {p['of']} (last step "
                     f"{p['last_step_seconds']:.0f} s on the shared CPU; "
                     f"training loss {p['loss']:.3f} nats per answer token)")
    lines += [f"- teacher interactions ({m}): {v['masks']} masks in {v['seconds']:.0f} s" for m, v in speed.items()]
    lines += [f"- {name}: {v['train_seconds']:.0f} s training ({v['steps_per_second']:.3f} steps/s), "
              f"{v['masks_per_second']:.1f} masks/s (median over runs)" for name, v in calib["runs"].items()]
    if calib["projected_hours"] is not None:
        lines.append(f"- projected total: {calib['projected_hours']:.1f} h of this CPU for the whole tier (teacher, its "
                     f"interactions, {expected} runs at the median run time so far)")
    lines.append("")
    lines += ["## Definitions (fixed before running; as the lab's)", "",
              f"- simple = order <= {MAX_SIMPLE_ORDER}, complex = order >= {MAX_SIMPLE_ORDER + 1}; Overlap@k, k = {K}; "
              f"chance: all {chance['all']:.3f}, simple {chance['simple']:.3f}, complex {chance['complex']:.3f}; "
              f"salient: |I~_S| > {SALIENT}.",
              "- before distillation = the sft student of the same seed; intervals: 95% percentile bootstrap over "
              "seeds; verdicts judged under both maskings (embedding = pad-embedding, attention).",
              f"- with fewer than {_MIN_SEEDS} seeds no verdict other than 'not separable' is given: the bootstrap "
              "interval of a mean over 2 seeds is the range of the 2 values, not a 95% interval.", "",
              "## Findings", ""]
    lines += _results_lines(found, table)
    lines += ["", "Per run: runs/*.json and runs.csv.", ""] + [f"![{f}]({f})" for f in figures]
    write_text_atomic(out / "REPORT.md", "\n".join(lines) + "\n")
    if readme is not None:
        head = f"Real-model tier, **{status}** (from `{command}`; report: {out / 'REPORT.md'})."
        if teacher:
            head += (f" Teacher: val {teacher['val_accuracy']:.3f}, test {teacher['test_accuracy']:.3f}. Students: "
                     f"layers:{config.student_layers}, {config.student_steps} steps, lr {config.student_lr}, "
                     f"seeds {list(config.seeds)}; with fewer than {_MIN_SEEDS} seeds every verdict is "
                     "'not separable at this scale'. Effect = mean [95% bootstrap CI over seeds]; interaction "
                     "claims under pad-embedding / attention masking; cells: mean [95% CI] over seeds on test.")
        replace_readme_block(readme, README_BEGIN, README_END, [head, "", *_results_lines(found, table)])
    return found
