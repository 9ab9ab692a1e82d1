"""Which sweep design pins the scaling law down: the same training compute spent three ways.

The tiny sweep's shapes, learning rates and seeds (from sweeps/tiny.yaml; each shape's own
training length is left out) are trained by the real `tlc sweep`, then fitted by the real
`tlc fit` code (finished-run points, 200 bootstrap resamples over runs), under three designs of
about equal total training FLOPs:

- equal:   every shape on the same tokens under a cosine schedule (tiny.yaml's design before
           issue 12: 600K tokens each); one finished point per run, all at one D.
- wsd:     every shape on a warmup-stable-decay trunk with cooldown branches forked at 1/8, 1/4,
           1/2 and all of its tokens (each 20% of its fork); trunk tokens chosen so trunk plus
           branches cost what `equal` costs; four finished points per run.
- isoflop: Hoffmann et al.'s approach 2, three budgets in ratio 1:2:4, every shape at every
           budget that buys it 200 optimizer steps (cosine); budgets scaled to about `equal`'s
           compute.

Printed per design: runs, finished points, FLOPs actually spent (from each run's config.json)
as a ratio to `equal`'s, training wall and CPU time (`tlc sweep` and its trainers), and the Chinchilla fit's status, leave-largest-out
error and the widths (high/low) of the 95% intervals of alpha and beta. A design identifies the
law when no parameter is on a bound, both widths are under 3 and the held-out error is small.

    .venv/bin/python bench/fit_design.py                      # all three; resumes finished runs
    .venv/bin/python bench/fit_design.py --designs wsd --runs-dir /tmp/fd
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlc.config import MIN_BUDGET_STEPS, SHAPE_TRAIN_KEYS, load_sweep  # noqa: E402
from tlc.shapes import flops_per_token  # noqa: E402

EQUAL_TOKENS = 600_000  # tiny.yaml's tokens per run before issue 12
COOLDOWNS = [0.125, 0.25, 0.5, 1.0]
COOLDOWN_FRAC = 0.2
ISOFLOP_RATIOS = (1, 2, 4)


def _base(name: str, tiny: dict) -> dict:
    """The sweep's model, shapes (with their learning rates, without their own training lengths), seeds and data."""
    train = {k: v for k, v in tiny["train"].items() if k not in ("tokens", "flops", "budgets", "schedule",
                                                                   "cooldowns", "cooldown_frac")}
    own_length = [k for k in SHAPE_TRAIN_KEYS if k != "lr"]  # what a shape may set besides its rate
    shapes = [{k: v for k, v in shape.items() if k not in own_length} for shape in tiny["shapes"]]
    return {"name": name, "model": tiny["model"], "shapes": shapes, "seeds": tiny.get("seeds", [0]),
            "train": train, "data": tiny["data"]}


def designs(tiny: dict, tiny_path: Path) -> dict[str, dict]:
    """The three sweeps, each a sweep file's content, at about equal total training FLOPs."""
    sweep = load_sweep(tiny_path)
    per_token = [flops_per_token(s) for s in sweep.shapes]
    total = EQUAL_TOKENS * sum(per_token) * len(sweep.seeds)

    equal = _base("design-equal", tiny)
    equal["train"].update(tokens=EQUAL_TOKENS, schedule="cosine")

    wsd = _base("design-wsd", tiny)
    spent_per_trunk_token = 1 + COOLDOWN_FRAC * sum(COOLDOWNS)
    wsd["train"].update(tokens=int(EQUAL_TOKENS / spent_per_trunk_token), schedule="wsd", cooldowns=COOLDOWNS,
                        cooldown_frac=COOLDOWN_FRAC, evals=max(sweep.train.evals, len(COOLDOWNS)))

    # iso-FLOP: find the smallest budget b such that budgets b, 2b, 4b (runs with >= 200 steps only) cost `total`
    tokens_per_step = sweep.train.micro_batch * sweep.train.grad_accum * sweep.launch.nproc * sweep.shapes[0].context

    def cost(b: float) -> float:
        return sum(r * b for r in ISOFLOP_RATIOS for f in per_token if r * b / f // tokens_per_step >= MIN_BUDGET_STEPS)

    low, high = total / 1e4, total
    for _ in range(60):  # cost grows with b; bisect in log space
        mid = (low * high) ** 0.5
        low, high = (mid, high) if cost(mid) < total else (low, mid)
    budget = float(f"{high:.2g}")
    isoflop = _base("design-isoflop", tiny)
    isoflop["train"].update(budgets=[budget * r for r in ISOFLOP_RATIOS], schedule="cosine")
    return {"equal": equal, "wsd": wsd, "isoflop": isoflop}


def _interval_width(law: dict, name: str) -> float:
    entry = (law.get("parameters") or {}).get(name) or {}
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None:
        return float("nan")
    return high / low if low > 0 else float("inf")


def measure(name: str, doc: dict, runs_dir: Path, bootstrap: int) -> dict:
    """Train the design with `tlc sweep` (resuming), fit it as `tlc fit` does; its figures."""
    from tlc.fit.observations import fit_sweep
    from tlc.io import atomic_write_json, list_runs

    runs_dir.mkdir(parents=True, exist_ok=True)
    sweep_file = runs_dir / f"{doc['name']}.yaml"
    sweep_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "tlc", "sweep", str(sweep_file), "--runs-dir", str(runs_dir)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sweep and every trainer it waited for
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: tlc sweep failed:\n{proc.stderr[-3000:]}")
    left_out = [line.strip() for line in proc.stdout.splitlines() if "left out" in line]
    sweep_dir = runs_dir / doc["name"]
    configs = [json.loads((p / "config.json").read_text()) for p in list_runs(sweep_dir)]
    fit = fit_sweep(sweep_dir, bootstrap=bootstrap, seed=0)
    atomic_write_json(sweep_dir / "fit.json", fit)
    law = fit["laws"]["chinchilla"]
    heldout = law.get("heldout") or {}
    return {
        "design": name,
        "runs": len(configs),
        "left_out": left_out,
        "finished_points": fit["n_points"],
        "spent_flops": sum(c["spent_flops"] for c in configs),
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "status": law["status"],
        "reason": law["reason"],
        "heldout_error": heldout.get("relative_error"),
        "alpha_width": _interval_width(law, "alpha"),
        "beta_width": _interval_width(law, "beta"),
        "parameters": {k: v["value"] for k, v in (law.get("parameters") or {}).items()},
        "design_message": fit.get("design"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench-fit-design")
    parser.add_argument("--designs", default="equal,wsd,isoflop", help="comma-separated subset of equal,wsd,isoflop")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "tiny.yaml", help="shapes and settings from here")
    args = parser.parse_args()
    tiny = yaml.safe_load(args.sweep.read_text())
    all_designs = designs(tiny, args.sweep)
    wanted = [d.strip() for d in args.designs.split(",") if d.strip()]
    unknown = sorted(set(wanted) - set(all_designs))
    if unknown:
        raise SystemExit(f"--designs: unknown {unknown}; valid: {', '.join(all_designs)}")
    print(f"# {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start; bootstrap {args.bootstrap}")
    for name in wanted:
        print(f"# {name}: train {json.dumps(all_designs[name]['train'])}", flush=True)
    results = []
    for name in wanted:
        results.append(measure(name, all_designs[name], args.runs_dir, args.bootstrap))
        r = results[-1]
        print(f"# {name} done, load average {os.getloadavg()[0]:.1f}; {r['reason']}", flush=True)
        for line in r["left_out"]:
            print(f"#   {line}")
    baseline = next((r["spent_flops"] for r in results if r["design"] == "equal"), results[0]["spent_flops"])
    print(f"{'design':<9} {'runs':>4} {'points':>6} {'FLOPs':>9} {'/equal':>6} {'wall s':>7} {'status':<13} "
          f"{'held-out':>8} {'alpha w':>7} {'beta w':>7} {'CPU s':>6}")
    for r in results:
        heldout = "n/a" if r["heldout_error"] is None else f"{r['heldout_error']:.2%}"
        print(f"{r['design']:<9} {r['runs']:>4} {r['finished_points']:>6} {r['spent_flops']:>9.3g} "
              f"{r['spent_flops'] / baseline:>6.2f} {r['train_wall_s']:>7.0f} {r['status']:<13} {heldout:>8} "
              f"{r['alpha_width']:>7.3g} {r['beta_width']:>7.3g} {r['train_cpu_s']:>6.0f}")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    (args.runs_dir / "fit_design.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
