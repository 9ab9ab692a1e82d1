"""``tlc report RUNS_DIR``: the command; the pages are built by :mod:`tlc.report.build`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tlc.report.build import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="a sweep's run directory, e.g. runs/tiny")


def run(args: argparse.Namespace) -> int:
    """Write RUNS_DIR/report/: index.html (opens offline), report.md and the figures as PNG.

    Works with whatever stages have run and lists what is missing.
    """
    index = write_report(args.runs_dir)
    print(f"report: {index}")
    return 0
