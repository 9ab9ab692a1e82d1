"""Larger-and-compressed against smaller-and-dense at equal training compute (Li et al. 2020's question).

Reads a compressed sweep folder whose runs share one training budget (an iso-FLOP sweep such as
sweeps/mlm-tiny.yaml) and prints, for each run's dense model, the best variant of every larger
run whose stored bytes are no more than the dense model's, beside it: losses, bytes, and the
difference. Every figure is read from the runs' own files (config.json, metrics.jsonl,
compress.jsonl); nothing is trained here.

    python bench/equal_compute.py runs/mlm-tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlc.io import list_runs, read_jsonl  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_dir", type=Path)
    args = p.parse_args()
    runs = []
    for run_dir in list_runs(args.runs_dir):
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        rows = read_jsonl(run_dir / "compress.jsonl")
        if not rows:
            continue
        runs.append((config["params"]["total"], config, rows))
    runs.sort(key=lambda r: r[0])
    budgets = {c.get("budget") or c["train_flops"] for _, c, _ in runs}
    objective = {c["shape"].get("objective", "clm") for _, c, _ in runs}
    print(f"objective {'/'.join(sorted(objective))}; training budget(s) {', '.join(f'{b:.3g}' for b in budgets)} FLOPs")
    print(f"{'run':<24}{'params':>9}{'tokens':>10}{'dense loss':>11}{'dense acc':>10}{'bytes':>10}")
    for params, config, rows in runs:
        dense = next(r for r in rows if r["variant"] == "dense")
        print(f"{config['run_id']:<24}{params:>9}{config['train_tokens']:>10}{dense['val_loss']:>11.4f}"
              f"{dense['val_acc']:>10.4f}{dense['bytes']:>10}")
    print()
    print(f"{'small dense':<24}{'loss':>8}{'bytes':>10}  {'best larger variant within its bytes':<44}{'loss':>8}"
          f"{'bytes':>10}{'Δloss':>8}")
    for i, (_, small, small_rows) in enumerate(runs):
        dense = next(r for r in small_rows if r["variant"] == "dense")
        for _, large, large_rows in runs[i + 1:]:
            fits = [r for r in large_rows if r["bytes"] <= dense["bytes"]]
            label = f"{large['run_id']} "
            if not fits:
                none = label + "(none fits)"
                print(f"{small['run_id']:<24}{dense['val_loss']:>8.4f}{dense['bytes']:>10}  {none:<44}")
                continue
            best = min(fits, key=lambda r: r["val_loss"])
            print(f"{small['run_id']:<24}{dense['val_loss']:>8.4f}{dense['bytes']:>10}  {label + best['variant']:<44}"
                  f"{best['val_loss']:>8.4f}{best['bytes']:>10}{best['val_loss'] - dense['val_loss']:>+8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
