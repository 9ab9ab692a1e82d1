"""`tlc sweep SWEEP.yaml`: train every unfinished run of a sweep, sharing the work with other workers."""

from __future__ import annotations

import argparse
import os
import subprocess
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
    p.add_argument("--workers", type=int, default=1,
                   help="train this many runs at once on this machine, each trainer with an equal share of the "
                   "CPU cores as its threads unless OMP_NUM_THREADS is set (default 1); small models train "
                   "faster side by side than one at a time on several threads")


def run(args: argparse.Namespace) -> int:
    """Train every run of a sweep (shapes x seeds) that is not finished yet, each in its own process.

    Start the same command on several machines with one --storage URL to share the work.
    """
    from tlc.config import load_sweep
    from tlc.io import is_complete
    from tlc.train.guard import WORKER_PID_ENV, exit_with_worker
    from tlc.train.sweep import RunOutcome, prepare_data, prepare_sweep_dir, run_sweep, summary_table

    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs: must be at least 1, got {args.max_runs}")
    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    exit_with_worker()  # a helper worker started by --workers ends with the worker that started it
    sweep = load_sweep(args.sweep)
    sweep_dir = args.runs_dir / sweep.name
    helpers, threads = [], os.environ.get("OMP_NUM_THREADS")
    done_before = {r.run_id for r in sweep.all_runs() if is_complete(sweep_dir / r.run_id)}
    if args.workers > 1:
        prepare_data(sweep)  # the tokenizer is trained once, here, not by every worker at once
        # this worker's trainers read it from the environment too; restored below (tlc demo runs this in-process)
        os.environ["OMP_NUM_THREADS"] = threads or str(max(1, (os.cpu_count() or 1) // args.workers))
        cmd = [sys.executable, "-m", "tlc", "sweep", str(args.sweep), "--runs-dir", str(args.runs_dir)]
        cmd += ["--storage", args.storage] if args.storage else []
        cmd += ["--max-runs", str(args.max_runs)] if args.max_runs else []
        prepare_sweep_dir(sweep, args.runs_dir)  # checked and made before the helpers write their logs into it
        for k in range(1, args.workers):
            with open(sweep_dir / f"worker-{k}.log", "ab") as log:  # the helper's own output; runs log to <run>.log
                helpers.append(subprocess.Popen(cmd, stdout=log, stderr=log,
                                                env={**os.environ, WORKER_PID_ENV: str(os.getpid())}))
    try:
        outcomes = run_sweep(args.sweep, args.runs_dir, args.storage, args.max_runs)
    finally:
        codes = [h.wait() for h in helpers]
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    # to this worker, runs its helpers trained were "elsewhere", or "skipped" when it found them finished
    outcomes = [RunOutcome(o.run_id, "trained") if helpers and o.status in ("elsewhere", "skipped")
                and o.run_id not in done_before and is_complete(sweep_dir / o.run_id) else o for o in outcomes]
    print(summary_table(sweep_dir, outcomes))
    failed = [o.run_id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; logs in {sweep_dir}/<run>.log", file=sys.stderr)
    broken = [f"{sweep_dir}/worker-{k}.log" for k, code in enumerate(codes, 1) if code != 0]
    if broken:
        print(f"{len(broken)} helper worker(s) stopped with an error; see {', '.join(broken)}", file=sys.stderr)
    return 1 if failed or broken else 0
