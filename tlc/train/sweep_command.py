"""`tlc sweep SWEEP.yaml`: train every unfinished run of a sweep, sharing the work with other workers."""

from __future__ import annotations

import argparse
import dataclasses
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
                   "CPU cores as its threads unless OMP_NUM_THREADS is set (default 1; at most the CPU count); small "
                   "models train faster side by side than one at a time on several threads")
    p.add_argument("--check-design", action="store_true",
                   help="train nothing: draw the losses the sweep's finished-run points would have under a known "
                   "Chinchilla law (--truth) with seed noise (--noise), fit them as tlc fit does, and say whether "
                   "the law comes out identified; exit 1 unless every draw does")
    p.add_argument("--truth",
                   help="with --check-design: 'published' (Hoffmann et al. 2022's law, the default) or a fit.json "
                   "whose chinchilla law stands in for the truth")
    p.add_argument("--noise", type=float, default=None,
                   help="with --check-design: log-loss noise per finished point (default 0.005, the seed-to-seed "
                   "scatter of sweeps/tiny.yaml)")
    p.add_argument("--draws", type=int, help="with --check-design: noisy draws to fit (default 5)")


def run(args: argparse.Namespace) -> int:
    """Train every run of a sweep (shapes x seeds) that is not finished yet, each in its own process.

    Start the same command on several machines with one --storage URL to share the work.
    """
    from tlc.config import load_sweep
    from tlc.io import is_complete
    from tlc.train.guard import WORKER_PID_ENV, exit_with_worker
    from tlc.train.sweep import prepare_data, prepare_sweep_dir, run_sweep, summary_table

    if args.check_design:
        return check_design_command(args)
    given = [flag for flag, value in (("--truth", args.truth), ("--noise", args.noise), ("--draws", args.draws))
             if value is not None]
    if given:
        raise UserError(f"{given[0]}: only with --check-design, which trains nothing; drop it to train the sweep")
    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs: must be at least 1, got {args.max_runs}")
    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    if args.workers > (cores := os.cpu_count() or 1):  # each worker trains on a share of this machine's cores
        raise UserError(f"--workers: at most {cores}, this machine's CPU count; got {args.workers}")
    exit_with_worker()  # a helper worker started by --workers ends with the worker that started it
    sweep = load_sweep(args.sweep)
    sweep_dir = args.runs_dir / sweep.name
    helpers, threads = [], os.environ.get("OMP_NUM_THREADS")
    done_before = {r.run_id for r in sweep.all_runs() if is_complete(sweep_dir / r.run_id)}
    workers = min(args.workers, max(1, len(sweep.all_runs()) - len(done_before)))  # no helper without a run to train
    if workers > 1:
        prepare_data(sweep)  # the tokenizer is trained once, here, not by every worker at once
        # this worker's trainers read it from the environment too; restored below (tlc demo runs this in-process)
        os.environ["OMP_NUM_THREADS"] = threads or str(max(1, (os.cpu_count() or 1) // workers))
        cmd = [sys.executable, "-m", "tlc", "sweep", str(args.sweep), "--runs-dir", str(args.runs_dir)]
        cmd += ["--storage", args.storage] if args.storage else []
        cmd += ["--max-runs", str(args.max_runs)] if args.max_runs else []
        prepare_sweep_dir(sweep, args.runs_dir)  # checked and made before the helpers write their logs into it
        for k in range(1, workers):
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
    outcomes = [dataclasses.replace(o, status="trained", detail="") if helpers and o.status in ("elsewhere", "skipped")
                and o.run_id not in done_before and is_complete(sweep_dir / o.run_id) else o for o in outcomes]
    print(summary_table(sweep_dir, outcomes))
    failed = [o.run_id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; logs in {sweep_dir}/<run>.log", file=sys.stderr)
    broken = [f"{sweep_dir}/worker-{k}.log" for k, code in enumerate(codes, 1) if code != 0]
    if broken:
        print(f"{len(broken)} helper worker(s) stopped with an error; see {', '.join(broken)}", file=sys.stderr)
    return 1 if failed or broken else 0


def _truth(spec: str):
    """(Chinchilla parameters, what N counts, a description) for --truth."""
    import json

    from scaling.fitted import load_fit
    from scaling.forms import PUBLISHED_CHINCHILLA

    if spec == "published":
        return PUBLISHED_CHINCHILLA, "total", "Hoffmann et al. 2022's law"
    path = Path(spec)
    try:
        fitted = load_fit(json.loads(path.read_text()))
        law = fitted.laws["chinchilla"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"--truth: {spec!r} is neither 'published' nor a readable fit.json with a fitted chinchilla "
                        f"law ({error})") from None
    return law.parameters, fitted.size, f"{path}'s chinchilla law ({law.status})"


def _held_out_text(draw) -> str:
    return "-" if draw.heldout_error is None else f"{100 * draw.heldout_error:.2f}%"


def check_design_command(args: argparse.Namespace) -> int:
    """--check-design: whether the sweep's design identifies Chinchilla's law, before anything trains."""
    from scaling.design import DRAWS, MAX_HELDOUT_ERROR, SEED_NOISE, check_design
    from tlc.config import load_sweep
    from tlc.train.sweep import design_runs

    noise = SEED_NOISE if args.noise is None else args.noise
    n_draws = DRAWS if args.draws is None else args.draws
    if not noise >= 0:
        raise UserError(f"--noise: must be >= 0 (a log-loss standard deviation, e.g. 0.005), got {args.noise}")
    if n_draws < 1:
        raise UserError(f"--draws: must be at least 1, got {args.draws}")
    truth, size, described = _truth(args.truth or "published")
    sweep = load_sweep(args.sweep)
    design = design_runs(sweep, size)
    sizes = sorted({r.params for r in design})
    tokens = sorted({d for r in design for d in r.tokens})
    print(f"design of {args.sweep}: {len(design)} runs, {sum(len(r.tokens) for r in design)} finished-run points; "
          f"N ({size}) {sizes[0]:.3g} to {sizes[-1]:.3g} ({sizes[-1] / sizes[0]:.3g}x), "
          f"D {tokens[0]:.3g} to {tokens[-1]:.3g} ({tokens[-1] / tokens[0]:.3g}x)")
    print(f"truth: {described}: E {truth.E:.4g}, A {truth.A:.4g}, B {truth.B:.4g}, alpha {truth.alpha:.4g}, "
          f"beta {truth.beta:.4g}; noise {100 * noise:.2f}% per point; {n_draws} draws")
    try:
        draws = check_design(design, truth, noise, n_draws)
    except ValueError as error:
        raise UserError(f"SWEEP: {error}") from None
    print(f"{'draw':>4}  {'status':<13} {'alpha span':>10} {'beta span':>9}  {'E 95% interval':<18} "
          f"{'held-out':>8}  truth outside its interval")
    for k, d in enumerate(draws, 1):
        low, high = d.intervals.get("E", (float("nan"),) * 2)
        held = _held_out_text(d)
        missed = ", ".join(n for n, inside in d.truth_inside.items() if not inside) or "none"
        e_interval = f"[{low:.3g}, {high:.3g}]"
        print(f"{k:>4}  {d.status:<13} {d.span('alpha'):>9.3g}x {d.span('beta'):>8.3g}x  {e_interval:<18} "
              f"{held:>8}  {missed}")
    good = sum(d.identified for d in draws)
    print(f"identified in {good} of {len(draws)} draws (converged: no parameter on a bound, and the 95% interval "
          f"of the loss predicted at 10x the largest run's compute narrower than the drop predicted over that decade; "
          f"and a leave-largest-out error of at most {100 * MAX_HELDOUT_ERROR:g}%)")
    for k, d in enumerate(draws, 1):
        if d.status != "converged":
            print(f"draw {k}: {d.reason}")
        elif not d.identified:
            print(f"draw {k}: leave-largest-out error {_held_out_text(d)}, more than {100 * MAX_HELDOUT_ERROR:g}%")
    print("This checks the design's spread of N and D against noise only; whether the losses follow the law at "
          "all shows only in trained runs (tlc fit).")
    return 0 if good == len(draws) else 1
