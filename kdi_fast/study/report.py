"""The study's report: findings.json (machine-readable), runs.csv (one row per run), REPORT.md and plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .._io import write_json_atomic, write_text_atomic
from .analysis import bootstrap_mean, findings
from .lab import MASKINGS, _load_config, chosen_lrs
from .measure import K, MAX_SIMPLE_ORDER, SALIENT, chance_overlap

__all__ = ["write_report", "calibration"]

_INTERACTION_KEYS = ("gini", "gini_simple", "gini_complex", "share_complex", "overlap", "overlap_simple",
                     "overlap_complex", "salient_complex_overlap")


def _fmt(x, digits=3) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(row) -> str:
    return f"{_fmt(row['mean'])} [{_fmt(row['lo'])}, {_fmt(row['hi'])}]"


def _flat(record: dict) -> dict:
    row = {"name": record["name"], "seed": record["seed"], **record["cell"], "parameters": record["parameters"],
           "train_seconds": record["train_seconds"]}
    for key in ("val_accuracy", "test_accuracy", "test_agreement", "test_fidelity"):
        row[key] = record[key]
    for masking in MASKINGS:
        for key in _INTERACTION_KEYS:
            row[f"{masking}_{key}"] = record["interactions"][masking].get(key)
    return row


def _cell_table(records) -> list[dict]:
    cells = defaultdict(list)
    for r in records:
        cells[r["name"]].append(r)
    out = []
    for name, recs in cells.items():
        out.append({"cell": name, "seeds": len(recs),
                    "test_accuracy": bootstrap_mean([r["test_accuracy"] for r in recs]),
                    "agreement": bootstrap_mean([r["test_agreement"] for r in recs]),
                    "fidelity": bootstrap_mean([r["test_fidelity"] for r in recs]),
                    **{f"{m}_{k}": bootstrap_mean([r["interactions"][m].get(k) for r in recs])
                       for m in MASKINGS for k in ("gini", "gini_complex", "overlap_simple", "overlap_complex",
                                                   "salient_complex_overlap")}})
    return out


def _main_effect(name: str, f: dict) -> str:
    """The headline number of a finding, for the summary table."""
    rows = f["rows"]
    if name in ("sparsity", "simple_vs_complex"):
        return "; ".join(f"{r['masking']}: {_ci(r)}" for r in rows if r["size"] == "both")
    if name.startswith("correlation"):
        return "; ".join(f"{r['masking']}/{r['size']}: rho {_fmt(r['rho'], 2)} [{_fmt(r['lo'], 2)}, "
                         f"{_fmt(r['hi'], 2)}]" for r in rows)
    if name == "cip":
        return "; ".join(f"{r['size']}/{r['method']} (w={r['cip_weight']:g}): {_ci(r)}, p_Holm "
                         f"{_fmt(r['pvalue_holm'], 3)}" for r in rows)
    if name == "noise_collapse":
        return "; ".join(f"{r['cell']}: {_ci(r)}" for r in rows)
    if name == "best_temperature":
        return f"best T = {f.get('best')}; " + "; ".join(f"T={r['temperature']:g}: {_ci(r)}" for r in rows
                                                          if "temperature" in r)
    if name == "kd_helps_smaller":
        return "; ".join(f"{r['size']}: " + (_ci(r) if "mean" in r else _ci(r["kd_minus_sft"])) for r in rows)
    return ""


def _plots(records, found: dict, out: Path, sizes) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cells = _cell_table(records)
    # accuracy per cell
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rows = [c for c in cells if c["cell"].startswith(size + "_")]
        y = [c["test_accuracy"]["mean"] for c in rows]
        err = np.array([[c["test_accuracy"]["mean"] - c["test_accuracy"]["lo"],
                         c["test_accuracy"]["hi"] - c["test_accuracy"]["mean"]] for c in rows]).T
        ax.barh(range(len(rows)), y, xerr=np.nan_to_num(err))
        ax.set_yticks(range(len(rows)), [c["cell"].removeprefix(size + "_") for c in rows], fontsize=7)
        ax.set_xlabel("test accuracy (mean, 95% bootstrap CI over seeds)")
        ax.set_title(size)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=90)
    written.append("accuracy.png")
    plt.close(fig)
    # interaction measures vs accuracy, per masking
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for col, masking in enumerate(MASKINGS):
        for row, key in enumerate(("gini_complex", "salient_complex_overlap")):
            ax = axes[row][col]
            for size in sizes:
                recs = [r for r in records if r["cell"]["size"] == size]
                ax.scatter([r["interactions"][masking].get(key) or np.nan for r in recs],
                           [r["test_accuracy"] for r in recs], s=10, label=size)
            ax.set_xlabel(f"{key} ({masking})")
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "correlations.png", dpi=90)
    written.append("correlations.png")
    plt.close(fig)
    # sparsity and overlap effects per method
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], "sparsity", "Gini(distilled) - Gini(sft)"),
                           (axes[1], "simple_vs_complex", "excess Overlap simple - complex")):
        rows = found[key]["rows"]
        labels = [f"{r['size']}/{r['method']}/{r['masking'][:3]}" for r in rows]
        y = [r["mean"] for r in rows]
        err = np.array([[r["mean"] - r["lo"], r["hi"] - r["mean"]] for r in rows]).T
        ax.barh(range(len(rows)), y, xerr=np.nan_to_num(err))
        ax.axvline(0, color="k", lw=0.5)
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.set_xlabel(label)
    fig.tight_layout()
    fig.savefig(out / "effects.png", dpi=90)
    written.append("effects.png")
    plt.close(fig)
    # order profiles
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, masking in zip(axes, MASKINGS):
        for size in sizes:
            for method in ("sft", "kd"):
                recs = [r for r in records if r["name"] == f"{size}_{method}"]
                if recs:
                    ax.plot(range(1, len(recs[0]["order_strength"][masking]) + 1),
                            np.mean([r["order_strength"][masking] for r in recs], 0), label=f"{size} {method}")
        ax.set_xlabel("order")
        ax.set_ylabel("mean |I~_S|")
        ax.set_yscale("log")
        ax.set_title(masking)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "order_strength.png", dpi=90)
    written.append("order_strength.png")
    plt.close(fig)
    return written


def calibration(lab_dir: str | Path) -> dict:
    """The lab tier's calibration from its runs: the teacher's accuracy, the no-KD (sft) students' test accuracy
    per size (mean and 95% CI over seeds), parameters, training speed per method and the engine's masks/s."""
    lab = Path(lab_dir)
    records = [json.loads(p.read_text()) for p in sorted((lab / "runs").glob("*.json"))]
    out = {"teacher": json.loads((lab / "teacher.json").read_text()),
           "splits": json.loads((lab / "splits.json").read_text()), "students": {}, "speed": {}}
    for r in records:
        size, cell = r["cell"]["size"], r["cell"]
        if cell["method"] == "sft" and not cell["cip"]:
            entry = out["students"].setdefault(size, {"parameters": r["parameters"], "test": [], "val": []})
            entry["test"].append(r["test_accuracy"])
            entry["val"].append(r["val_accuracy"])
        key = f"{size}/{cell['method']}" + ("+cip" if cell["cip"] else "")
        speed = out["speed"].setdefault(key, {"steps_per_second": [], "masks_per_second": []})
        speed["steps_per_second"].append(r.get("steps_per_second"))
        speed["masks_per_second"].append(np.mean(list(r.get("masks_per_second", {}).values()) or [math.nan]))
    for entry in out["students"].values():
        entry["test_accuracy"] = bootstrap_mean(entry.pop("test"))
        entry["val_accuracy"] = bootstrap_mean(entry.pop("val"))
    for key, speed in out["speed"].items():
        out["speed"][key] = {k: float(np.median([x for x in v if x is not None])) if v else math.nan
                             for k, v in speed.items()}
    return out


def write_runs_csv(records, path: Path) -> None:
    """One row per run (the flattened record), written atomically."""
    rows = [_flat(r) for r in records]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _sft_scores(calib: dict) -> str:
    """The no-KD (sft) students' test accuracy per size, one sentence."""
    return "No-KD (sft) students, test accuracy (mean [95% CI] over seeds): " + "; ".join(
        f"{size} ({e['parameters']} parameters): {_ci(e['test_accuracy'])}"
        for size, e in calib["students"].items()) + "."


README_BEGIN, README_END = "<!-- study-findings -->", "<!-- /study-findings -->"


def findings_table(found: dict) -> list[str]:
    """The findings as markdown table lines: claim, effect [95% CI], verdict."""
    return ["| claim | effect [95% CI] | verdict |", "|---|---|---|"] + [
        f"| {f['claim']} | {_main_effect(name, f)} | **{f['verdict']}** |" for name, f in found.items()]


def replace_readme_block(readme: str | Path, begin: str, end: str, body: list[str]) -> None:
    """Replace the text between the markers `begin` and `end` of `readme` by `body` (lines), atomically."""
    path = Path(readme)
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin} ... {end} block; add one where the findings go")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    write_text_atomic(path, head + begin + "\n\n" + "\n".join(body) + "\n" + end + tail)


def update_readme(readme: str | Path, found: dict, *, runs: int, command: str, calib: dict | None = None) -> None:
    """Replace the text between README_BEGIN and README_END of `readme` by the lab's findings table, preceded
    by the teacher's and the no-KD students' accuracies when `calib` (calibration(lab_dir)) is given."""
    scores = []
    if calib is not None:
        teacher = calib["teacher"]
        scores = [f"Teacher: val accuracy {teacher['val_accuracy']:.3f}, test {teacher['test_accuracy']:.3f}. "
                  + _sft_scores(calib), ""]
    replace_readme_block(readme, README_BEGIN, README_END, [*scores,
        f"Findings of the lab grid ({runs} runs, from `{command}`; effect = mean [95% bootstrap CI over seeds]; "
        "interaction claims under pad-embedding / attention masking):", "", *findings_table(found)])


def write_report(lab_dir: str | Path, out_dir: str | Path, *, command: str = "", plots: bool = True) -> dict:
    """Read lab_dir's runs, write findings.json, runs.csv, cells.json, REPORT.md (and plots) to out_dir."""
    lab, out = Path(lab_dir), Path(out_dir)
    records = [json.loads(p.read_text()) for p in sorted((lab / "runs").glob("*.json"))]
    if not records:
        raise FileNotFoundError(f"no runs in {lab / 'runs'}: run `kdi study lab --out {lab}` first")
    config = _load_config(lab)
    lrs = chosen_lrs(lab, config)
    out.mkdir(parents=True, exist_ok=True)
    found = findings(records, sizes=config.sizes)
    teacher = json.loads((lab / "teacher.json").read_text())
    splits = json.loads((lab / "splits.json").read_text())
    cells = _cell_table(records)
    write_json_atomic(out / "findings.json", {"findings": found, "teacher": teacher, "splits": splits,
                                              "config": json.loads((lab / "lab_config.json").read_text()),
                                              "cells": cells, "runs": len(records), "learning_rates": lrs},
                      default=str)
    write_runs_csv(records, out / "runs.csv")
    figures = _plots(records, found, out, config.sizes) if plots else []
    calib = calibration(lab)
    write_json_atomic(out / "calibration.json", calib)

    chance = chance_overlap(8)
    lines = [
        "# The study, laboratory tier", "",
        f"Command: `{command}`" if command else "", "",
        "## Set-up", "",
        "Task: addition of two numbers of 1-4 digits written digit by digit, least significant first, e.g. "
        "`7 4 _ _ + 9 8 5 _ =` -> `6 3 6` (47 + 589 = 636); `_` (the pad token) fills unused digit slots.",
        f"Splits (distinct problems, a+b and b+a counted once): " + ", ".join(
            f"{k} {v['size']}" for k, v in splits.items() if isinstance(v, dict)) +
        f"; students train on a subset of the teacher's training data; hyper-parameters and CIP weights chosen "
        f"on val; every number below is on test; interactions on the first {splits['interaction_prompts']} "
        f"test prompts.",
        f"Teacher: {teacher['parameters']} parameters, {teacher['steps']} steps; val accuracy "
        f"{teacher['val_accuracy']:.3f}, test accuracy {teacher['test_accuracy']:.3f}.",
        f"Students: {', '.join(f'{z} {config.steps_for(z)} steps' for z in config.sizes)}, "
        f"batch {config.student_batch}; "
        f"seeds {list(config.seeds)} (initial weights, data order, sampling, noise, CIP partitions). "
        f"CIP: m = {config.cip_m} groups, pad-embedding masking, weights {list(config.cip_weights)}.",
        f"Learning rates, chosen on val for each size and method (without CIP) among {list(config.tune_lrs)} by the "
        f"lowest mean val answer NLL (nats per token, teacher-forced) of {len(config.tune_seeds)} tuning runs "
        f"(seeds {list(config.tune_seeds)}, never reported; exact-match accuracy jumps with the seed at this step "
        f"budget, so it ranks lrs poorly); CIP, noise and T cells use their method's lr: " + "; ".join(
            f"{key} {v['lr']:g} (val NLL / accuracy " + ", ".join(
                f"{lr}: {v['val_nll'][lr]:.3f} / {v['val_accuracy'][lr]:.2f}" for lr in v["val_nll"]) + ")"
            for key, v in lrs.items()) + ".",
        _sft_scores(calib),
        "Speed on the shared 2-core CPU (median over runs; two grid processes and other jobs sharing it): " + "; ".join(
            f"{k}: {v['steps_per_second']:.1f} steps/s" for k, v in calib["speed"].items()) +
        "; engine: " + f"{np.median([v['masks_per_second'] for v in calib['speed'].values()]):.0f} masks/s "
        "(n = 8, 32 prompts, both maskings, the engine's automatic path).",
        "", "## Definitions (fixed before running)", "",
        f"- players: the n = 8 digit slots; y* = the true answer; v = log-odds of its mean token probability.",
        f"- maskings: `embedding` (the masked slot's embedding replaced by that of the pad token `_`, which the "
        f"models saw in training) and `attention` (the slot's tokens hidden from attention).",
        f"- simple = order <= {MAX_SIMPLE_ORDER}, complex = order >= {MAX_SIMPLE_ORDER + 1}.",
        f"- Overlap@k with k = {K}; chance level K/M: all {chance['all']:.3f}, simple {chance['simple']:.3f}, "
        f"complex {chance['complex']:.3f}.",
        f"- salient: |I~_S| > {SALIENT}; salient complex overlap = share of the teacher's salient complex "
        f"interactions also salient in the student.",
        "- before distillation = the sft student of the same size and seed; collapse = test accuracy < 5%; "
        "best T = highest mean test accuracy; correlation = Spearman over the runs of one size, bootstrap over runs.",
        "- intervals: 95% percentile bootstrap over seeds of paired differences; verdict confirmed / refuted / not "
        "separable by the interval's side of 0; interaction claims judged under both maskings.",
        "", "## Findings", "", *findings_table(found),
    ]
    lines += ["", "## Cells (test accuracy, mean [95% CI] over seeds)", "",
              "| cell | seeds | accuracy | agreement | BLEU fidelity | Gini emb | Gini att | Overlap simple/complex emb |",
              "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['cell']} | {c['seeds']} | {_ci(c['test_accuracy'])} | {_fmt(c['agreement']['mean'])} | "
                     f"{_fmt(c['fidelity']['mean'], 1)} | {_fmt(c['embedding_gini']['mean'])} | "
                     f"{_fmt(c['attention_gini']['mean'])} | {_fmt(c['embedding_overlap_simple']['mean'])} / "
                     f"{_fmt(c['embedding_overlap_complex']['mean'])} |")
    lines += ["", "Per-method rows of every finding: findings.json. Per run: runs.csv.", ""]
    lines += [f"![{f}]({f})" for f in figures]
    write_text_atomic(out / "REPORT.md", "\n".join(lines) + "\n")
    return found
