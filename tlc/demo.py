"""`tlc demo`: sweep → compress → fit → plan → report on the embedded default, resumable.

Each stage is the ordinary command, so the demo shows exactly what a user would run. Every
stage skips what is already done (finished runs, finished variants), so running the demo
again after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from tlc.errors import UserError
from tlc.io import list_runs

# The demo's compression passes, each one `tlc compress` call over the sweep (a method shown at one sparsity is
# a pass of its own: ["--methods", "NAME", "--sparsity", "0.5"]). The fast one-shot methods plus gradual
# pruning (the method that recovers), at three sparsities: the fewest from which the fit bends its pruning
# models (tlc compress alone does every method at four). 16x16 blocks: widths 48 and 96 are not multiples of
# 32. Three timed repeats and no ONNX Runtime timing: the demo's plan has a byte budget, not a latency one.
DEMO_SPARSITIES = ["--sparsity", "0.5,0.7,0.9"]
# Runs train side by side, one per core (up to 4): the tiny shapes gain little from a second thread.
DEMO_WORKERS = max(1, min(os.cpu_count() or 1, 4))
# Runs compress side by side too, one process per core (a pass over the sweep was one thread's work)
DEMO_COMPRESS_COMMON = [*DEMO_SPARSITIES, "--latency-repeats", "3", "--no-ort-latency", "--workers", str(DEMO_WORKERS)]
DEMO_COMPRESS_PASSES = [
    ["--methods", "magnitude,block,gradual", "--recovery-steps", "40", "--block-size", "16"],
    # every cooldown branch's model too, with the cheapest methods that show how compression depends on
    # training length (one-shot magnitude pruning and int8): the compression models' D/N term needs them
    ["--branches", "--methods", "magnitude"],
    # the calibrated methods at one setting each (tlc compress does the full grid): wanda and sparsegpt at 50%,
    # gptq at 4 bits, no int8 on top, on 32 training windows instead of 128 to keep the demo fast
    ["--methods", "wanda,sparsegpt,gptq", "--sparsity", "0.5", "--quant-bits", "4", "--no-int8",
     "--calibration-sequences", "32"],
]
# A pass's own flags come after the common ones, so its --sparsity wins (argparse keeps the last). Each pass
# as one argument list (bench/plan_accuracy.py compresses a demo's runs as the demo does):
DEMO_COMPRESS_ARGS = [[*DEMO_COMPRESS_COMMON, *compress] for compress in DEMO_COMPRESS_PASSES]
INFERENCE_SHARE = 0.6  # the inference budget as a share of the unconstrained optimum's size
# The training budget as a multiple of the sweep's largest run: a plan is worth making past what was measured
# (at 1x the answer is an interpolation between trained runs). Trained, the tiny sweep's plans missed their
# predicted loss by 2-5% at 0.3-1x and 6-8% at 3x (BENCHMARKS.md, "Planner calibration"): read 4x as a forecast.
BUDGET_FACTOR = 4.0


def training_budget(sweep_dir: Path) -> float:
    """BUDGET_FACTOR times the compute of the sweep's largest run: a plan past the sweep, not between its runs."""
    flops = [json.loads((p / "config.json").read_text(encoding="utf-8"))["train_flops"] for p in list_runs(sweep_dir)]
    if not flops:
        raise UserError(f"{sweep_dir}: no trained runs to plan from")
    return BUDGET_FACTOR * max(flops)


def inference_budget(plan: dict) -> int:
    """Three fifths of the bytes of the compute-optimal dense model from a plan without an inference limit.

    That model no longer fits, so the planner must choose between training a smaller model and
    compressing a larger one — the question of Li et al. 2020.
    """
    return int(plan["compute_optimal"]["inference"]["bytes"] * INFERENCE_SHARE)


def no_defensible_law(sweep_dir: Path) -> str | None:
    """Why the planner would refuse this sweep's fit.json (no law it can defend), or None when it can plan."""
    from tlc.plan.law import choose_law

    fit_path = sweep_dir / "fit.json"
    try:
        choose_law(json.loads(fit_path.read_text(encoding="utf-8")), None, "fit.json", fit_path)
    except UserError as error:
        return str(error)
    return None


def describe_plan(point: dict) -> str:
    """One line for a plan.json point: shape, tokens, compression and predicted loss."""
    c = point.get("compression") or {}
    method = c.get("method") or "none"
    compression = "dense" if method == "none" else f"{method} pruning to {c.get('sparsity', 0):.0%}"
    if c.get("bits"):  # a weight-only quantizer (gptq, rtn)
        compression = f"{method} {c['bits']}-bit g{c.get('group_size') or 0}"
    if c.get("int8"):
        compression += " + int8"
    loss = point["loss"]
    interval = f" [{loss['low']:.3f}, {loss['high']:.3f}]" if loss.get("low") is not None else ""
    return (f"width {point['width']} x depth {point['depth']} ({int(point['non_embedding_params']):,} params) on "
            f"{point['tokens']:.3g} tokens, {compression}: predicted loss {loss['mean']:.3f}{interval}")


def packaged_sweep(name: str = "tiny.yaml") -> Path:
    """A sweep file shipped inside the package (``tlc/sweeps`` is the repository's ``sweeps/`` folder).

    Found through importlib.resources, so an installed wheel and a checkout both answer; a user's
    edit of ``sweeps/tiny.yaml`` in a checkout is what the demo trains.
    """
    packaged = importlib.resources.files("tlc") / "sweeps" / name
    if not isinstance(packaged, Path):  # a zipped install: the file has no path of its own
        raise UserError(f"--sweep: the packaged {name} is not a file on disk here; pass --sweep with a copy of it")
    return packaged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs/<sweep>/ goes (default runs)")
    try:
        where = str(packaged_sweep())
    except UserError:
        where = "inside the installed package"
    parser.add_argument("--sweep", type=Path, default=None, help=f"sweep file (default: the packaged tiny sweep, {where})")


def start_kernel_build() -> subprocess.Popen | None:
    """Build cuda_ext's CPU kernels in a background process at the lowest priority while the sweep trains.

    The compress stage times block-pruned models with them; built there, a cold build held up both compress
    workers (about 25 CPU-seconds). At nice 19 the build runs when the trainers leave a core idle: while the
    sweep starts and at its tail. Nothing waits for it: whoever needs the kernels first waits for the build
    (torch's build lock), and a failed build warns there as it would have.
    """
    try:
        return subprocess.Popen([sys.executable, "-c", "import cuda_ext; cuda_ext.available()"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: os.nice(19))
    except OSError:
        return None


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block (the compression stages run in this process), as before after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_seconds() -> float:
    """User and system CPU time of this process and of its finished children (the sweep's trainers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_table(stages: dict[str, tuple[float, float]]) -> str:
    """The demo's stages with their (wall, CPU) seconds and shares of the wall total, as an aligned text table.

    CPU time is the figure to compare across machines shared with other work: wall time grows with the load.
    """
    wall_total = sum(wall for wall, _ in stages.values())
    cpu_total = sum(cpu for _, cpu in stages.values())
    lines = [f"{'stage':<10} {'wall s':>8} {'share':>6} {'CPU s':>8}", "-" * 35]
    for name, (wall, cpu) in stages.items():
        lines.append(f"{name:<10} {wall:>8.1f} {wall / wall_total if wall_total else 0:>6.0%} {cpu:>8.1f}")
    lines.append(f"{'total':<10} {wall_total:>8.1f} {'':>6} {cpu_total:>8.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the whole pipeline on the tiny sweep and the standard-library corpus, then print the plan.

    Stages: tlc sweep, tlc compress, tlc fit, tlc plan (a training budget of four times the largest
    run's compute, an inference budget of three fifths of the size of the best model without one)
    and tlc report; it ends with each stage's wall and CPU time. Where the fit identifies no law,
    there is no plan: the demo says what the sweep lacks and still writes the report. Interrupt it at any time; running it
    again resumes where it stopped.
    """
    from tlc.cli import main
    from tlc.config import load_sweep
    from tlc.plan.output import extrapolation_line

    sweep_file = args.sweep if args.sweep is not None else packaged_sweep()
    if not sweep_file.exists():
        raise UserError(f"--sweep: {str(sweep_file)!r} not found; give a sweep file such as sweeps/tiny.yaml")
    sweep_dir = args.runs_dir / load_sweep(sweep_file).name
    stages: dict[str, tuple[float, float]] = {}  # name -> (wall s, CPU s)

    def stage(name: str, argv: list[str], quiet: bool = False) -> str:
        """Run one command, adding its wall time to the stage's; with quiet, return its stdout instead of printing it."""
        started, cpu_started = time.perf_counter(), cpu_seconds()
        captured = io.StringIO()
        if quiet:
            with contextlib.redirect_stdout(captured):
                code = main(argv)
        else:
            print(f"\n== tlc {' '.join(argv)}", flush=True)
            code = main(argv)
        wall, cpu = stages.get(name, (0.0, 0.0))
        stages[name] = (wall + time.perf_counter() - started, cpu + cpu_seconds() - cpu_started)
        if code != 0:
            raise UserError(f"the {name} stage failed (exit {code}); fix the problem above and run tlc demo again to resume")
        return captured.getvalue()

    build = start_kernel_build()
    stage("sweep", ["sweep", str(sweep_file), "--runs-dir", str(args.runs_dir),
                    "--workers", str(DEMO_WORKERS)])
    from tlc.compress.command import shared_workers

    # tiny models gain nothing from a second thread, which only spins on a busy machine; the passes share workers
    with one_thread(), shared_workers():
        for compress in DEMO_COMPRESS_ARGS:
            stage("compress", ["compress", str(sweep_dir), *compress])
        cpu_started = cpu_seconds()
    if build is not None:  # finished long since
        build.wait()
    # the workers' and the build's CPU time, counted once they are reaped
    wall, cpu = stages["compress"]
    stages["compress"] = (wall, cpu + cpu_seconds() - cpu_started)
    stage("fit", ["fit", str(sweep_dir), "--skip-unchanged"])  # run again, the demo refits only what changed
    unplannable = no_defensible_law(sweep_dir)
    if unplannable:
        # the planner refuses a law the fit cannot defend: say why, and still report what was measured
        stage("report", ["report", str(sweep_dir)])
        print("\n" + stage_table(stages))
        print(f"\nno plan: {unplannable}")
        print(f"report: {(sweep_dir / 'report' / 'index.html').resolve()}  (open it in a browser)")
        sys.stdout.flush()
        return 0
    budget = training_budget(sweep_dir)
    # first without an inference limit, to size that limit; the second call rewrites plan.json.
    # Within the shapes the sweep measured: the tiny sweep has one depth, and its law, which has no
    # depth term, missed depth-1 and depth-4 models by 4-10% (BENCHMARKS.md, "Planner calibration").
    plan_argv = ["plan", "--runs", str(sweep_dir), "--budget", f"{budget:.3g}", "--measured-shapes"]
    max_bytes = inference_budget(json.loads(stage("plan", plan_argv + ["--json"], quiet=True)))
    stage("plan", plan_argv + ["--max-bytes", str(max_bytes)])
    stage("report", ["report", str(sweep_dir)])

    print("\n" + stage_table(stages))
    plan = json.loads((sweep_dir / "plan.json").read_text(encoding="utf-8"))
    print(f"\nbudgets: {budget:.3g} training FLOPs ({BUDGET_FACTOR:g}x the largest run), at most {max_bytes:,} bytes "
          "to ship")
    if line := extrapolation_line(plan.get("extrapolation")):
        print(line)
    print(f"train:   {describe_plan(plan['recommendation'])}")
    if plan.get("train_small"):
        print(f"instead of training small: {describe_plan(plan['train_small'])}")
    if plan.get("gain"):
        print(f"predicted gain of the recommendation: {plan['gain']['loss']:.4f} nats/token")
    print(f"plan:   {sweep_dir / 'plan.json'}")
    print(f"report: {(sweep_dir / 'report' / 'index.html').resolve()}  (open it in a browser)")
    sys.stdout.flush()
    return 0
