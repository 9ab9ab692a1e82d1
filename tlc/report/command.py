"""``tlc report RUNS_DIR``: the command; the pages are built by :mod:`tlc.report.build`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tlc.report.build import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="a sweep's run directory, e.g. runs/tiny")


def run(args: argparse.Namespace) -> int:
    """Write RUNS_DIR/report/: index.html (opens offline), report.md and the figures as PNG.

    Works with whatever stages have run and lists what is missing. For the folder of a fit made from a run
    table or a published set (tlc fit TABLE --out DIR), draws its points, fitted curves and held-out targets.
    """
    from tlc.report.imported import is_imported, write_imported_report

    if is_imported(args.runs_dir):  # a fit of a run table or published set: no runs to read, only fit.json
        index = write_imported_report(args.runs_dir)
    else:
        index = write_report(args.runs_dir)
    print(f"report: {index}")
    return 0
