"""`tlc sweep SWEEP.yaml`: train every unfinished run of a sweep, sharing the work with other workers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlc.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc sweep``."""
    p.add_argument("sweep", type=Path, metavar="SWEEP", help="sweep file, e.g. sweeps/tiny.yaml")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs/<sweep>/ goes (default runs)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db "
                   "(default: SQLite in the sweep's folder)")
    p.add_argument("--max-runs", type=int, help="stop this worker after training this many runs")


def run(args: argparse.Namespace) -> int:
    """Train every run of a sweep (shapes x seeds) that is not finished yet, each in its own process.

    Start the same command on several machines with one --storage URL to share the work.
    """
    from tlc.train.sweep import run_sweep, summary_table

    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs: must be at least 1, got {args.max_runs}")
    outcomes = run_sweep(args.sweep, args.runs_dir, args.storage, args.max_runs)
    from tlc.config import load_sweep

    sweep_dir = args.runs_dir / load_sweep(args.sweep).name
    print(summary_table(sweep_dir, outcomes))
    failed = [o.run_id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; logs in {sweep_dir}/<run>.log", file=sys.stderr)
        return 1
    return 0
