"""``tlc validate RUNS_DIR``: flags and their checks, and the printed table; the work is :mod:`tlc.validate.validation`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tlc.errors import UserError
from tlc.units import format_bytes, format_count
from tlc.validate.validation import split_summary

MIN_LATENCY_REPEATS = 7  # latency on a shared machine is a median of at least this many passes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc validate``."""
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="the sweep folder the plan was made from")
    parser.add_argument("--plan", type=Path, help="the plan to carry out (default RUNS_DIR/plan.json)")
    parser.add_argument("--points", help="comma-separated points to train and compress "
                                         "(default recommendation,train_small)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds; measured losses are their "
                                                       "mean, and their spread widens the predicted interval "
                                                       "(default 0,1: one seed measures no spread)")
    parser.add_argument("--allow-other-corpus", action="store_true",
                        help="train even though the corpus at the plan's data source is not the one the plan was "
                             "made on (recorded in validation.json's corpus)")
    parser.add_argument("--latency-repeats", type=int, default=MIN_LATENCY_REPEATS,
                        help=f"timed passes per latency, median reported (default and least {MIN_LATENCY_REPEATS})")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected integers such as 0,1, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: give distinct integers >= 0 such as 0,1, got {text!r}")
    return seeds


def _loss(entry: dict) -> str:
    low, high = entry.get("low"), entry.get("high")
    interval = "" if low is None else f" [{low:.3f}, {high:.3f}]"
    return f"{entry['mean']:.3f}{interval}"


def _check(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def format_table(entry: dict) -> str:
    """Predicted against measured, one row per point, then the verdict."""
    lines = [f"{'point':<16}{'predicted loss':<24}{'measured':>9}{'inside':>8}{'error':>8}"
             f"{'bytes pred':>12}{'measured':>11}{'budget':>10}{'non-zeros':>11}{'ms/token':>10}{'train s':>9}"]
    for name, point in entry["points"].items():
        p, m, c, b = point["predicted"], point["measured"], point["checks"], point["budget"]
        latency = "-" if m["latency_ms"] is None else f"{m['latency_ms']:.3g}"
        budget = "-" if b["max_bytes"] is None else format_bytes(b["max_bytes"])
        lines.append(f"{name:<16}{_loss(p['loss']):<24}{m['loss']:>9.3f}{_check(c['loss_inside_interval']):>8}"
                     f"{c['loss_error_relative']:>+8.1%}{format_bytes(p['bytes']):>12}{format_bytes(m['bytes']):>11}"
                     f"{budget:>10}{format_count(m['nonzeros']):>11}{latency:>10}{m['train_wall_s']:>9.0f}")
        split = split_summary(point)
        if split:
            lines.append(f"  {name} trained, before compression: {split}")
        over = [k for k in ("nonzeros", "bytes", "latency") if c[f"{k}_within_budget"] is False]
        if over:
            lines.append(f"  {name} broke its budget: {', '.join(over)}")
    lines.append(f"verdict: {entry['verdict']['sentence']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Train and compress what plan.json says, measure it, and say whether the plan came true.

    For each point (--points, default recommendation and train_small) and seed, trains the
    planned model with tlc train --plan into RUNS_DIR/validation/<point>-<recipe hash>-s<seed>/,
    compresses it as planned, and compares the measured loss, bytes, non-zeros, latency and wall
    time with the plan's predictions and budgets. Writes RUNS_DIR/validation.json, prints a table
    and whether "train large, then compress" won as predicted. Run it again to resume.
    """
    from tlc.corpus import check_corpus
    from tlc.plan.planfile import check_same_sweep, parse_points, read_plan
    from tlc.validate.validation import validate_plan

    runs_dir = args.runs_dir
    if not runs_dir.is_dir():
        raise UserError(f"RUNS_DIR: {str(runs_dir)!r} is not a folder; give the sweep folder the plan came from")
    if args.latency_repeats < MIN_LATENCY_REPEATS:
        raise UserError(f"--latency-repeats: at least {MIN_LATENCY_REPEATS} (a median on a shared machine), "
                        f"got {args.latency_repeats}")
    seeds = _seeds(args.seeds)
    plan_path = args.plan or runs_dir / "plan.json"
    plan = read_plan(plan_path)
    check_same_sweep(plan, runs_dir)
    points = parse_points(args.points, plan)
    corpus = check_corpus(plan.get("corpus"), str(plan_path), "tlc validate", args.allow_other_corpus, "--plan")
    entry = validate_plan(runs_dir, plan, plan_path, points, seeds, args.latency_repeats, print, corpus)
    print(format_table(entry))
    print(f"-> {runs_dir / 'validation.json'}")
    return 0
