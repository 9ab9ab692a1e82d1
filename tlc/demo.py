"""`tlc demo`: sweep → compress → fit → plan → report on the embedded default, resumable.

Each stage is the ordinary command, so the demo shows exactly what a user would run. Every
stage skips what is already done (finished runs, finished variants), so running the demo
again after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from tlc.errors import UserError
from tlc.io import list_runs

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"
# The demo compresses with the fast one-shot methods plus gradual pruning (the method that
# recovers), at two levels; `tlc compress` alone does every method.
DEMO_COMPRESS = ["--methods", "magnitude,block,gradual", "--sparsity", "0.5,0.9", "--recovery-steps", "40"]
# Every cooldown branch's model too, with the cheapest methods that show how compression depends on
# training length (one-shot magnitude pruning and int8): the compression models' D/N term needs them.
DEMO_COMPRESS_BRANCHES = ["--branches", "--methods", "magnitude", "--sparsity", "0.5,0.9"]
INFERENCE_SHARE = 0.6  # the inference budget as a share of the unconstrained optimum's size


def training_budget(sweep_dir: Path) -> float:
    """The compute of the sweep's largest run: every measured shape is affordable."""
    flops = [json.loads((p / "config.json").read_text(encoding="utf-8"))["train_flops"] for p in list_runs(sweep_dir)]
    if not flops:
        raise UserError(f"{sweep_dir}: no trained runs to plan from")
    return max(flops)


def inference_budget(plan: dict) -> int:
    """Three fifths of the bytes of the compute-optimal dense model from a plan without an inference limit.

    That model no longer fits, so the planner must choose between training a smaller model and
    compressing a larger one — the question of Li et al. 2020.
    """
    return int(plan["compute_optimal"]["inference"]["bytes"] * INFERENCE_SHARE)


def describe_plan(point: dict) -> str:
    """One line for a plan.json point: shape, tokens, compression and predicted loss."""
    c = point.get("compression") or {}
    method = c.get("method") or "none"
    compression = "dense" if method == "none" else f"{method} pruning to {c.get('sparsity', 0):.0%}"
    if c.get("int8"):
        compression += " + int8"
    loss = point["loss"]
    interval = f" [{loss['low']:.3f}, {loss['high']:.3f}]" if loss.get("low") is not None else ""
    return (f"width {point['width']} x depth {point['depth']} ({int(point['non_embedding_params']):,} params) on "
            f"{point['tokens']:.3g} tokens, {compression}: predicted loss {loss['mean']:.3f}{interval}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs/<sweep>/ goes (default runs)")
    parser.add_argument("--sweep", type=Path, default=SWEEPS_DIR / "tiny.yaml", help="sweep file (default sweeps/tiny.yaml)")


def run(args: argparse.Namespace) -> int:
    """Run the whole pipeline on the tiny sweep and the standard-library corpus, then print the plan.

    Stages: tlc sweep, tlc compress, tlc fit, tlc plan (a training budget equal to the largest
    run's compute, an inference budget of three fifths of the size of the best model without one)
    and tlc report. Interrupt it at any time; running it again resumes where it stopped.
    """
    from tlc.cli import main
    from tlc.config import load_sweep

    if not args.sweep.exists():
        raise UserError(f"--sweep: {str(args.sweep)!r} not found; run from a clone of the tlc repository or pass --sweep")
    sweep_dir = args.runs_dir / load_sweep(args.sweep).name
    started = time.perf_counter()

    def stage(name: str, argv: list[str]) -> None:
        print(f"\n== tlc {' '.join(argv)}", flush=True)
        code = main(argv)
        if code != 0:
            raise UserError(f"the {name} stage failed (exit {code}); fix the problem above and run tlc demo again to resume")

    stage("sweep", ["sweep", str(args.sweep), "--runs-dir", str(args.runs_dir)])
    stage("compress", ["compress", str(sweep_dir), *DEMO_COMPRESS])
    stage("compress", ["compress", str(sweep_dir), *DEMO_COMPRESS_BRANCHES])
    stage("fit", ["fit", str(sweep_dir)])
    budget = training_budget(sweep_dir)
    plan_argv = ["plan", "--runs", str(sweep_dir), "--budget", f"{budget:.3g}", "--json"]
    with contextlib.redirect_stdout(io.StringIO()) as unconstrained:
        if main(plan_argv) != 0:
            raise UserError("the plan stage failed; fix the problem above and run tlc demo again to resume")
    max_bytes = inference_budget(json.loads(unconstrained.getvalue()))
    stage("plan", plan_argv[:-1] + ["--max-bytes", str(max_bytes)])
    stage("report", ["report", str(sweep_dir)])
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    plan = json.loads((sweep_dir / "plan.json").read_text(encoding="utf-8"))
    print(f"budgets: {budget:.3g} training FLOPs, at most {max_bytes:,} bytes to ship")
    print(f"train:   {describe_plan(plan['recommendation'])}")
    if plan.get("train_small"):
        print(f"instead of training small: {describe_plan(plan['train_small'])}")
    if plan.get("gain"):
        print(f"predicted gain of the recommendation: {plan['gain']['loss']:.4f} nats/token")
    print(f"plan:   {sweep_dir / 'plan.json'}")
    print(f"report: {(sweep_dir / 'report' / 'index.html').resolve()}  (open it in a browser)")
    sys.stdout.flush()
    return 0
