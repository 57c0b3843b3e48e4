"""The sparse paths of the CLI: `kdi interactions --budget Q` and `kdi compare --budget Q` (long prompts).

Each prompt's SparseInteractionResult goes to OUT/<id>.sparse.safetensors; a rerun with the same --out skips the
prompts already done with the same settings. summary.json lists every prompt with its held-out R^2 (on uniformly
random masks counted in the budget), the masks evaluated and the seconds. compare writes report.md: teacher and
students recovered on the same masks, with the metrics of kdi_fast.metrics.sparse (top K = 50 recovered
coefficients; coefficients not recovered count as 0).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

from ..engine.settings import InteractionSettings
from ..engine.sparse import RecoveryWarning
from ..engine.sparse_result import SparseInteractionResult

RUN_SETTINGS = tuple(f for f in InteractionSettings.field_names() if f not in InteractionSettings().results_dict())


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def run_sparse(model, tokenizer, records, out_dir: Path, *, budget: int, n_players: int, like_dir: Path | None = None,
               overwrite: bool = False, progress: bool = True, **options) -> list[SparseInteractionResult]:
    """Sparse interactions of every record, one file each in out_dir; returns the results in record order.

    A stored result is reused only when its identity (kdi_fast.engine.identity, kept in its settings["identity"])
    is exactly the wanted one; a result of another identity is an error naming what differs, before anything is
    computed, unless overwrite=True."""
    from ..engine.identity import check_reuse, differences, prompt_identity, run_identity
    from ..engine.sparse_compute import compute_sparse_interactions
    from ..report import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    how = RUN_SETTINGS + ("min_r2",)  # how, not what: no effect on the numbers
    settings = {"method": "sparse", "budget": budget, "n_players": n_players,
                **{k: v for k, v in options.items() if k not in how}}
    run = run_identity(model, tokenizer, settings)
    likes, identities, stored, conflicts = {}, {}, {}, {}
    for record in records:
        like = None
        if like_dir is not None:
            theirs = Path(like_dir) / f"{record.id}.sparse.safetensors"
            if not theirs.exists():
                raise ValueError(f"--like {like_dir}: no sparse result for prompt {record.id!r}; run the teacher first")
            likes[record.id] = SparseInteractionResult.load(theirs)
            like = {"dir": str(like_dir), "result_sha256": _fingerprint(likes[record.id])}
        identities[record.id] = prompt_identity(run, record, like)
        path = out_dir / f"{record.id}.sparse.safetensors"
        if path.exists() and not overwrite:
            done = SparseInteractionResult.load(path)
            diffs = differences(done.settings.get("identity") or {}, identities[record.id])
            if diffs:
                conflicts[record.id] = diffs
            else:
                stored[record.id] = done
    check_reuse(out_dir, conflicts)
    results, rows = [], []
    for record in records:
        path = out_dir / f"{record.id}.sparse.safetensors"
        like = [likes[record.id]] if record.id in likes else None
        if record.id in stored:
            results.append(stored[record.id])
            rows.append(_row(record.id, stored[record.id], skipped=True))
            continue
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            result = compute_sparse_interactions(
                model, tokenizer, [record.prompt], budget=budget, n_players=n_players, like=like,
                targets=[record.target] if record.target is not None and like is None else None,
                players=[record.players] if record.players is not None and like is None else None,
                progress=progress, **options)[0]
        for w in caught:
            if issubclass(w.category, RecoveryWarning):
                print(f"warning: prompt {record.id}: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        result.stats["seconds"] = time.perf_counter() - started
        result.settings["identity"] = identities[record.id]
        result.save(path)
        results.append(result)
        rows.append(_row(record.id, result, skipped=False))
    write_json({"method": "sparse", "budget": budget, "held_out_masks_counted_in_budget": True,
                "prompts": rows}, out_dir / "summary.json")
    return results


def _fingerprint(result: SparseInteractionResult) -> str:
    """sha256 over what a student run reuses of a teacher's sparse result, and its coefficients."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([result.players, result.target_ids, [list(s) for s in result.subsets],
                                        result.settings.get("seed")]).encode())
    digest.update(result.interactions.detach().double().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _row(prompt_id: str, r: SparseInteractionResult, skipped: bool) -> dict:
    return {"id": prompt_id, "n": r.n, "r2_held_out": _finite(r.r2_held_out), "recovered": len(r.subsets),
            "train_masks": r.settings.get("train_masks"), "held_out_masks": r.settings.get("held_out_masks"),
            "seconds": _finite(r.stats.get("seconds")), "resumed": skipped,
            "top": [[list(texts), value] for texts, value in r.top(10)]}


def print_sparse(results: list[SparseInteractionResult], records) -> None:
    for record, r in zip(records, results):
        print(f"{record.id}: n={r.n}, {len(r.subsets)} interactions recovered, held-out R^2 = {r.r2_held_out:.3f} "
              f"({r.settings['held_out_masks']} random masks of the budget {r.settings['budget']})")
        for texts, value in r.top(5):
            print(f"    {value:+.4f}  {' & '.join(texts)}")


def sparse_report(teacher: list, students: dict[str, list], records, out: Path, k: int, run_info: dict) -> Path:
    """report.md and summary.json of a sparse comparison."""
    from ..metrics.sparse import gini_top, order_shares, overlap_top
    from ..report import write_json
    from .._io import write_text_atomic

    lines = ["# Sparse interactions: teacher vs students (same masks)", ""]
    lines += [f"- {key}: {value}" for key, value in run_info.items()]
    lines += ["", f"Metrics over the recovered coefficients only (coefficients not recovered count as 0): "
                  f"Overlap@{k} = |top-{k} teacher ∩ top-{k} student| / {k} by |I_S|; Gini@{k} = Gini of the {k} "
                  f"largest |I_S|. R^2: reconstructed v against the model's v on held-out uniformly random masks "
                  f"(counted in the budget).", ""]
    header = "| prompt | n | R^2 teacher | " + " | ".join(
        f"R^2 {label} | Overlap@{k} {label} | Gini@{k} {label}" for label in students) + f" | Gini@{k} teacher |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    rows = []
    for i, record in enumerate(records):
        t = teacher[i]
        row = {"id": record.id, "n": t.n, "r2_teacher": _finite(t.r2_held_out), "gini_teacher": _finite(gini_top(t, k))}
        cells = [record.id, str(t.n), f"{t.r2_held_out:.3f}"]
        for label, results in students.items():
            s = results[i]
            row.update({f"r2_{label}": _finite(s.r2_held_out), f"overlap_{label}": overlap_top(t, s, k),
                        f"gini_{label}": _finite(gini_top(s, k))})
            cells += [f"{s.r2_held_out:.3f}", f"{overlap_top(t, s, k):.2f}", f"{gini_top(s, k):.3f}"]
        cells.append(f"{gini_top(t, k):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
        row["order_shares_teacher"] = {str(o): v for o, v in order_shares(t).items()}
        rows.append(row)
    lines += ["", "## Top interactions (teacher)", ""]
    for record, t in zip(records, teacher):
        lines.append(f"- {record.id}: " + "; ".join(f"{' & '.join(texts)} ({value:+.3f})" for texts, value in t.top(5)))
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    write_json({"method": "sparse", "k": k, "run": run_info, "prompts": rows}, out / "summary.json")
    return report
