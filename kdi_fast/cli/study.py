"""`kdi study`: the study of issue 13 (does a student's interaction structure track how good it is?).

    kdi study lab --out runs/study-lab --workers 2  # the laboratory grid (resumable; a progress bar with ETA)
    kdi study lab --out runs/study-quick --quick  # every method and both maskings on a tiny grid (CI)
    kdi study report --lab runs/study-lab --out benchmarks/results/study
    kdi study real --out runs/study-real --report benchmarks/results/study/real   # the SmolLM2 tier (resumable)

Run `lab` again with the same --out to resume: written runs are skipped.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="the lab study: KD methods x CIP x seeds, findings with intervals",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tier", metavar="TIER")
    lab = sub.add_parser("lab", help="run (or resume) the laboratory grid, then write its report")
    lab.add_argument("--out", required=True, help="output directory of the runs (resumes what is there)")
    lab.add_argument("--quick", action="store_true", help="a tiny grid: every method, both maskings, 2 seeds")
    lab.add_argument("--report", default=None, help="where to write the report (default: OUT/report)")
    lab.add_argument("--no-plots", action="store_true")
    lab.add_argument("--workers", type=int, default=1, metavar="K",
                     help="K processes, one per core (this one trains the teacher, then K - 1 children join)")
    lab.add_argument("--shard", default="0/1", metavar="I/K",
                     help="run every K-th job starting at I (K processes on K cores; default 0/1 = all); the "
                          "report is written by the process that finds every run done")
    lab.set_defaults(run=_lab)
    real = sub.add_parser("real", help="run (or resume) the real-model tier (SmolLM2 teacher), then its report")
    real.add_argument("--out", required=True, help="output directory of the runs (resumes what is there)")
    real.add_argument("--quick", action="store_true", help="a tiny random Llama: every cell, both maskings")
    real.add_argument("--report", default=None, help="where to write the report (default: OUT/report)")
    real.add_argument("--no-plots", action="store_true")
    real.add_argument("--report-only", action="store_true",
                      help="write the (partial) report of what OUT holds now, without running anything")
    real.add_argument("--readme", default=None, metavar="PATH",
                      help="also write the status, findings and cells into PATH between <!-- real-tier-findings --> "
                           "markers")
    real.set_defaults(run=_real)
    rep = sub.add_parser("report", help="write the findings of a lab directory's runs")
    rep.add_argument("--lab", required=True, help="the lab output directory")
    rep.add_argument("--out", required=True, help="report directory")
    rep.add_argument("--no-plots", action="store_true")
    rep.add_argument("--readme", default=None, metavar="PATH",
                     help="also write the findings table into PATH between <!-- study-findings --> markers")
    rep.set_defaults(run=_report)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def _lab(args) -> int:
    from pathlib import Path

    from ..study.lab import LabConfig, quick_config, run_lab
    from ..study.report import write_report

    from ..study.lab import grid

    config = quick_config() if args.quick else LabConfig()
    try:
        index, count = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/K such as 0/2, got {args.shard!r}") from None
    records = run_lab(args.out, config, progress=sys.stderr.isatty() or not args.quick, shard=(index, count),
                      workers=args.workers)
    if len(records) < len(grid(config)) * len(config.seeds):
        print(f"{len(records)} runs written; the report waits for the other shards")
        return 0
    found = write_report(args.out, args.report or Path(args.out) / "report", plots=not args.no_plots,
                         command="kdi study lab --out " + args.out + (" --quick" if args.quick else ""))
    for name, f in found.items():
        print(f"{name}: {f['verdict']}")
    return 0


def _real(args) -> int:
    from pathlib import Path

    from ..study.real import RealConfig, quick_config, run_real
    from ..study.real_report import write_real_report

    config = quick_config() if args.quick else RealConfig()
    status = 0
    if not args.report_only:
        try:
            run_real(args.out, config, progress=sys.stderr.isatty() or not args.quick)
        except RuntimeError as err:  # the teacher missed its target: report the calibration, then fail
            print(f"kdi study real: {err}", file=sys.stderr)
            status = 1
    found = write_real_report(args.out, args.report or Path(args.out) / "report", plots=not args.no_plots,
                              command="kdi study real --out " + args.out + (" --quick" if args.quick else ""),
                              readme=args.readme)
    for name, f in found.items():
        print(f"{name}: {f['verdict']}")
    return status


def _report(args) -> int:
    from ..study.report import write_report

    command = f"kdi study report --lab {args.lab} --out {args.out}"
    found = write_report(args.lab, args.out, plots=not args.no_plots, command=command)
    if args.readme:
        from pathlib import Path

        from ..study.report import calibration, update_readme

        update_readme(args.readme, found, runs=len(list((Path(args.lab) / "runs").glob("*.json"))), command=command,
                      calib=calibration(args.lab))
    for name, f in found.items():
        print(f"{name}: {f['verdict']}")
    return 0
