"""The report's figures (matplotlib, Agg backend, PNG). Each function draws one figure from a Comparison and
writes it to `path` atomically; the numbers drawn are the Comparison's (computed by kdi_fast.metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._extras import needs
from ..metrics.comparison import Comparison, overlap_column
from ..metrics.interaction import normalise, top_interactions
from .._io import atomic_write
from .labels import player_names, subset_label

__all__ = [
    "model_colors",
    "plot_sorted_strength",
    "plot_by_order",
    "plot_overlap",
    "plot_simple_complex",
    "plot_top_interactions",
]

_TEACHER_COLOR = "#222222"
_STUDENT_COLORS = ("#d1495b", "#2e86ab", "#edae49", "#66a182", "#8d6a9f", "#00798c")


def _pyplot():
    with needs("metrics"):
        import matplotlib

    matplotlib.use("Agg", force=False)  # headless; keeps a backend the caller chose already
    with needs("metrics"):
        import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "font.size": 9.5, "axes.titlesize": 10.5,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
        "legend.frameon": False,
    })
    return plt


def model_colors(comparison: Comparison) -> dict[str, str]:
    """One colour per model, the teacher in near-black, students in a fixed palette."""
    colors = {comparison.teacher: _TEACHER_COLOR}
    for i, s in enumerate(comparison.students):
        colors[s] = _STUDENT_COLORS[i % len(_STUDENT_COLORS)]
    return colors


def _save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (never a half-written file), then close it."""
    with needs("metrics"):
        import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def _metric(comparison: Comparison, model: str, name: str) -> dict:
    return comparison.summary["models"][model]["metrics"].get(name) or {}


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def _err(entry: dict) -> tuple[float, float]:
    """(mean, half-width of the interval) with NaN for missing parts (one prompt: no interval)."""
    mean, low, high = _nan(entry.get("mean")), _nan(entry.get("low")), _nan(entry.get("high"))
    return mean, (high - low) / 2 if math.isfinite(low) and math.isfinite(high) else 0.0


def plot_sorted_strength(comparison: Comparison, path: str | Path) -> Path:
    """Sorted |I~_S| (descending) against the relative rank, mean over prompts with the 25-75% band, log y."""
    plt = _pyplot()
    colors = model_colors(comparison)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    floor = 1e-4
    for m in comparison.models:
        curve = comparison.summary["models"][m]["sorted_strength"]
        rank = np.asarray(curve["rank"])
        mean = np.clip(np.asarray(curve["mean"], dtype=float), floor, None)
        g = _nan(_metric(comparison, m, "gini").get("mean"))
        ax.plot(rank, mean, color=colors[m], lw=2, label=f"{m}  (Gini {g:.3f})")
        ax.fill_between(rank, np.clip(np.asarray(curve["q25"], dtype=float), floor, None),
                        np.clip(np.asarray(curve["q75"], dtype=float), floor, None), color=colors[m], alpha=0.15,
                        lw=0)
    ax.set_yscale("log")
    ax.set_ylim(floor, 1.2)
    ax.set_xlim(0, 1)
    ax.set_xlabel("rank of the interaction / M  (strongest first)")
    ax.set_ylabel("normalised strength |I_S| / max |I_S|")
    ax.set_title("Sorted interaction strength: a steeper drop = sparser interactions")
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_by_order(comparison: Comparison, path: str | Path) -> Path:
    """Three panels per order |S|: mean strength, share of the total strength, salient counts (+ up, - down)."""
    plt = _pyplot()
    colors = model_colors(comparison)
    models = comparison.models
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    width = 0.8 / len(models)
    for j, m in enumerate(models):
        prof = comparison.summary["models"][m]["by_order"]
        orders = np.asarray(prof["order"])
        strength = np.asarray([_nan(v) for v in prof["strength"]])
        axes[0].plot(orders, strength, "o-", color=colors[m], lw=1.8, ms=4, label=m)
        x = orders + (j - (len(models) - 1) / 2) * width
        axes[1].bar(x, [_nan(v) for v in prof["share"]], width, color=colors[m], label=m)
        axes[2].bar(x, [_nan(v) for v in prof["salient_pos"]], width, color=colors[m], label=m)
        axes[2].bar(x, [-_nan(v) for v in prof["salient_neg"]], width, color=colors[m], alpha=0.55)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(_plain_formatter())
    axes[0].yaxis.set_minor_formatter(_plain_formatter(minor=True))
    axes[0].set_title("Mean strength |I~_S| per order")
    axes[1].set_title("Share of the total strength per order")
    thr = comparison.salient_threshold
    axes[2].set_title(f"Salient interactions per order (|I~_S| > {thr:g}),\n"
                      "mean count per prompt: positive up, negative down")
    axes[2].axhline(0, color="#555555", lw=0.8)
    for ax in axes:
        ax.set_xlabel("order |S| (number of players in S)")
        ax.set_xticks(orders)
    axes[0].legend()
    cut = comparison.summary["settings"]["simple_orders"]
    simple_max = max((max(v) for v in cut.values() if v), default=0)
    for ax in axes[:2]:
        ax.axvspan(0.5, simple_max + 0.5, color="#999999", alpha=0.08, lw=0)
    axes[1].text(0.6, axes[1].get_ylim()[1] * 0.95, "simple", va="top", color="#666666", fontsize=8.5)
    return _save(fig, path)


def _plain_formatter(minor: bool = False):
    """Log-axis tick labels as plain decimals (0.02, 0.05, 0.1), minor ticks labelled only at 2 and 5."""
    with needs("metrics"):
        from matplotlib.ticker import FuncFormatter

    def label(y, _pos):
        if y <= 0:
            return ""
        lead = round(y / 10 ** math.floor(math.log10(y)), 6)
        if minor and lead not in (2.0, 5.0):
            return ""
        return f"{y:.10g}"

    return FuncFormatter(label)


def plot_overlap(comparison: Comparison, path: str | Path) -> Path:
    """Overlap@k of each student with the teacher against k (mean and 95% interval), with the chance level k."""
    plt = _pyplot()
    colors = model_colors(comparison)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ks = np.asarray(comparison.ks)
    for s in comparison.students:
        stats = [_err(_metric(comparison, s, overlap_column(k))) for k in comparison.ks]
        mean = np.asarray([a for a, _ in stats])
        half = np.asarray([b for _, b in stats])
        ax.plot(ks, mean, "o-", color=colors[s], lw=2, ms=4, label=s)
        ax.fill_between(ks, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), color=colors[s], alpha=0.15,
                        lw=0)
    ax.plot(ks, ks, "--", color="#888888", lw=1.2, label="chance (random top sets: k)")
    ax.set_xscale("log")
    ax.set_xticks(ks, [f"{k:g}" for k in ks])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k  (top-floor(k M) interactions of each model)")
    ax.set_ylabel("Overlap@k with the teacher")
    ax.set_title("Alignment of the strongest interactions with the teacher")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_simple_complex(comparison: Comparison, path: str | Path) -> Path:
    """Bars for simple vs complex interactions: share of strength, Gini, and Overlap@k_main (students)."""
    plt = _pyplot()
    colors = model_colors(comparison)
    models = comparison.models
    panels = [
        ("Share of the total strength", "share_{}", models),
        ("Sparsity within the part (Gini)", "gini_{}", models),
        (f"Overlap@{comparison.k_main:g} with the teacher", f"overlap_{{}}@{comparison.k_main:g}",
         comparison.students),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.7))
    for ax, (title, pattern, who) in zip(axes, panels):
        width = 0.8 / max(len(who), 1)
        for j, m in enumerate(who):
            vals = [_err(_metric(comparison, m, pattern.format(p))) for p in ("simple", "complex")]
            x = np.arange(2) + (j - (len(who) - 1) / 2) * width
            ax.bar(x, [v for v, _ in vals], width, yerr=[e for _, e in vals], color=colors[m], capsize=3,
                   label=m, error_kw={"lw": 1, "ecolor": "#444444"})
        ax.set_xticks([0, 1], ["simple", "complex"])
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
    axes[2].axhline(comparison.k_main, ls="--", color="#888888", lw=1.1, label="chance (k)")
    handles, labels = axes[0].get_legend_handles_labels()
    chance = [h for h, text in zip(*axes[2].get_legend_handles_labels()) if text == "chance (k)"]
    fig.legend(handles + chance, labels + ["chance (k)"] * len(chance), loc="upper center", ncol=len(models) + 1,
               bbox_to_anchor=(0.5, 1.08))
    fig.text(0.5, -0.03, _split_note(comparison), ha="center", color="#555555", fontsize=8.5)
    return _save(fig, path)


def _split_note(comparison: Comparison) -> str:
    settings = comparison.summary["settings"]
    parts = [f"n={n}: simple = orders 1..{max(v) if v else 0}" for n, v in settings["simple_orders"].items()]
    return "; ".join(parts) + ", complex = the higher orders (error bars: 95% interval over prompts)"


def _label(names: list[str], mask: int, width: int = 34) -> str:
    """The subset's words, wrapped on two lines at most (cut with '...' beyond)."""
    import textwrap

    lines = textwrap.wrap(subset_label(names, mask), width, break_on_hyphens=False)
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 4] + " ...}"]
    return "\n".join(lines)


def plot_top_interactions(comparison: Comparison, path: str | Path, *, prompts: int = 3, top: int = 6) -> Path:
    """The `top` strongest interactions (by |I_S|, words shown) of each model on the first `prompts` prompts:
    one row per prompt (titled with the prompt), one panel per model; negative effects in a lighter shade."""
    with needs("metrics"):
        from matplotlib.colors import to_rgba

    plt = _pyplot()
    colors = model_colors(comparison)
    models = comparison.models
    rows = min(prompts, len(comparison.prompt_ids))
    fig = plt.figure(figsize=(4.6 * len(models) + 1.2, (0.48 * top + 1.0) * rows), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(rows, 1))
    for r, sub in enumerate(subfigs):
        prompt = comparison.summary["prompts"][r]
        target = (prompt.get("target") or "").strip()
        text = _wrap(prompt.get("prompt") or prompt["id"], 110)
        sub.suptitle(f"\u201c{text}\u201d \u2192 \u201c{target[:40]}\u201d", fontsize=9.5, x=0.01, ha="left",
                     color="#333333")
        axes = np.atleast_1d(sub.subplots(1, len(models)))
        for c, m in enumerate(models):
            ax = axes[c]
            result = comparison.results[m][r]
            masks, values = top_interactions(normalise(result), top)
            names = player_names(result)
            labels = [_label(names, int(k)) for k in masks.tolist()]
            vals = values.tolist()
            y = np.arange(len(vals))[::-1]
            shades = [to_rgba(colors[m], 1.0 if v >= 0 else 0.4) for v in vals]
            ax.barh(y, vals, color=shades, height=0.7)
            ax.set_yticks(y, labels, fontsize=8)
            ax.axvline(0, color="#555555", lw=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.grid(axis="y", visible=False)
            ax.set_title(m, fontsize=9.5, fontweight="bold", color=colors[m], loc="right")
            if r == rows - 1:
                ax.set_xlabel("I_S / max |I_S|  (light: negative)")
    return _save(fig, path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:2])
