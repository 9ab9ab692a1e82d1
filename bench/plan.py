"""`tlc plan` end to end: wall and CPU time of the command against its 5 s target, and where the time goes.

    .venv/bin/python bench/plan.py [--repeats 3]

Builds a fitted synthetic sweep (six GPT-2 shapes, three pruning methods, int8, latency on a
made-up device; the same one the tests use), then times, as a user would run them (a fresh
process, start-up and the SQLite storage included, default trial counts):

1. ``tlc plan --runs DIR --budget 1e15 --max-bytes 600kB``  (study.db created by the first run)
2. ``tlc plan --runs DIR --budget 1e15 --max-latency-ms 0.08 --device cpu``
3. ``tlc plan --law chinchilla --budget 1e21 --max-params 1e9``  (no storage)

against ``python -c pass`` and ``tlc --help`` (start-up alone). CPU time is user + system of the
child process: on a shared machine it is the figure that does not depend on other load; wall
time is what the target is about. Then, in this process, the stages of one plan side by side,
and the two ways of writing the trials to SQLite: Optuna's add_trials against one transaction.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
TARGET_S = 5.0


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def stages(runs: Path) -> dict[str, float]:
    """Seconds spent in each stage of one plan, in this process (imports already done)."""
    import argparse as ap

    from tlc.plan import command as tlc_command
    from tlc.plan import planner as tlc_plan
    from tlc.plan.cost import build_cost_model
    from tlc.plan.search import run_nsga2, run_tpe
    from tlc.plan.space import PlanSpace
    from tlc.plan.trial_store import persist

    parser = ap.ArgumentParser()
    tlc_command.add_arguments(parser)
    args = parser.parse_args(["--runs", str(runs), "--budget", "1e15", "--max-bytes", "600kB"])
    out, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        out[name] = now - clock
        clock = now

    from tlc.plan.law import load_plan_law

    law = load_plan_law(runs, None)
    costs = build_cost_model(law.runs_dir, None, 1, None, law.shape_template)
    space = PlanSpace(law, costs, tlc_command._budgets(args), 0.95, tlc_plan._categories(law, args, None))
    lap("read fit.json and runs")
    tpe = run_tpe(space, args.trials, 0)
    lap(f"TPE, {args.trials} trials")
    best = tlc_plan._polish_best(space, tpe, space.categories)
    lap("polish")
    nsga = run_nsga2(space, args.pareto_trials, 0)
    lap(f"NSGA-II, {args.pareto_trials} trials")
    tlc_plan._pareto_front(space, nsga)
    lap("polish the front")
    assert best is not None
    url = f"sqlite:///{runs / 'bench-stages.db'}"
    persist(url, {"warm-up": tpe})  # creates the schema, as tlc sweep has done for a real sweep
    lap("create an empty study.db")
    persist(url, {"tpe": tpe, "nsga2": nsga})
    lap("write both studies (one transaction each)")
    return out


def add_trials_against_transaction(runs: Path) -> tuple[float, float]:
    """Seconds to store the same 112 trials with Optuna's add_trials and with one transaction."""
    import optuna

    from tlc.plan.search import open_storage
    from tlc.plan.trial_store import persist

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 1, 10) + t.suggest_int("depth", 1, 128, log=True)
                   + len(t.suggest_categorical("compression", ["none", "magnitude+int8"])), n_trials=112)
    url = f"sqlite:///{runs / 'bench-copy.db'}"
    persist(url, {"warm-up": study})
    start = time.perf_counter()
    persist(url, {"fast": study})
    fast = time.perf_counter() - start
    _, storage = open_storage(url)
    start = time.perf_counter()
    optuna.create_study(study_name="slow", storage=storage).add_trials(study.trials)
    return time.perf_counter() - start, fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from test_plan_cli import write_sweep

    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        write_sweep(runs)
        py = [sys.executable]
        commands = {
            "python -c pass": py + ["-c", "pass"],
            "tlc --help": py + ["-m", "tlc", "--help"],
            "tlc plan --runs DIR --budget 1e15 --max-bytes 600kB": py + [
                "-m", "tlc", "plan", "--runs", str(runs), "--budget", "1e15", "--max-bytes", "600kB"],
            "tlc plan --runs DIR --budget 1e15 --max-latency-ms 0.08 --device cpu": py + [
                "-m", "tlc", "plan", "--runs", str(runs), "--budget", "1e15", "--max-latency-ms", "0.08",
                "--device", "cpu"],
            "tlc plan --law chinchilla --budget 1e21 --max-params 1e9": py + [
                "-m", "tlc", "plan", "--law", "chinchilla", "--budget", "1e21", "--max-params", "1e9"],
        }
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
              f"median of {args.repeats} fresh processes; target {TARGET_S:.0f} s wall")
        print(f"{'command':<72}{'first':>7}{'wall s':>8}{'CPU s':>8}{'wall/target':>13}")
        for name, argv in commands.items():
            runs_ = [timed(argv) for _ in range(args.repeats)]
            wall = statistics.median(w for w, _ in runs_)
            cpu = statistics.median(c for _, c in runs_)
            print(f"{name:<72}{runs_[0][0]:>7.2f}{wall:>8.2f}{cpu:>8.2f}{wall / TARGET_S:>13.2f}")
        print("(first: wall of the first process; for the first --runs command it includes creating study.db)")
        print("\nstages of one plan (--max-bytes 600kB), in this process:")
        laps = stages(runs)
        total = sum(laps.values())
        for name, seconds in laps.items():
            print(f"  {name:<44}{seconds:>7.3f} s  {seconds / total:>6.1%}")
        slow, fast = add_trials_against_transaction(runs)
        print(f"\nstoring 112 trials in SQLite: add_trials {slow:.2f} s, one transaction {fast:.2f} s "
              f"({slow / fast:.1f}x faster)")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
