"""Run every benchmark script (benchmarks/bench_*.py) in turn, each in its own process.

    python benchmarks/run_all.py [--quick] [--only NAME ...]

Arguments after the options are passed to every script (e.g. --quick). Each script writes its own results
to benchmarks/results/. Exits non-zero when any script fails; the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(only: list[str] | None = None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        found = [p for p in found if p.stem.removeprefix("bench_") in only or p.stem in only]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmarks/bench_*.py script in turn.")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. transform)")
    args, rest = parser.parse_known_args(argv)
    extra = (["--quick"] if args.quick else []) + rest
    failed = []
    todo = scripts(args.only)
    if not todo:
        print("no benchmark scripts matched", file=sys.stderr)
        return 2
    for script in todo:
        print(f"=== {script.name} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(script), *extra], cwd=HERE.parent).returncode
        print(f"=== {script.name}: {'ok' if code == 0 else f'FAILED (exit {code})'} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
