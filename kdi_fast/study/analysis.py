"""The study's findings from the runs of the lab grid: effects with 95% bootstrap intervals over seeds, verdicts.

Fixed before the grid ran (the report states them):
- intervals: percentile bootstrap (10,000 resamples) of the mean over seeds of a per-seed paired difference;
- verdict of one interval: "confirmed" when it lies above 0 (or on the side the claim predicts), "refuted" when it
  lies on the other side, "not separable" when it contains 0 (claims on interactions: under each masking; the
  claim's verdict is the common one, or "differs by masking" when the two maskings disagree);
- before distillation = the sft (labels-only) student of the same size and seed;
- simple/complex, k and chance levels: kdi_fast.study.measure; collapse: test accuracy below 5%;
  best T: highest mean test accuracy; correlation: Spearman over the runs of one student size, bootstrap over runs;
- CIP: the CIP weight of each method is chosen on the validation accuracy (mean over seeds); the test paired
  differences of all methods are tested together (paired t-test, Holm correction over methods and sizes).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .lab import KD_METHODS, MASKINGS
from .measure import chance_overlap

__all__ = ["bootstrap_mean", "verdict", "findings", "N_BOOT"]

N_BOOT = 10_000
ALPHA = 0.05


def bootstrap_mean(values: Sequence[float], *, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Mean of the finite values with a 95% percentile bootstrap interval; NaN interval below 2 values."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(a) == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    if len(a) < 2:
        return {"mean": float(a.mean()), "lo": math.nan, "hi": math.nan, "n": 1}
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(a.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(a))}


def verdict(ci: dict, *, direction: int = 1) -> str:
    """'confirmed' if the interval lies strictly on the predicted side of 0, 'refuted' if strictly on the other
    side, else 'not separable' (also when there is no interval)."""
    lo, hi = ci["lo"] * direction, ci["hi"] * direction
    if direction < 0:
        lo, hi = hi, lo
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not separable"
    if lo > 0:
        return "confirmed"
    if hi < 0:
        return "refuted"
    return "not separable"


def _combine(per_masking: dict[str, str]) -> str:
    values = set(per_masking.values())
    if len(values) == 1:
        return values.pop()
    return "differs by masking (" + ", ".join(f"{m}: {v}" for m, v in per_masking.items()) + ")"


class _Runs:
    def __init__(self, records: Sequence[dict]):
        self.by_name: dict[str, dict[int, dict]] = defaultdict(dict)
        for r in records:
            self.by_name[r["name"]][r["seed"]] = r
        self.records = list(records)

    def get(self, name: str) -> dict[int, dict]:
        return self.by_name.get(name, {})

    def paired(self, a: str, b: str, value) -> dict[int, float]:
        """Per seed present in both cells: value(run of a) - value(run of b)."""
        ra, rb = self.get(a), self.get(b)
        return {s: value(ra[s]) - value(rb[s]) for s in sorted(set(ra) & set(rb))
                if _finite(value(ra[s])) and _finite(value(rb[s]))}


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _inter(masking: str, key: str):
    return lambda r: _none_nan(r["interactions"][masking].get(key))


def _none_nan(x):
    return math.nan if x is None else x


def _acc(r) -> float:
    return r["test_accuracy"]


def _mean_over_methods(per_method: dict[str, dict[int, float]]) -> dict[int, float]:
    """Per seed, the mean over the methods that have that seed."""
    seeds = defaultdict(list)
    for values in per_method.values():
        for s, v in values.items():
            seeds[s].append(v)
    return {s: float(np.mean(v)) for s, v in seeds.items()}


def _spearman_ci(x: Sequence[float], y: Sequence[float], *, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Spearman's rho (kdi_fast.metrics.stats.spearman) with a 95% percentile bootstrap interval over the pairs
    (resamples where either side is constant have no rho and are dropped)."""
    from scipy.stats import rankdata

    from ..metrics.stats import spearman

    pairs = [(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    if len(pairs) < 4:
        return {"rho": math.nan, "lo": math.nan, "hi": math.nan, "n": len(pairs), "pvalue": math.nan}
    a, b = np.array(pairs).T
    point = spearman(a, b)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    ra, rb = rankdata(a[idx], axis=1), rankdata(b[idx], axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = (ra * rb).sum(1) / denom
    rhos = rhos[np.isfinite(rhos)]
    lo, hi = np.percentile(rhos, [2.5, 97.5]) if len(rhos) else (math.nan, math.nan)
    return {"rho": point.rho, "lo": float(lo), "hi": float(hi), "n": len(a), "pvalue": point.pvalue}


def _holm(pvalues: dict[str, float]) -> dict[str, float]:
    items = sorted((p, k) for k, p in pvalues.items() if math.isfinite(p))
    m, out, running = len(items), {}, 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    for k, p in pvalues.items():
        out.setdefault(k, math.nan)
    return out


def findings(records: Sequence[dict], *, sizes: Sequence[str], n_players: int = 8) -> dict:
    """Every claim of issue 13 as {claim, effect rows (with 95% CI), verdict}, from the runs' records."""
    runs = _Runs(records)
    small, large = sizes[0], sizes[-1]
    out: dict[str, dict] = {}
    methods = [m for m in KD_METHODS if any(runs.get(f"{s}_{m}") for s in sizes)]

    # 1. sparsity after vs before distillation
    rows, per_masking = [], {}
    for masking in MASKINGS:
        pooled = {}
        for size in sizes:
            per_method = {m: runs.paired(f"{size}_{m}", f"{size}_sft", _inter(masking, "gini")) for m in methods}
            for m, values in per_method.items():
                rows.append({"masking": masking, "size": size, "method": m, **bootstrap_mean(list(values.values()))})
            pooled.update({(size, s): v for s, v in _mean_over_methods(per_method).items()})
        ci = bootstrap_mean(list(pooled.values()))
        rows.append({"masking": masking, "size": "both", "method": "all KD (mean)", **ci})
        per_masking[masking] = verdict(ci)
    out["sparsity"] = {"claim": "distillation makes the student's interactions sparser than before distillation "
                                "(Gini of the distilled student - Gini of the sft student, same size and seed)",
                       "rows": rows, "verdicts": per_masking, "verdict": _combine(per_masking)}

    # 2. inherit simple more than complex: overlap above chance, simple minus complex
    chance = chance_overlap(n_players)
    rows, per_masking = [], {}
    for masking in MASKINGS:
        pooled = {}
        for size in sizes:
            for m in ["sft", *methods]:
                cell = runs.get(f"{size}_{m}")
                values = {s: (_none_nan(r["interactions"][masking].get("overlap_simple")) - chance["simple"])
                          - (_none_nan(r["interactions"][masking].get("overlap_complex")) - chance["complex"])
                          for s, r in cell.items()}
                values = {s: v for s, v in values.items() if math.isfinite(v)}
                rows.append({"masking": masking, "size": size, "method": m, **bootstrap_mean(list(values.values()))})
                if m != "sft":
                    for s, v in values.items():
                        pooled.setdefault((size, s), []).append(v)
        ci = bootstrap_mean([float(np.mean(v)) for v in pooled.values()])
        rows.append({"masking": masking, "size": "both", "method": "all KD (mean)", **ci})
        per_masking[masking] = verdict(ci)
    out["simple_vs_complex"] = {
        "claim": "distilled students inherit simple interactions more than complex ones ((Overlap@k simple - "
                 "chance) - (Overlap@k complex - chance), k = 0.1)", "chance": chance,
        "rows": rows, "verdicts": per_masking, "verdict": _combine(per_masking)}

    # 3. correlations with the task score, within one student size, over all its runs
    for key, label in (("gini_complex", "complex-interaction sparsity (Gini of complex)"),
                       ("salient_complex_overlap", "salient complex overlap")):
        rows, verdicts = [], {}
        for masking in MASKINGS:
            sub = []
            for size in sizes:
                recs = [r for r in records if r["cell"]["size"] == size]
                ci = _spearman_ci([_none_nan(r["interactions"][masking].get(key)) for r in recs],
                                  [_acc(r) for r in recs])
                rows.append({"masking": masking, "size": size, **ci})
                sub.append(verdict(ci))
            verdicts[masking] = sub[0] if len(set(sub)) == 1 else "differs by size (" + ", ".join(
                f"{s}: {v}" for s, v in zip(sizes, sub)) + ")"
        out[f"correlation_{key}"] = {
            "claim": f"across students of one size, {label} correlates positively with test accuracy (Spearman)",
            "rows": rows, "verdicts": verdicts, "verdict": _combine(verdicts)}

    # 4. CIP raises the task score of at least one KD method (weight chosen on validation; Holm over methods)
    from scipy import stats

    rows, pvalues = [], {}
    for size in sizes:
        for m in methods:
            weights = sorted({r["cell"]["cip"] for recs in runs.by_name.values() for r in recs.values()
                              if r["cell"]["size"] == size and r["cell"]["method"] == m and r["cell"]["cip"] > 0})
            if not weights:
                continue
            val = {w: np.mean([r["val_accuracy"] for r in runs.get(f"{size}_{m}_cip{w:g}").values()] or [math.nan])
                   for w in weights}
            chosen = max(weights, key=lambda w: -math.inf if math.isnan(val[w]) else val[w])
            diffs = runs.paired(f"{size}_{m}_cip{chosen:g}", f"{size}_{m}", _acc)
            d = list(diffs.values())
            p = float(stats.ttest_rel(d, [0.0] * len(d)).pvalue) if len(d) >= 2 and np.ptp(d) > 0 else math.nan
            key = f"{size}/{m}"
            pvalues[key] = p
            rows.append({"size": size, "method": m, "cip_weight": chosen, "val_accuracy_by_weight": val,
                         "pvalue": p, **bootstrap_mean(d)})
    adjusted = _holm(pvalues)
    for row in rows:
        row["pvalue_holm"] = adjusted[f"{row['size']}/{row['method']}"]
    wins = [r for r in rows if r["mean"] > 0 and r["pvalue_holm"] < ALPHA]
    losses = [r for r in rows if r["mean"] < 0 and r["pvalue_holm"] < ALPHA]
    cip_verdict = "confirmed" if wins else ("refuted" if losses and all(
        _finite(r["hi"]) and r["hi"] < 0 for r in rows) else "not separable")
    out["cip"] = {"claim": "CIP raises the test accuracy of at least one KD method (paired by seed; paired t-test, "
                           "Holm over methods and sizes)", "rows": rows, "verdict": cip_verdict}

    # 5a. teacher noise sigma = 5 collapses the student (test accuracy below 5%)
    rows = []
    for name in sorted(n for n in runs.by_name if n.startswith(f"{small}_kd_sigma")) + [f"{small}_kd"]:
        ci = bootstrap_mean([_acc(r) for r in runs.get(name).values()])
        rows.append({"cell": name, **ci})
    sigma5 = next((r for r in rows if r["cell"] == f"{small}_kd_sigma5"), None)
    if sigma5 is None or not _finite(sigma5["hi"]):
        v = "not separable"
    else:
        v = "confirmed" if sigma5["hi"] < 0.05 else ("refuted" if sigma5["lo"] >= 0.05 else "not separable")
    out["noise_collapse"] = {"claim": "teacher-logit noise sigma = 5 collapses the student (kd, smaller size; "
                                      "test accuracy below 5%)", "rows": rows, "verdict": v}

    # 5b. T = 2 is best
    temps = {1.0: f"{small}_kd"}
    temps.update({r["cell"]["temperature"]: r["name"] for recs in runs.by_name.values() for r in recs.values()
                  if r["name"].startswith(f"{small}_kd_T")})
    means = {t: bootstrap_mean([_acc(r) for r in runs.get(n).values()]) for t, n in sorted(temps.items())}
    rows = [{"temperature": t, **ci} for t, ci in means.items()]
    finite = {t: ci["mean"] for t, ci in means.items() if _finite(ci["mean"])}
    best = max(finite, key=finite.get) if finite else None
    v = "not separable"
    if best is not None and 2.0 in temps:
        others = [t for t in temps if t != best]
        diffs = {t: bootstrap_mean(list(runs.paired(temps[best], temps[t], _acc).values())) for t in others}
        separated = all(_finite(ci["lo"]) and ci["lo"] > 0 for ci in diffs.values())
        if separated:
            v = "confirmed" if best == 2.0 else "refuted"
        elif best != 2.0 and _finite(diffs.get(2.0, {}).get("lo", math.nan)) and diffs[2.0]["lo"] > 0:
            v = "refuted"
        rows.append({"best": best, "best_minus": {str(t): ci for t, ci in diffs.items()}})
    out["best_temperature"] = {"claim": "T = 2 gives the highest test accuracy among T in {1, 2, 5} (kd, smaller "
                                        "size)", "rows": rows, "best": best, "verdict": v}

    # 5c. KD helps the smaller student more
    gain = {size: runs.paired(f"{size}_kd", f"{size}_sft", _acc) for size in (small, large)}
    seeds = sorted(set(gain[small]) & set(gain[large]))
    ci = bootstrap_mean([gain[small][s] - gain[large][s] for s in seeds])
    rows = [{"size": size, "kd_minus_sft": bootstrap_mean(list(g.values()))} for size, g in gain.items()]
    rows.append({"size": "smaller - larger", **ci})
    out["kd_helps_smaller"] = {"claim": "KD (over sft) helps the smaller student more than the larger one "
                                        "(difference of paired gains, test accuracy)", "rows": rows,
                               "verdict": verdict(ci) if small != large else "not separable"}
    return out
