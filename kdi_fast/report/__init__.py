"""The analysis report of a teacher-student comparison: summary.json, a per-prompt CSV, PNG figures and
report.md, all written atomically into one directory.

    from kdi_fast.metrics.comparison import compare_models
    from kdi_fast.report import write_report

    paths = write_report(compare_models(teacher_results, {"student": student_results}), "runs/compare")
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..metrics.comparison import Comparison, json_ready
from . import plots
from .._io import write_json_atomic, write_text_atomic
from .markdown import render_markdown

__all__ = ["ReportFiles", "write_report", "write_csv", "write_json"]


@dataclass(frozen=True)
class ReportFiles:
    """Paths of everything write_report wrote."""

    report: Path
    summary: Path
    csv: Path
    figures: dict[str, Path]


def write_json(obj, path: str | Path) -> Path:
    """JSON (indented, UTF-8; NaN is not allowed: Comparison.summary already holds None for it)."""
    return write_json_atomic(path, obj, allow_nan=False)


def write_csv(rows: list[Mapping], path: str | Path) -> Path:
    """One row per dict; the columns are the union of their keys in first-seen order (missing cells empty)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return write_text_atomic(Path(path), buffer.getvalue())


def write_report(
    comparison: Comparison,
    out_dir: str | Path,
    *,
    title: str = "Teacher vs student: interactions report",
    run_info: Mapping | None = None,
    extra_summary: Mapping | None = None,
) -> ReportFiles:
    """Write summary.json, per_prompt.csv, the PNG figures (figures/) and report.md into out_dir.

    run_info: rows for the report's set-up table (model names, data, timings); extra_summary: more top-level
    keys for summary.json (e.g. the command's settings and timings).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    figures = {
        "sorted_strength": plots.plot_sorted_strength(comparison, fig_dir / "sorted_strength.png"),
        "overlap": plots.plot_overlap(comparison, fig_dir / "overlap_at_k.png"),
        "by_order": plots.plot_by_order(comparison, fig_dir / "strength_by_order.png"),
        "simple_complex": plots.plot_simple_complex(comparison, fig_dir / "simple_vs_complex.png"),
        "top_interactions": plots.plot_top_interactions(comparison, fig_dir / "top_interactions.png"),
    }
    summary = dict(comparison.summary)
    if extra_summary:
        summary.update(json_ready(dict(extra_summary)))
    summary_path = write_json(summary, out / "summary.json")
    csv_path = write_csv(comparison.rows, out / "per_prompt.csv")
    images = {k: p.relative_to(out).as_posix() for k, p in figures.items()}
    text = render_markdown(comparison, images, title=title, run_info=run_info,
                           csv_name=csv_path.name, json_name=summary_path.name)
    report = write_text_atomic(out / "report.md", text)
    return ReportFiles(report=report, summary=summary_path, csv=csv_path, figures=figures)
