"""The Markdown report: what a researcher reads after `kdi compare`. It formats the numbers of a Comparison
(computed by kdi_fast.metrics) and links the PNGs written beside it; it computes nothing of its own."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..metrics.comparison import Comparison, overlap_column
from ..metrics.interaction import normalise, top_interactions
from .labels import player_names, subset_label

__all__ = ["render_markdown", "fmt"]


def fmt(x, digits: int = 3) -> str:
    """A number for a table: floats with fixed digits, ints as they are, '-' for missing/NaN, bools yes/no."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x}"
    return f"{x:.{digits}f}"


def _ci(entry: Mapping | None, digits: int = 3) -> str:
    """'0.512 ± 0.031' (mean ± half-width of the interval), or just the mean when there is no interval."""
    if not entry or entry.get("mean") is None:
        return "-"
    mean, low, high = entry["mean"], entry.get("low"), entry.get("high")
    if low is None or high is None:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt((high - low) / 2, digits)}"


def _esc(text: str | None) -> str:
    """Text safe inside a Markdown table cell."""
    if text is None:
        return ""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("`", "'").strip()


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


_METRIC_LABELS = [
    ("gini", "Gini of \\|I_S\\| (higher = sparser)"),
    ("entropy", "entropy of \\|I_S\\| (nats, lower = sparser)"),
    ("salient", "salient interactions (count)"),
    ("share_simple", "share of strength in simple interactions"),
    ("share_complex", "share of strength in complex interactions"),
    ("gini_simple", "Gini within simple"),
    ("gini_complex", "Gini within complex"),
]


def _signed_interval(entry: Mapping | None) -> tuple[str, str]:
    """('+0.041 [-0.012, +0.094]', verdict) for a paired difference; the verdict says whether the interval
    excludes 0."""
    if not entry or entry.get("mean") is None:
        return "-", "not measurable"
    mean, low, high = entry["mean"], entry.get("low"), entry.get("high")
    if low is None or high is None:
        return f"{mean:+.3f}", "one prompt: no interval"
    verdict = "the 95% interval excludes 0" if low > 0 or high < 0 else "within noise: the 95% interval holds 0"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", verdict


def _percent(x) -> str:
    return fmt(100 * x if x is not None else None, 1)


def _findings(c: Comparison) -> list[str]:
    s = c.summary["models"]
    t = s[c.teacher]["metrics"]
    lines = []
    for m in c.students:
        sm = s[m]["metrics"]
        diff = s[m].get("difference", {})
        g_t, g_s = t["gini"].get("mean"), sm["gini"].get("mean")
        gini_diff, gini_verdict = _signed_interval(diff.get("gini"))
        k = c.k_main
        ov = sm[overlap_column(k)].get("mean")
        ov_s, ov_c = sm[overlap_column(k, "simple")].get("mean"), sm[overlap_column(k, "complex")].get("mean")
        sh_t, sh_s = t["share_complex"].get("mean"), sm["share_complex"].get("mean")
        share_diff, share_verdict = _signed_interval(diff.get("share_complex"))
        verb = "sparser than" if (g_s or 0) > (g_t or 0) else "less sparse than"
        lines.append(
            f"- **Sparsity.** The interactions of **{m}** are {verb} the teacher's: mean Gini {fmt(g_s)} vs "
            f"{fmt(g_t)}, paired difference {gini_diff} ({gini_verdict})."
        )
        lines.append(
            f"- **Complex interactions** carry {_percent(sh_s)}% of the strength of **{m}** and {_percent(sh_t)}% "
            f"of the teacher's (paired difference of the share {share_diff}; {share_verdict})."
        )
        if ov is not None:
            ratio = f", {ov / k:.1f}x chance" if k > 0 else ""
            lines.append(
                f"- **Alignment.** Overlap@{k:g} of **{m}** with the teacher: {fmt(ov)} (chance {k:g}{ratio}); "
                f"within simple interactions {fmt(ov_s)}, within complex ones {fmt(ov_c)}."
            )
        text = s[m].get("text")
        if text:
            lines.append(
                f"- **Outputs** of **{m}** against the teacher's: "
                f"answer agreement {_percent(text['agreement'])}%, "
                f"BLEU {fmt(text['fidelity_bleu'], 1)}, ROUGE-L {fmt(text['rouge_l'], 1)}."
            )
    return lines


def _settings_lines(c: Comparison, run_info: Mapping | None) -> list[str]:
    st = c.summary["settings"]
    ns = sorted({p["n"] for p in c.summary["prompts"]})
    simple = "; ".join(f"n = {n}: orders 1..{max(v) if v else 0}" for n, v in st["simple_orders"].items())
    lines = ["| | |", "| :--- | :--- |"]
    for key, value in (run_info or {}).items():
        lines.append(f"| {_esc(key)} | {_esc(str(value))} |")
    lines += [
        f"| prompts | {len(c.prompt_ids)} (players per prompt: n = {', '.join(map(str, ns))}; "
        f"M = 2^n - 1 interactions each) |",
        f"| simple interactions | {simple}; complex = the higher orders |",
        f"| salient | \\|I_S\\| / max \\|I_S\\| > {st['salient_threshold']:g} |",
        f"| intervals | {int(100 * st['confidence'])}% Student-t intervals of the mean over prompts "
        "(mean ± half-width) |",
    ]
    if st.get("extractor"):
        lines.append(f"| answer extractor | `{st['extractor']}` |")
    return lines


def _top_table(c: Comparison, index: int, top: int) -> list[str]:
    header = [f"**{m}**" for m in c.models]
    columns = []
    for m in c.models:
        result = c.results[m][index]
        names = player_names(result)
        masks, values = top_interactions(normalise(result), top)
        cells = []
        for mask, v in zip(masks.tolist(), values.tolist()):
            cells.append(f"{_esc(subset_label(names, mask))} {v:+.2f}")
        columns.append(cells)
    rows = [[col[i] if i < len(col) else "" for col in columns] for i in range(top)]
    return _table(header, rows, "l" * len(header))


def render_markdown(
    c: Comparison,
    images: Mapping[str, str],
    *,
    title: str = "Teacher vs student: interactions report",
    run_info: Mapping | None = None,
    csv_name: str = "per_prompt.csv",
    json_name: str = "summary.json",
    top: int = 5,
) -> str:
    """The report as Markdown. images: figure key -> relative path ("sorted_strength", "by_order", "overlap",
    "simple_complex", "top_interactions"); missing keys are left out. run_info: extra rows for the set-up table."""
    out: list[str] = [f"# {title}", ""]
    out += [
        "Harsanyi (AND) interactions I_S of each model on the same prompts, players (words) and target y*: "
        "I_S is the effect that appears only when all words of S are present together. "
        "Sparse interactions = a few strong effects; alignment = the student's strongest effects are the "
        f"teacher's. Numbers are means over prompts with their {int(100 * c.summary['settings']['confidence'])}% "
        "interval; effects are normalised per prompt by the largest |I_S|.",
        "",
        "## Findings",
        "",
        *_findings(c),
        "",
        "## Set-up",
        "",
        *_settings_lines(c, run_info),
        "",
        "## Summary",
        "",
    ]
    out += _summary_section(c)
    out += _figure_sections(images)
    out += _correlation_section(c)
    out += _per_prompt_section(c, csv_name)
    out += _prompt_details(c, top)
    out += _definitions(csv_name, json_name)
    return "\n".join(out)


def _summary_section(c: Comparison) -> list[str]:
    """The summary table: every measure of every model, means with intervals."""
    out: list[str] = []
    s = c.summary["models"]
    header = ["measure", *[f"{m} ({s[m]['role']})" for m in c.models]]
    rows = [[label, *[_ci(s[m]["metrics"].get(key), 1 if key == "salient" else 3) for m in c.models]]
            for key, label in _METRIC_LABELS]
    for k in c.ks:
        key = overlap_column(k)
        rows.append([f"Overlap@{k:g} with the teacher (chance {k:g})", "",
                     *[_ci(s[m]["metrics"].get(key)) for m in c.students]])
    for part in ("simple", "complex"):
        key = overlap_column(c.k_main, part)
        rows.append([f"Overlap@{c.k_main:g} within {part} interactions", "",
                     *[_ci(s[m]["metrics"].get(key)) for m in c.students]])
    if any(s[m].get("text") for m in c.students):
        rows.append(["answer agreement with the teacher (%)", "",
                     *[fmt(100 * s[m]["text"]["agreement"], 1) for m in c.students]])
        rows.append(["fidelity: corpus BLEU vs the teacher's output", "",
                     *[fmt(s[m]["text"]["fidelity_bleu"], 1) for m in c.students]])
        rows.append(["ROUGE-L F vs the teacher's output (0-100)", "",
                     *[_ci(s[m]["metrics"].get("rouge_l"), 1) for m in c.students]])
    out += _table(header, rows)
    out.append("")
    return out


def _figure_sections(images: Mapping[str, str]) -> list[str]:
    """One section per figure that was drawn (images: key -> relative path)."""
    out: list[str] = []
    figures = [
        ("sorted_strength", "Sparsity: sorted interaction strengths",
         "Each curve is a model's |I_S| / max |I_S| sorted from strongest to weakest, averaged over prompts "
         "(band: 25-75% of prompts). A curve that falls faster means fewer strong interactions: sparser."),
        ("overlap", "Alignment: Overlap@k",
         "The fraction of the teacher's top-floor(kM) interactions that are also among the student's. The dashed "
         "line is what two unrelated models would share by chance (k)."),
        ("by_order", "Interactions by order",
         "Order = the number of words in S. Left: mean strength; middle: each order's share of the total strength "
         "(the shaded orders count as simple); right: how many interactions exceed the salient threshold, "
         "positive effects up and negative effects down."),
        ("simple_complex", "Simple vs complex interactions",
         "How strength, sparsity and alignment split between low-order (simple) and high-order (complex) "
         "interactions. The seed study finds distillation keeps simple interactions and drops complex ones."),
        ("top_interactions", "The strongest interactions, with their words",
         "Bars: I_S / max |I_S| of the strongest interactions of each model on the first prompts (negative "
         "effects in a lighter shade). Every prompt's list is in the tables below."),
    ]
    for key, heading, caption in figures:
        if key in images:
            out += [f"## {heading}", "", caption, "", f"![{heading}]({images[key]})", ""]
    return out


def _correlation_section(c: Comparison) -> list[str]:
    """Spearman correlations between per-prompt measures."""
    out: list[str] = []
    corr = c.summary.get("correlations") or {}
    if corr:
        out += ["## Rank correlations across prompts", "",
                f"Spearman's rho between per-prompt measures ({len(c.prompt_ids)} prompts; p-values from scipy's "
                "t approximation, rough below about 10 prompts).", ""]
        for m, pairs in corr.items():
            if len(corr) > 1:
                out += [f"**{m}**", ""]
            out += _table(["measure", "measure", "rho", "p", "n"],
                          [[_esc(p["x"]), _esc(p["y"]), fmt(p["rho"], 2), fmt(p["pvalue"], 3), str(p["n"])]
                           for p in pairs], "llrrr")
            out.append("")
    return out


def _per_prompt_section(c: Comparison, csv_name: str) -> list[str]:
    """The per-prompt table (Gini, Overlap, and the outputs' agreement and ROUGE-L)."""
    out: list[str] = ["## Per prompt", "", f"All columns for every model are in [{csv_name}]({csv_name}).", ""]
    header = ["prompt", "n", *[f"Gini {m}" for m in c.models], *[f"Overlap@{c.k_main:g} {m}" for m in c.students]]
    has_text = c.outputs is not None
    if has_text:
        header += [f"agree {m}" for m in c.students] + [f"ROUGE-L {m}" for m in c.students]
    by_model = {m: [r for r in c.rows if r["model"] == m] for m in c.models}
    rows = []
    for i, pid in enumerate(c.prompt_ids):
        row = [_esc(pid), str(by_model[c.teacher][i]["n"])]
        row += [fmt(by_model[m][i]["gini"]) for m in c.models]
        row += [fmt(by_model[m][i].get(overlap_column(c.k_main))) for m in c.students]
        if has_text:
            row += [fmt(bool(by_model[m][i]["agree"])) for m in c.students]
            row += [fmt(by_model[m][i]["rouge_l"], 1) for m in c.students]
        rows.append(row)
    out += _table(header, rows)
    out.append("")
    return out


def _prompt_details(c: Comparison, top: int) -> list[str]:
    """Each prompt's target, players, outputs and strongest interactions."""
    out: list[str] = []
    has_text = c.outputs is not None
    by_model = {m: [r for r in c.rows if r["model"] == m] for m in c.models}
    out += ["## Prompts, targets and strongest interactions", ""]
    for i, pid in enumerate(c.prompt_ids):
        p = c.summary["prompts"][i]
        out += [f"<details><summary><b>{_esc(pid)}</b>: {_esc(p.get('prompt'))}</summary>", ""]
        out.append(f"- target y*: `{_esc(p.get('target'))}`")
        names = player_names(c.results[c.teacher][i])
        out.append(f"- players (n = {p['n']}): " + ", ".join(f"`{_esc(w)}`" for w in names))
        if has_text:
            for m in c.models:
                row = by_model[m][i]
                out.append(f"- {m} output: `{_esc(row.get('output'))}` (answer: {_esc(str(row.get('answer')))})")
        out += ["", *_top_table(c, i, top), "", "</details>", ""]
    return out


def _definitions(csv_name: str, json_name: str) -> list[str]:
    """How every measure is defined."""
    out: list[str] = [
        "## Definitions",
        "",
        "- I~_S = I_S / max_{S != {}} |I_S| per prompt; the empty set is excluded; M = 2^n - 1.",
        "- Gini = 2 sum_i i u_i / (M sum u) - (M + 1) / M over the ascending |I~_S| (0: all equal; near 1: a "
        "single effect). Entropy = - sum p_S log p_S with p_S = |I~_S| / sum |I~| (nats).",
        "- Overlap@k = |top_K(teacher) ∩ top_K(student)| / K, K = floor(k M), ranked by |I_S| (ties: smaller "
        "bit mask first); within a part, M counts that part's interactions.",
        "- Agreement: both final answers extracted and equal; BLEU: sacrebleu corpus BLEU of the student's "
        "outputs against the teacher's; ROUGE-L: rouge-score F-measure (with stemming) times 100.",
        f"- Machine-readable: [{json_name}]({json_name}) (summary) and [{csv_name}]({csv_name}) (per prompt).",
        "",
    ]
    return out
