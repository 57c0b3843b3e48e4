"""A teacher compared with its students over a data set: per-prompt rows, dataset means with 95% intervals,
per-order profiles, Overlap@k curves, output agreement and rank correlations. Everything here is computed by
the tested metric functions; the report (kdi_fast.report) only formats and plots what this module returns.

    comparison = compare_models(teacher_results, {"student": student_results}, outputs=texts)
    comparison.summary      # JSON-ready dict (what summary.json holds)
    comparison.rows         # one dict per (prompt, model): what the per-prompt CSV holds
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .interaction import (
    DEFAULT_SALIENT_THRESHOLD,
    as_interactions,
    by_order,
    entropy,
    gini,
    normalise,
    overlap_at_k,
    simple_complex,
    split_orders,
)
from .stats import mean_ci, spearman_table
from .text import answers_agree, fidelity_per_example, last_number, rouge_l_per_example, teacher_text_scores

__all__ = ["DEFAULT_KS", "Comparison", "compare_models", "overlap_column", "json_ready"]

DEFAULT_KS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
"""Overlap@k ratios reported by default (the seed paper's headline is k = 0.1)."""

# Per-prompt interaction measures of every model (columns of the CSV, rows of the summary table).
INTERACTION_COLUMNS = (
    "gini", "entropy", "salient", "share_simple", "share_complex",
    "gini_simple", "gini_complex", "entropy_simple", "entropy_complex",
)
TEXT_COLUMNS = ("agree", "bleu", "rouge_l")
PAIRED_COLUMNS = ("gini", "entropy", "share_complex", "gini_complex")
"""Measures also reported as paired differences (student - teacher, per prompt)."""


def overlap_column(k: float, part: str = "") -> str:
    """The column name of Overlap@k: "overlap@0.1", "overlap_complex@0.1"."""
    return f"overlap{'_' + part if part else ''}@{k:g}"


@dataclass
class Comparison:
    """The result of compare_models. `results` keeps the inputs (model name -> results) for the plots."""

    teacher: str
    students: list[str]
    ks: list[float]
    k_main: float
    max_simple_order: int | None
    salient_threshold: float
    prompt_ids: list[str]
    results: dict[str, list]
    rows: list[dict]
    summary: dict
    outputs: dict[str, list[str]] | None = None
    answers: dict[str, list] | None = field(default=None)

    @property
    def models(self) -> list[str]:
        return [self.teacher, *self.students]

    def column(self, model: str, name: str) -> list[float]:
        """One numeric per-prompt column of one model, in prompt order (NaN where a row lacks it)."""
        return _column(self.rows, model, name)


def _column(rows: list[dict], model: str, name: str) -> list[float]:
    return [float(r[name]) if r.get(name) is not None else math.nan for r in rows if r["model"] == model]


def _num_players(result) -> int:
    return as_interactions(result).shape[-1].bit_length() - 1


def _check_aligned(teacher: list, name: str, student: list) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"student {name!r} has {len(student)} results for the teacher's {len(teacher)} prompts")
    for i, (t, s) in enumerate(zip(teacher, student)):
        ti, si = as_interactions(t), as_interactions(s)
        same = ti.shape == si.shape
        for attr in ("players", "target_ids"):
            a, b = getattr(t, attr, None), getattr(s, attr, None)
            if a is not None and b is not None and list(map(_plain, a)) != list(map(_plain, b)):
                same = False
        if not same:
            raise ValueError(
                f"prompt {i}: student {name!r} was explained with other players or another target than the "
                "teacher; compute it with compute_interactions(..., like=teacher_results)"
            )


def _plain(x):
    return tuple(x) if isinstance(x, (list, tuple)) else x


def _interaction_row(result, teacher_result, ks, k_main, max_simple_order, threshold) -> dict:
    x = as_interactions(result)
    n = _num_players(x)
    parts = simple_complex(x, teacher_result, max_simple_order=max_simple_order, k=k_main)
    row = {
        "n": n,
        "gini": gini(x).item(),
        "entropy": entropy(x).item(),
        "salient": int(by_order(x, threshold=threshold).salient.sum()),
        **{key: value.item() for key, value in parts.items() if not key.startswith("overlap")},
    }
    if teacher_result is not None:
        curve = overlap_at_k(teacher_result, x, list(ks))
        row.update({overlap_column(k): v for k, v in zip(ks, curve.tolist())})
        row[overlap_column(k_main, "simple")] = parts["overlap_simple"].item()
        row[overlap_column(k_main, "complex")] = parts["overlap_complex"].item()
    values = getattr(result, "values", None)
    if values is not None:
        row["v_full"] = float(values[-1])
        row["v_empty"] = float(values[0])
    return row


def _order_profile(results: list, threshold: float) -> dict[str, list[float]]:
    """Per order j = 1..max n: the mean over prompts (those with n >= j) of each OrderProfile field."""
    profiles = [by_order(r, threshold=threshold) for r in results]
    top = max(len(p.orders) for p in profiles)
    out: dict[str, list[float]] = {"order": list(range(1, top + 1))}
    for key in ("strength", "strength_pos", "strength_neg", "share", "share_pos", "share_neg",
                "salient", "salient_pos", "salient_neg"):
        table = np.full((len(profiles), top), np.nan)
        for i, p in enumerate(profiles):
            table[i, : len(p.orders)] = getattr(p, key).numpy()
        with np.errstate(all="ignore"):
            counts = (~np.isnan(table)).sum(0)
            means = np.where(counts > 0, np.nansum(table, 0) / np.maximum(counts, 1), np.nan)
        out[key] = [float(v) for v in means]
    out["prompts"] = [sum(len(p.orders) >= j for p in profiles) for j in range(1, top + 1)]
    return out


def _sorted_curve(results: list, points: int = 200) -> dict[str, list[float]]:
    """Sorted normalised strengths |I~| (descending) against the relative rank r / M, averaged over prompts
    on a common grid (prompts may have different n): mean, 25% and 75% quantiles."""
    grid = np.linspace(0, 1, points)
    curves = []
    for r in results:
        u = np.sort(normalise(r)[1:].abs().numpy())[::-1]
        m = len(u)
        rank = (np.arange(1, m + 1) - 0.5) / m if m > 1 else np.array([0.0])
        curves.append(np.interp(grid, rank, u))
    stack = np.stack(curves)
    return {
        "rank": grid.tolist(),
        "mean": stack.mean(0).tolist(),
        "q25": np.quantile(stack, 0.25, axis=0).tolist(),
        "q75": np.quantile(stack, 0.75, axis=0).tolist(),
    }


def compare_models(
    teacher: Sequence,
    students: Mapping[str, Sequence],
    *,
    teacher_name: str = "teacher",
    prompt_ids: Sequence[str] | None = None,
    ks: Sequence[float] = DEFAULT_KS,
    k_main: float = 0.1,
    max_simple_order: int | None = None,
    salient_threshold: float = DEFAULT_SALIENT_THRESHOLD,
    outputs: Mapping[str, Sequence[str]] | None = None,
    extractor: Callable[[str], Hashable | None] = last_number,
    confidence: float = 0.95,
) -> Comparison:
    """Compare a teacher's interactions (and outputs) with each student's over the same prompts.

    teacher: one InteractionResult per prompt; students: name -> results computed with like=teacher (same
    players and y*). ks: the Overlap@k ratios; k_main: the k of the simple/complex overlaps and of the
    correlations. outputs: optional model name -> generated text per prompt (teacher and students), for
    agreement (with `extractor`), BLEU fidelity and ROUGE-L against the teacher's text.
    Raises ValueError when a student's results do not line up with the teacher's.
    """
    teacher, students, ids = _checked_inputs(teacher, students, teacher_name, prompt_ids)
    ks = [float(k) for k in ks]
    if k_main not in ks:
        ks = sorted([*ks, float(k_main)])
    models = [teacher_name, *students]
    all_results = {teacher_name: teacher, **students}
    answers, text_scores = _text_scores(outputs, models, teacher_name, list(students), len(teacher), extractor)
    rows = _rows(ids, models, all_results, teacher_name, ks, k_main, max_simple_order, salient_threshold, outputs,
                 answers, text_scores)
    summary = {
        "teacher": teacher_name,
        "students": list(students),
        "settings": {
            "ks": ks,
            "k_main": k_main,
            "max_simple_order": max_simple_order,
            "simple_orders": {str(n): split_orders(n, max_simple_order)[0] for n in sorted({r["n"] for r in rows})},
            "salient_threshold": salient_threshold,
            "confidence": confidence,
            "extractor": getattr(extractor, "__name__", repr(extractor)) if outputs is not None else None,
        },
        "prompts": [{"id": pid, "prompt": getattr(t, "prompt", None), "n": _num_players(t),
                     "players": list(getattr(t, "player_texts", None) or []),
                     "target": getattr(t, "target_text", None)} for pid, t in zip(ids, teacher)],
        "models": {m: _model_summary(m, rows, all_results[m], teacher_name, ks, k_main, salient_threshold, outputs,
                                     extractor, confidence) for m in models},
        "correlations": {m: _correlations(rows, m, teacher_name, k_main, outputs is not None) for m in students},
    }
    return Comparison(
        teacher=teacher_name, students=list(students), ks=ks, k_main=k_main, max_simple_order=max_simple_order,
        salient_threshold=salient_threshold, prompt_ids=ids, results=all_results, rows=rows,
        summary=json_ready(summary), outputs={m: list(outputs[m]) for m in models} if outputs else None,
        answers=answers,
    )


def _checked_inputs(teacher, students, teacher_name, prompt_ids) -> tuple[list, dict[str, list], list[str]]:
    """(teacher results, student name -> results, prompt ids), checked to line up."""
    teacher = list(teacher)
    if not teacher:
        raise ValueError("compare_models needs at least one prompt")
    if not students:
        raise ValueError("compare_models needs at least one student")
    if teacher_name in students:
        raise ValueError(f"a student is named like the teacher ({teacher_name!r}); give them distinct names")
    students = {name: list(res) for name, res in students.items()}
    for name, res in students.items():
        _check_aligned(teacher, name, res)
    ids = [str(i) for i in prompt_ids] if prompt_ids is not None else [f"{i:03d}" for i in range(len(teacher))]
    if len(ids) != len(teacher):
        raise ValueError(f"{len(ids)} prompt ids for {len(teacher)} prompts")
    return teacher, students, ids


def _text_scores(outputs, models, teacher_name, students, prompts, extractor):
    """(answers by model, per-example agree/bleu/rouge_l of each student against the teacher), or (None, {})."""
    if outputs is None:
        return None, {}
    missing = [m for m in models if m not in outputs]
    if missing:
        raise ValueError(f"outputs lack the model(s) {missing}; give one text per prompt for every model")
    for m in models:
        if len(outputs[m]) != prompts:
            raise ValueError(f"outputs[{m!r}] has {len(outputs[m])} texts for {prompts} prompts")
    answers = {m: [extractor(t) for t in outputs[m]] for m in models}
    ref = list(outputs[teacher_name])
    scores = {m: {"agree": [float(a) for a in answers_agree(ref, list(outputs[m]), extractor)],
                  "bleu": fidelity_per_example(ref, list(outputs[m])),
                  "rouge_l": rouge_l_per_example(ref, list(outputs[m]))} for m in students}
    return answers, scores


def _rows(ids, models, all_results, teacher_name, ks, k_main, max_simple_order, threshold, outputs, answers,
          text_scores) -> list[dict]:
    """One row per prompt and model: the interaction measures, and the outputs' answers and scores."""
    columns = ["id", "model", "role", "n", *INTERACTION_COLUMNS]
    columns += [overlap_column(k) for k in ks] + [overlap_column(k_main, p) for p in ("simple", "complex")]
    columns += ["v_full", "v_empty", "target"]
    if outputs is not None:
        columns += ["output", "answer", *TEXT_COLUMNS]
    rows: list[dict] = []
    for i, pid in enumerate(ids):
        t_res = all_results[teacher_name][i]
        for m in models:
            res = all_results[m]
            row = {"id": pid, "model": m, "role": "teacher" if m == teacher_name else "student"}
            row.update(_interaction_row(res[i], None if m == teacher_name else t_res, ks, k_main, max_simple_order,
                                        threshold))
            row["target"] = getattr(res[i], "target_text", None)
            if outputs is not None:
                row["output"] = outputs[m][i]
                row["answer"] = answers[m][i]
                if m in text_scores:
                    row.update({key: text_scores[m][key][i] for key in TEXT_COLUMNS})
            rows.append({c: row.get(c) for c in columns})
    return rows


def _model_summary(m, rows, results, teacher_name, ks, k_main, threshold, outputs, extractor, confidence) -> dict:
    """Means with intervals of every measure, the order profile and strength curve, and for a student the
    paired differences from the teacher and the text scores (teacher_text_scores)."""
    is_teacher = m == teacher_name
    overlaps = [overlap_column(k) for k in ks] + [overlap_column(k_main, p) for p in ("simple", "complex")]
    cols = [*INTERACTION_COLUMNS] + ([] if is_teacher else overlaps + (list(TEXT_COLUMNS) if outputs else []))
    entry = {
        "role": "teacher" if is_teacher else "student",
        "model_name": getattr(results[0], "model_name", m),
        "metrics": {c: mean_ci(_column(rows, m, c), confidence, nan_policy="omit").as_dict() for c in cols},
        "by_order": _order_profile(results, threshold),
        "sorted_strength": _sorted_curve(results),
    }
    if not is_teacher:  # paired over prompts: student minus teacher, with its interval
        entry["difference"] = {
            c: mean_ci([b - a for a, b in zip(_column(rows, teacher_name, c), _column(rows, m, c))], confidence,
                       nan_policy="omit").as_dict()
            for c in PAIRED_COLUMNS
        }
        if outputs is not None:
            entry["text"] = teacher_text_scores(list(outputs[teacher_name]), list(outputs[m]), extractor)
    return entry


def _correlations(rows, m, teacher_name, k_main, with_text: bool) -> list[dict]:
    """Spearman correlations between per-prompt measures of student m (and the teacher's Gini)."""
    measures = {
        "teacher gini": _column(rows, teacher_name, "gini"),
        "student gini": _column(rows, m, "gini"),
        "student gini_complex": _column(rows, m, "gini_complex"),
        overlap_column(k_main): _column(rows, m, overlap_column(k_main)),
        overlap_column(k_main, "complex"): _column(rows, m, overlap_column(k_main, "complex")),
    }
    if with_text:
        measures["rouge_l"] = _column(rows, m, "rouge_l")
    return [c.as_dict() for c in spearman_table(measures)]


def json_ready(obj):
    """Floats NaN/inf become None (JSON has no NaN); tensors and numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
