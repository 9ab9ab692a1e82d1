"""Does a WSD cooldown branch reach what a cosine run reaches at the same tokens?

Hagele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations") report that a constant-rate trunk with a short cooldown matches a cosine schedule
run to the same token count. `tlc` counts each cooldown branch's end as a finished-run point on
that claim, so it is checked here: width 64 x depth 2 (tiny.yaml's context 128, vocabulary 1024,
micro-batch 4 (--micro-batch; 16 before tiny.yaml's redesign), peak rate 3e-3), D = 2M tokens,
seeds 0 and 1;

- cosine: `tlc train --tokens 2e6` (warmup 5%, cosine to 0.1 of the peak);
- wsd:    `tlc train --schedule wsd --cooldowns 1.0 --cooldown-frac 0.2` on a trunk of D / 1.2
          tokens, so its one branch ends at D: the same optimizer steps, the same FLOPs.

With --also-cosine-to-zero, a third schedule: the same cosine decaying to zero (min_lr_ratio 0),
as the branches do, which separates the schedule's shape from how far it decays.

Printed: each run's final validation loss and training wall time, the mean over seeds, and the
WSD / cosine ratio of the means (the claim holds within 1% when it is within 0.99-1.01).
Runs are resumed if the folder holds them.

    .venv/bin/python bench/wsd_cosine.py [--runs-dir runs/bench-wsd-cosine] [--tokens 2e6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = ["--width", "64", "--depth", "2", "--heads", "2", "--context", "128", "--vocab-size", "1024",
         "--precision", "fp32", "--zero-stage", "0", "--no-progress"]
COOLDOWN_FRAC = 0.2


def train(out: Path, extra: list[str]) -> dict:
    """Run `tlc train` into ``out`` (resuming) and return its config and metrics."""
    cmd = [sys.executable, "-m", "tlc", "train", *SHAPE, *extra, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"config": json.loads((out / "config.json").read_text()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench-wsd-cosine")
    parser.add_argument("--tokens", type=float, default=2e6)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per step (default 4, as sweeps/tiny.yaml)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of both schedules (default 3e-3, "
                        "tiny.yaml's rate for w64-d2)")
    parser.add_argument("--also-cosine-to-zero", action="store_true", help="also cosine with --min-lr-ratio 0")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = {"cosine": [], "wsd": []} | ({"cosine0": []} if args.also_cosine_to_zero else {})
    batch = ["--micro-batch", str(args.micro_batch), "--lr", str(args.lr)]
    for seed in seeds:
        cosine = train(args.runs_dir / f"cosine-s{seed}", ["--tokens", str(int(args.tokens)), "--seed", str(seed), *batch])
        trunk = int(args.tokens / (1 + COOLDOWN_FRAC))
        wsd = train(args.runs_dir / f"wsd-s{seed}", ["--tokens", str(trunk), "--seed", str(seed), "--schedule", "wsd",
                                                     "--cooldowns", "1.0", "--cooldown-frac", str(COOLDOWN_FRAC), *batch])
        end = cosine["rows"][-1]
        branch = [r for r in wsd["rows"] if r.get("final")][-1]
        measured = [("cosine", end, cosine), ("wsd", branch, wsd)]
        if args.also_cosine_to_zero:
            zero = train(args.runs_dir / f"cosine0-s{seed}", ["--tokens", str(int(args.tokens)), "--seed", str(seed),
                                                              "--min-lr-ratio", "0", *batch])
            measured.append(("cosine0", zero["rows"][-1], zero))
        for name, row, run in measured:
            results[name].append({"seed": seed, "tokens": row["tokens"], "val_loss": row["val_loss"],
                                  "wall_s": row["wall_s"], "spent_flops": run["config"]["spent_flops"]})
            print(f"{name:<7} seed {seed}: D {row['tokens']:,} tokens, spent {run['config']['spent_flops']:.4g} FLOPs, "
                  f"val_loss {row['val_loss']:.4f}, train wall {row['wall_s']:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    mean = {k: sum(r["val_loss"] for r in v) / len(v) for k, v in results.items()}
    ratio = mean["wsd"] / mean["cosine"]
    print(f"mean val_loss over seeds {seeds}: cosine {mean['cosine']:.4f}, wsd {mean['wsd']:.4f}; "
          f"wsd / cosine = {ratio:.4f} ({'within' if abs(ratio - 1) <= 0.01 else 'NOT within'} 1%)")
    if "cosine0" in mean:
        zero_ratio = mean["wsd"] / mean["cosine0"]
        print(f"cosine to zero {mean['cosine0']:.4f}; wsd / cosine-to-zero = {zero_ratio:.4f} "
              f"({'within' if abs(zero_ratio - 1) <= 0.01 else 'NOT within'} 1%)")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    (args.runs_dir / "wsd_cosine.json").write_text(json.dumps({"runs": results, "mean": mean, "ratio": ratio},
                                                               indent=2) + "\n")


if __name__ == "__main__":
    main()
