"""The end-to-end experiment on a real model: does distillation sparsify a student's interactions and align them
with the teacher's (seed 000), does CIP help, and how do teacher noise and temperature act (seed 001)?

Teacher: SmolLM2-135M-Instruct. Student: a subset of its layers (shared tokenizer and embeddings). Data: the
"instruct" mix of short instruction-following tasks generated offline by reasoning-gym (kdi_fast.distill.datasets).

Part 1 (seed 000's tables): the student before distillation and after each method, with and without CIP:
mean Gini of the interactions (all, simple, complex), Overlap@k with the teacher (all, simple, complex),
ROUGE-L against the references, agreement with the teacher.
Part 2 (seed 001's studies, method kd): teacher-logit noise sigma in {0, 1, 2, 5} at T = 1, and temperature
T in {1, 2, 5} without noise, with agreement and fidelity beside ROUGE-L.

    python benchmarks/experiment_kd.py            # the full experiment (35 min on the shared 2-core CPU)
    python benchmarks/experiment_kd.py --quick    # a few steps of everything (minutes), to check the set-up

Results: benchmarks/results/experiment_kd.json (every number), experiment_kd.csv, experiment_kd.md (the
tables quoted in README) and experiment_kd_*.png. Runs (models, checkpoints, per-run reports) go to
--work-dir; the script resumes: finished runs are not redone, a killed run continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # kdi_fast from a checkout; _common

from _common import RESULTS, cpu_name, write_text_atomic  # noqa: E402
from kdi_fast._io import atomic_write  # noqa: E402


@dataclass(frozen=True)
class RunSpec:
    name: str
    method: str
    cip: float = 0.0
    temperature: float = 1.0
    noise: float = 0.0
    part: str = "methods"  # "methods" | "noise" | "temperature"


def run_specs(methods: list[str], cip_methods: list[str], cip_weight: float) -> list[RunSpec]:
    specs = []
    for method in methods:
        specs.append(RunSpec(method, method))
        if cip_weight > 0 and method in cip_methods:
            specs.append(RunSpec(f"{method}+cip", method, cip=cip_weight))
    for sigma in (1.0, 2.0, 5.0):  # sigma = 0 is the plain kd run
        specs.append(RunSpec(f"kd-noise{sigma:g}", "kd", noise=sigma, part="noise"))
    for t in (2.0, 5.0):  # T = 1 is the plain kd run
        specs.append(RunSpec(f"kd-T{t:g}", "kd", temperature=t, part="temperature"))
    return specs


def _fmt(x, digits=3, percent=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}%" if percent else f"{x:.{digits}f}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few steps of everything, to check the set-up")
    p.add_argument("--teacher", default="smollm2")
    p.add_argument("--student", default="layers:12", help="student recipe (default: 12 of the 30 teacher layers)")
    p.add_argument("--methods", default="sft,kd,gkd,distillm")
    p.add_argument("--cip-methods", default="kd,gkd", help="methods also run with CIP")
    p.add_argument("--cip", type=float, default=1.0, help="CIP weight of the +cip runs (0: no CIP runs)")
    p.add_argument("--cip-m", type=int, default=3)
    p.add_argument("--cip-batch-share", type=float, default=0.5, help="share of each batch CIP is computed on")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--eval-size", type=int, default=24)
    p.add_argument("--interaction-prompts", type=int, default=8)
    p.add_argument("--n-players", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated run names to do (default: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default, one per core; 1 is much faster on a busy machine)")
    p.add_argument("--work-dir", default=None, help="where runs are kept (default: $KDI_FAST_CACHE/experiment_kd)")
    p.add_argument("--results", default=str(RESULTS), help="where the JSON/CSV/MD/PNG results go")
    p.add_argument("--name", default=None,
                   help="file prefix of the results and folder of the runs (default experiment_kd[_quick])")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_size, args.interaction_prompts, args.n_players = 2, 4, 1, 4
        args.max_new_tokens = min(args.max_new_tokens, 8)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from kdi_fast.distill import DistillConfig, build_student, distill, load_examples
    from kdi_fast.distill.evaluate import EvalSettings, evaluate_run, load_model_eval, save_model_eval
    from kdi_fast.models import cache_dir, load_model, load_tokenizer

    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tag = args.name or ("experiment_kd_quick" if args.quick else "experiment_kd")
    work = Path(args.work_dir) if args.work_dir else cache_dir() / tag
    results_dir = Path(args.results)
    started = time.perf_counter()

    teacher = load_model(args.teacher)
    tokenizer = load_tokenizer(args.teacher)
    train = load_examples(f"instruct:{args.steps * args.batch_size}", seed=args.seed)
    seen = {e.prompt for e in train}
    held_out = [e for e in load_examples(f"instruct:{args.eval_size + 8}", seed=args.seed + 1000)
                if e.prompt not in seen][:args.eval_size]
    # Interactions are computed on the first prompts: put the shortest first (2^n masked forwards each).
    held_out.sort(key=lambda e: len(tokenizer(e.prompt)["input_ids"]))
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, interaction_prompts=args.interaction_prompts,
                            n_players=args.n_players, max_target_tokens=8, progress=False)
    specs = run_specs([m for m in args.methods.split(",") if m], args.cip_methods.split(","), args.cip)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for s in specs if s.name in wanted or (s.name == "kd" and wanted & {"kd-noise1", "kd-T2"})]

    # The teacher's and the untrained student's evaluations are shared by all runs (and kept for restarts).
    key = json.dumps([args.teacher, args.student, args.eval_size, args.interaction_prompts, args.n_players,
                      args.max_new_tokens, args.seed])
    shared = work / f"_shared-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    cache = {name: e for name in ("teacher", "student_before") if (e := load_model_eval(shared / name))}
    teacher_logits = {}  # the teacher's logits of the data batches, the same in every run
    rows = []
    for index, spec in enumerate(specs, start=1):
        out = work / spec.name
        print(f"[{index}/{len(specs)}] {spec.name}: {spec.method}, CIP {spec.cip:g}, T {spec.temperature:g}, "
              f"sigma {spec.noise:g}", flush=True)
        config = DistillConfig(method=spec.method, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               warmup_steps=max(1, args.steps // 10), max_length=args.max_length,
                               max_new_tokens=args.max_new_tokens, temperature=spec.temperature,
                               teacher_noise=spec.noise, cip_weight=spec.cip, cip_m=args.cip_m,
                               cip_batch_share=args.cip_batch_share, seed=args.seed, checkpoint_every=5,
                               validate_every=4)
        student = build_student(teacher, args.student, seed=args.seed)
        run = distill(teacher, student, tokenizer, train, out, config, validation_examples=held_out[-8:],
                      teacher_logits_cache=teacher_logits)
        summary_path = out / "eval" / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
        else:
            before = load_model(out / "student_before")
            t0 = time.perf_counter()
            # Seed 001's sweeps need the outputs only; the interactions are part 1's measurements.
            run_settings = settings if spec.part == "methods" else dataclasses.replace(settings, interaction_prompts=0)
            summary = evaluate_run(teacher, before, student.eval(), tokenizer, held_out, out, run_settings,
                                   cache=cache)
            summary["eval_seconds"] = round(time.perf_counter() - t0, 1)
            write_text_atomic(summary_path, json.dumps(summary, indent=2))
            for name in ("teacher", "student_before"):
                if not (shared / name / "outputs.json").is_file():
                    save_model_eval(cache[name], shared / name)
        rows.append({"run": asdict(spec), "train_seconds": run.seconds, "eval_seconds": summary.get("eval_seconds"),
                     "first_loss": run.first_loss,
                     "last_loss": run.last_loss, "sgo_batches": run.sgo_batches, **summary["models"]["student_after"],
                     "_teacher": summary["models"]["teacher"], "_before": summary["models"]["student_before"]})
        del student
        write_results(rows, train, held_out, args, time.perf_counter() - started, results_dir, tag)
    return 0


def write_results(rows, train, held_out, args, total, results_dir: Path, tag: str) -> None:
    """The JSON, CSV, Markdown and PNG results of the runs done so far (rewritten after every run)."""
    import torch

    compute = sum(r["train_seconds"] + (r.get("eval_seconds") or 0.0) for r in rows)
    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, no GPU",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "compute_seconds": round(compute, 1),  # training + evaluation of every run, summed over restarts
        "wall_seconds_this_invocation": round(total, 1), "quick": args.quick,
        "settings": {k: v for k, v in vars(args).items() if k not in ("results", "work_dir", "only", "threads", "name")},
        "train_examples": len(train), "held_out_examples": len(held_out),
        "teacher": rows[0]["_teacher"] if rows else None, "student_before": rows[0]["_before"] if rows else None,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results_dir / f"{tag}.json", json.dumps(report, indent=2))
    _write_csv(report, results_dir / f"{tag}.csv")
    write_text_atomic(results_dir / f"{tag}.md", markdown(report))
    plot(report, results_dir, tag)
    print(markdown(report), flush=True)
    print(f"{len(rows)} runs in {total / 60:.1f} min; results in {results_dir}/{tag}.*", flush=True)


COLUMNS = ("gini", "gini_simple", "gini_complex", "overlap", "overlap_simple", "overlap_complex", "rouge_l",
           "accuracy", "agreement", "fidelity")


def _write_csv(report: dict, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "method", "cip", "temperature", "noise", *COLUMNS, "train_seconds"])
    for name, entry in (("teacher", report["teacher"]), ("student_before", report["student_before"])):
        if entry:
            writer.writerow([name, "", "", "", "", *[entry.get(c, "") for c in COLUMNS], ""])
    for r in report["runs"]:
        spec = r["run"]
        writer.writerow([spec["name"], spec["method"], spec["cip"], spec["temperature"], spec["noise"],
                         *[r.get(c, "") for c in COLUMNS], r["train_seconds"]])
    write_text_atomic(path, buffer.getvalue())


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Teacher SmolLM2-135M-Instruct; student `{s['student']}` of its layers; {report['train_examples']} "
             f"training examples of the reasoning-gym instruct mix ({s['steps']} steps of {s['batch_size']}, "
             f"lr {s['lr']:g}); {report['held_out_examples']} held-out examples for ROUGE-L and agreement; "
             f"interactions on {s['interaction_prompts']} held-out prompts with {s['n_players']} players "
             f"(Overlap@0.1; simple = order <= {s['n_players'] // 2}); {report['machine']}, "
             f"{report['threads']} torch thread(s); training and evaluation took "
             f"{report['compute_seconds'] / 60:.0f} min in all.", ""]
    head = ("| model | Gini | Gini simple | Gini complex | Overlap@0.1 | Overlap simple | Overlap complex | "
            "ROUGE-L | agreement |")
    lines += ["**Part 1: methods, with and without CIP**", "", head, "|" + "---|" * 9]

    def row(name, e):
        return (f"| {name} | {_fmt(e.get('gini'))} | {_fmt(e.get('gini_simple'))} | {_fmt(e.get('gini_complex'))} | "
                f"{_fmt(e.get('overlap'), percent=True)} | {_fmt(e.get('overlap_simple'), percent=True)} | "
                f"{_fmt(e.get('overlap_complex'), percent=True)} | {_fmt(e.get('rouge_l'), 1)} | "
                f"{_fmt(e.get('agreement'), percent=True)} |")

    if report["teacher"]:
        lines.append(row("teacher", report["teacher"]))
        lines.append(row("student before", report["student_before"]))
    for r in report["runs"]:
        if r["run"]["part"] == "methods":
            lines.append(row(r["run"]["name"], r))
    kd = next((r for r in report["runs"] if r["run"]["name"] == "kd"), None)
    for part, key, label in (("noise", "noise", "teacher noise sigma"), ("temperature", "temperature", "T")):
        part_rows = ([kd] if kd else []) + [r for r in report["runs"] if r["run"]["part"] == part]
        if len(part_rows) < 2:
            continue
        lines += ["", f"**Part 2: kd with {label}**", "",
                  f"| {label} | ROUGE-L | accuracy | agreement | fidelity (BLEU) |", "|" + "---|" * 5]
        for r in sorted(part_rows, key=lambda r: r["run"][key]):
            lines.append(f"| {r['run'][key]:g} | {_fmt(r.get('rouge_l'), 1)} | {_fmt(r.get('accuracy'), percent=True)} "
                         f"| {_fmt(r.get('agreement'), percent=True)} | {_fmt(r.get('fidelity'), 1)} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, folder: Path, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method_runs = [r for r in report["runs"] if r["run"]["part"] == "methods"]
    if method_runs and report["teacher"]:
        names = ["teacher", "before"] + [r["run"]["name"] for r in method_runs]
        entries = [report["teacher"], report["student_before"]] + method_runs
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        width = 0.27
        x = range(len(names))
        for j, (key, label) in enumerate((("gini", "all"), ("gini_simple", "simple"), ("gini_complex", "complex"))):
            axes[0].bar([i + (j - 1) * width for i in x], [_nan(e.get(key)) for e in entries], width, label=label)
        axes[0].set_title("Sparsity: mean Gini of |I_S| (higher = sparser)")
        students = range(len(names) - 1)  # the teacher has no overlap with itself to show
        for j, (key, label) in enumerate((("overlap", "all"), ("overlap_simple", "simple"),
                                          ("overlap_complex", "complex"))):
            axes[1].bar([i + (j - 1) * width for i in students], [_nan(e.get(key)) for e in entries[1:]], width,
                        label=label)
        axes[1].set_title("Alignment with the teacher: mean Overlap@0.1")
        for ax, ticks, labels in ((axes[0], x, names), (axes[1], students, names[1:])):
            ax.set_xticks(list(ticks))
            ax.set_xticklabels(labels, rotation=35, ha="right")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        atomic_write(folder / f"{tag}_interactions.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
    kd = next((r for r in report["runs"] if r["run"]["name"] == "kd"), None)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    drawn = False
    for ax, part, key, label in ((axes[0], "noise", "noise", "teacher-logit noise sigma"),
                                 (axes[1], "temperature", "temperature", "temperature T")):
        part_rows = sorted(([kd] if kd else []) + [r for r in report["runs"] if r["run"]["part"] == part],
                           key=lambda r: r["run"][key])
        if len(part_rows) < 2:
            continue
        drawn = True
        xs = [r["run"][key] for r in part_rows]
        ax.plot(xs, [_nan(r.get("rouge_l")) for r in part_rows], "o-", label="ROUGE-L")
        ax.plot(xs, [100 * _nan(r.get("agreement")) for r in part_rows], "s-", label="agreement (%)")
        ax.plot(xs, [_nan(r.get("fidelity")) for r in part_rows], "^-", label="fidelity (BLEU)")
        ax.set_xlabel(label)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("kd: teacher noise")
    axes[1].set_title("kd: temperature")
    fig.tight_layout()
    if drawn:
        atomic_write(folder / f"{tag}_noise_temperature.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _nan(x) -> float:
    return math.nan if x is None else float(x)


if __name__ == "__main__":
    raise SystemExit(main())
