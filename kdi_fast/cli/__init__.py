"""The `kdi` command line (also `python -m kdi_fast`): one module per subcommand, each with register()."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines register(subparsers) that adds its subcommand with set_defaults(run=callable(args) -> int).
_SUBCOMMANDS = ("info", "demo", "interactions", "distill", "compare", "study")


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(prog="kdi", description="kdi_fast: interactions for knowledge distillation")
    parser.add_argument("--version", action="version", version=f"kdi_fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError, ImportError) as err:  # bad input (or a model id that cannot be
        # fetched, a full disk): one line, no traceback
        print(f"kdi {args.command}: error: {err}", file=sys.stderr)
        return 2
