"""How well plans come true: plan at several training budgets, carry each plan out, compare.

The procedure of issue 13, with the real commands throughout:

1. `tlc sweep SWEEP`, `tlc compress` as `tlc demo` does (magnitude, block and gradual at 0.3,
   0.5, 0.7 and 0.9, int8; cooldown branches with magnitude and int8), `tlc fit` — each resumes what is already
   there, so a demo's runs folder is used as it is;
2. for each budget multiple m (default 0.3, 1 and 3) of the largest run's compute C_max:
   `tlc plan --budget m*C_max` without an inference budget, then with a byte limit of 60% of
   that plan's compute-optimal dense model (--max-bytes), written to plan-<m>.json;
3. `tlc validate --plan plan-<m>.json --seeds 0,1`: both points trained and compressed twice.

The interval scored is the plan's own, exactly as `tlc plan` prints it: plan.json's loss
[low, high], the bootstrap percentile interval of the fitted mean loss at fit.json's confidence
(95% by default), labelled with that confidence. "inside" is measured mean of the seeds within
exactly that interval; beside it, "validate" is tlc validate's own check, the same interval
widened by the measured standard error of the seeds' mean (not by a per-seed sigma). Seed noise
is printed as measured: the pooled per-seed standard deviation and the standard error of a
mean of that many seeds.

Printed per budget and point: predicted mean [interval], measured mean of the seeds, error,
inside or not, validate's check, interval half-width as % of the loss; then validate's gain
verdict. Last, coverage (points inside / points) and the mean error (mean |error| and mean
signed error), separately: an interval can cover by being wide while the mean is off.
Targets (issue 13): inside the interval, half-width <= 3% of the loss, |error| <= 2%.

    .venv/bin/python bench/plan_accuracy.py --runs-dir runs          # sweeps/tiny.yaml: a demo's runs, reused
    .venv/bin/python bench/plan_accuracy.py --sweep S.yaml --budgets 0.3 --seeds 0   # what fits in the time
    .venv/bin/python bench/plan_accuracy.py --sweep sweeps/tiny_long.yaml --plan-args=  # plans of any shape

By default every plan keeps to the sweep's measured shapes (--plan-args=--measured-shapes), as the
demo plans: tiny.yaml has one depth, and the laws have no term for depth.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlc.config import load_sweep  # noqa: E402
from tlc.demo import DEMO_COMPRESS_ARGS  # noqa: E402
from tlc.io import list_runs  # noqa: E402

from tlc.validate.validation import came_true  # noqa: E402


def tlc(*args: str) -> str:
    """Run a tlc command as a user would; its stdout, or exit with its error."""
    proc = subprocess.run([sys.executable, "-m", "tlc", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"tlc {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def score_point(point: dict) -> dict:
    """One validated point scored against exactly the interval its plan printed: inside (None without an
    interval), validate's check (widened by the seeds' standard error), relative error, half-width."""
    loss, measured = point["predicted"]["loss"], point["measured"]["loss"]
    low, high = loss["low"], loss["high"]
    return {
        "inside": None if low is None else low <= measured <= high,
        "validate": came_true(measured, point["measured"].get("loss_sem"), low, high)[0],
        "error": (measured - loss["mean"]) / measured,
        "half_width": (high - low) / 2 / loss["mean"] if low is not None else math.nan,
    }


def coverage_and_error(scores: list[dict]) -> dict:
    """Coverage (points inside their printed interval / points with one) and the mean error, kept apart."""
    scored = [s["inside"] for s in scores if s["inside"] is not None]
    errors = [s["error"] for s in scores]
    return {"inside": sum(scored), "scored": len(scored),
            "coverage": sum(scored) / len(scored) if scored else None,
            "mean_abs_error": statistics.fmean(abs(e) for e in errors) if errors else None,
            "mean_signed_error": statistics.fmean(errors) if errors else None}


def largest_compute(sweep_dir: Path) -> float:
    return max(json.loads((p / "config.json").read_text())["train_flops"] for p in list_runs(sweep_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "tiny.yaml")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--budgets", default="0.3,1,3", help="multiples of the largest run's training FLOPs")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--byte-share", type=float, default=0.6, help="byte limit as a share of the compute-optimal "
                                                                        "dense model's bytes")
    parser.add_argument("--plan-args", default="--measured-shapes",
                        help="more tlc plan flags for every plan, space-separated (default --measured-shapes)")
    args = parser.parse_args()
    sweep_dir = args.runs_dir / load_sweep(args.sweep).name
    started = time.perf_counter()
    tlc("sweep", args.sweep, "--runs-dir", args.runs_dir)
    for compress in DEMO_COMPRESS_ARGS:  # as `tlc demo` compresses: a demo's runs folder is reused as it is
        tlc("compress", sweep_dir, *compress)
    tlc("fit", sweep_dir)
    c_max = largest_compute(sweep_dir)
    print(f"sweep, compress and fit: {time.perf_counter() - started:.0f} s; largest run {c_max:.3g} FLOPs")

    results = []
    for multiple in [float(m) for m in args.budgets.split(",")]:
        budget = f"{multiple * c_max:.4g}"
        plan_path = sweep_dir / f"plan-{multiple:g}x.json"
        extra = args.plan_args.split()
        free = json.loads(tlc("plan", "--runs", sweep_dir, "--budget", budget, *extra, "--json", "--out", plan_path))
        max_bytes = int(args.byte_share * free["compute_optimal"]["inference"]["bytes"])
        tlc("plan", "--runs", sweep_dir, "--budget", budget, "--max-bytes", str(max_bytes), *extra, "--out", plan_path)
        t0 = time.perf_counter()
        tlc("validate", sweep_dir, "--plan", plan_path, "--seeds", args.seeds)
        plan = json.loads(plan_path.read_text())
        sha = __import__("hashlib").sha256(plan_path.read_bytes()).hexdigest()
        entry = next(v for v in json.loads((sweep_dir / "validation.json").read_text())["validations"]
                     if v["plan"]["sha256"] == sha)
        results.append((multiple, max_bytes, plan, entry, time.perf_counter() - t0))

    confidence = json.loads((sweep_dir / "fit.json").read_text()).get("bootstrap", {}).get("confidence", 0.95)
    label = f"{confidence:.0%} bootstrap interval of the fitted mean loss, as tlc plan prints it"
    seeds = [p["measured"]["loss_per_seed"] for _, _, _, e, _ in results for p in e["points"].values()]
    seeds = [s for s in seeds if len(s) >= 2]
    sigma = math.sqrt(statistics.fmean(statistics.variance(s) for s in seeds)) if seeds else None
    print(f"seed noise: per-seed sigma {sigma:.4f} nats, standard error of a {len(seeds[0])}-seed mean "
          f"{sigma / math.sqrt(len(seeds[0])):.4f}, from {len(seeds)} points" if sigma is not None else
          "seed noise: not measured (one seed)")
    print(f"scored interval: {label}")
    print(f"{'budget':>7} {'point':<15} {'predicted [' + f'{confidence:.0%}' + ']':<26} {'measured':>9} {'error':>7} "
          f"{'inside':>7} {'validate':>9} {'half-width':>10} {'bytes':>9} {'limit':>9} {'wall s':>7}")
    scores = []
    for multiple, max_bytes, plan, entry, wall in results:
        for name, point in entry["points"].items():
            loss, measured, score = point["predicted"]["loss"], point["measured"]["loss"], score_point(point)
            scores.append(score)
            interval = f"[{loss['low']:.3f}, {loss['high']:.3f}]" if loss["low"] is not None else "[none]"
            print(f"{multiple:>6g}x {name:<15} {loss['mean']:.3f} {interval:<20} {measured:>9.3f} "
                  f"{score['error']:>+7.1%} {str(score['inside']):>7} {str(score['validate']):>9} "
                  f"{score['half_width']:>9.1%} {point['measured']['bytes']:>9} {max_bytes:>9} {wall:>7.0f}")
        print(f"{'':>8}{entry['verdict']['sentence']}")
    total = coverage_and_error(scores)
    if total["scored"]:
        print(f"coverage of the {label}: {total['inside']} of {total['scored']} points inside "
              f"({total['coverage']:.0%}; nominal {confidence:.0%} for the fitted mean, which a mean of few seeds "
              "scatters around)")
    if scores:
        print(f"mean error: |error| {total['mean_abs_error']:.2%}, signed {total['mean_signed_error']:+.2%} "
              f"(measured minus predicted, over {len(scores)} points)")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
