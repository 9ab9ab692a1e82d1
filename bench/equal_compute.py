"""Larger-and-compressed against smaller-and-dense at equal training compute (Li et al. 2020's question).

Reads a compressed sweep folder whose runs share one training budget (an iso-FLOP sweep such as
sweeps/mlm-isoflop.yaml) and prints, for each shape's dense model, the best variant of every larger
shape whose stored bytes are no more than the dense model's, beside it: losses, bytes, and the
difference. Runs of one shape with different seeds are one row: losses are their mean, ± half their
range (with two seeds, the distance of each from the mean), and a variant counts only where every
seed has it. Every figure is read from the runs' own files (config.json, compress.jsonl); nothing is
trained here.

    python bench/equal_compute.py runs/mlm-isoflop
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlc.io import list_runs, read_jsonl  # noqa: E402


def spread(values: list[float]) -> float:
    """Half the range of the seeds' values (0 with one seed)."""
    return (max(values) - min(values)) / 2


def shape_groups(runs_dir: Path) -> list[dict]:
    """One entry per shape, smallest first: {name, params, tokens, seeds, budget, variants {name: {loss, losses,
    acc, bytes}}}, a variant's loss the mean over seeds and its bytes the largest of any seed's."""
    groups: dict[str, dict] = {}
    for run_dir in list_runs(runs_dir):
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        rows = read_jsonl(run_dir / "compress.jsonl")
        if not rows:
            continue
        name = config["run_id"].rsplit("-s", 1)[0]  # the run id without its seed
        group = groups.setdefault(name, {"name": name, "params": config["params"]["total"], "seeds": [],
                                         "tokens": config["train_tokens"], "budget": config.get("budget")
                                         or config["train_flops"], "rows": []})
        group["seeds"].append(config["seed"])
        group["rows"].append({r["variant"]: r for r in rows})
    out = []
    for group in sorted(groups.values(), key=lambda g: g["params"]):
        shared = set.intersection(*(set(rows) for rows in group["rows"]))
        group["variants"] = {
            v: {"losses": [rows[v]["val_loss"] for rows in group["rows"]],
                "loss": statistics.fmean(rows[v]["val_loss"] for rows in group["rows"]),
                "acc": statistics.fmean(rows[v]["val_acc"] for rows in group["rows"]),
                "bytes": max(rows[v]["bytes"] for rows in group["rows"])} for v in shared}
        out.append(group)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_dir", type=Path)
    args = p.parse_args()
    groups = shape_groups(args.runs_dir)
    budgets = {g["budget"] for g in groups}
    print(f"training budget(s) {', '.join(f'{b:.3g}' for b in budgets)} FLOPs; "
          "losses: mean over seeds ± half their range")
    print(f"{'shape':<22}{'seeds':>6}{'params':>9}{'tokens':>10}{'dense loss':>18}{'dense acc':>10}{'bytes':>10}")
    for g in groups:
        dense = g["variants"]["dense"]
        print(f"{g['name']:<22}{len(g['seeds']):>6}{g['params']:>9}{g['tokens']:>10}"
              f"{dense['loss']:>11.4f} ±{spread(dense['losses']):.4f}{dense['acc']:>10.4f}{dense['bytes']:>10}")
    print()
    print(f"{'small dense':<22}{'loss':>8}{'bytes':>10}  {'best larger variant within its bytes':<40}{'loss':>8}"
          f"{'bytes':>10}{'Δloss':>8}")
    for i, small in enumerate(groups):
        dense = small["variants"]["dense"]
        for large in groups[i + 1:]:
            fits = {v: r for v, r in large["variants"].items() if r["bytes"] <= dense["bytes"]}
            if not fits:
                smallest = min(large["variants"].items(), key=lambda item: item[1]["bytes"])
                none = f"{large['name']} (none fits: {smallest[0]} is {smallest[1]['bytes']})"
                print(f"{small['name']:<22}{dense['loss']:>8.4f}{dense['bytes']:>10}  {none}")
                continue
            variant, best = min(fits.items(), key=lambda item: item[1]["loss"])
            print(f"{small['name']:<22}{dense['loss']:>8.4f}{dense['bytes']:>10}  {large['name'] + ' ' + variant:<40}"
                  f"{best['loss']:>8.4f}{best['bytes']:>10}{best['loss'] - dense['loss']:>+8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
