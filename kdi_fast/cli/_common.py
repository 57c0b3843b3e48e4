"""What every subcommand shares beyond the interaction settings (whose flags, --device included, come from
kdi_fast.engine.settings.InteractionSettings.add_arguments): the --quiet flag."""

from __future__ import annotations

import argparse


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--quiet (alias --no-progress): no progress bars."""
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")


def quiet_transformers(quiet: bool) -> None:
    """Switch off transformers' own progress bars (model loading) when --quiet."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
