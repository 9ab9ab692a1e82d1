"""``tlc plan``: flags, budgets and their checks, and the printed plan; the search is :mod:`tlc.plan.planner`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tlc.corpus import check_corpus
from tlc.errors import UserError
from tlc.io import atomic_write_json
from tlc.plan.cost import LATENCY_BATCHES
from tlc.plan.law import PUBLISHED_LAWS, load_plan_law
from tlc.plan.output import format_table
from tlc.plan.planner import DEFAULT_MAX_SPARSITY, make_plan
from tlc.plan.search import DEFAULT_PARETO_TRIALS, DEFAULT_TPE_TRIALS
from tlc.plan.space import Budgets
from tlc.plan.training_cost import DEFAULT_MAX_EPOCHS
from tlc.units import parse_budget, parse_bytes, parse_count, parse_positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc plan``."""
    g = parser.add_argument_group("budgets")
    g.add_argument("--budget", metavar="FLOPS|DURATION", help="training compute in FLOPs, e.g. 1e17, or wall-clock "
                   "time, e.g. 6h or 45min, on the sweep's own hardware (a throughput fitted to its runs) (required)")
    g.add_argument("--max-epochs", type=float, default=None,
                   help=f"most passes over the corpus's unique tokens (default {DEFAULT_MAX_EPOCHS:g}); beyond one, "
                        "the law sees repeated tokens discounted (Muennighoff et al. 2023)")
    g.add_argument("--max-params", metavar="COUNT", help="most non-zero parameters at inference, e.g. 2e7 or 125M")
    g.add_argument("--max-bytes", metavar="SIZE", help="largest artifact, e.g. 20MB, 1.5GiB or 5e7 (bytes)")
    g.add_argument("--max-latency-ms", metavar="MS", help="most milliseconds per token at --latency-batch on --device (a forward pass over a "
                   "32-token prompt, divided by batch x 32), as compress.jsonl measures it; the prediction keeps a "
                   "10%% margin under it")
    g.add_argument("--device", help="the device whose measured latency counts: compress.jsonl's device name or "
                   "a prefix naming one, e.g. cpu or cuda")
    g.add_argument("--latency-batch", type=int, choices=LATENCY_BATCHES, default=1,
                   help="batch size at which --max-latency-ms is measured, per token (default 1)")
    g.add_argument("--inference-tokens", metavar="TOKENS", default="0",
                   help="tokens served in the model's lifetime; their forward FLOPs come out of --budget")
    g = parser.add_argument_group("law (one of)")
    g.add_argument("--runs", type=Path, metavar="RUNS_DIR", help="a fitted sweep: uses RUNS_DIR/fit.json")
    g.add_argument("--fit", type=Path, metavar="FIT.json", help="a fit.json written by tlc fit (of a sweep, a run "
                   "table or a published set), without its runs folder")
    g.add_argument("--law", help=f"{', '.join(PUBLISHED_LAWS)}, or a fit.json or {{E, A, B, alpha, beta}} JSON file")
    g.add_argument("--law-form", help="which law of fit.json to plan with, e.g. chinchilla or kaplan (default: the "
                   "lowest held-out error among the laws the fit does not mark unidentified)")
    g = parser.add_argument_group("compression (needs a fit with compression models)")
    g.add_argument("--methods", help="compression methods to consider, comma-separated: pruning methods and "
                   "weight-only quantizers (gptq, rtn, or one bit width such as gptq-w4) (default: every fitted one)")
    g.add_argument("--max-sparsity", type=float, help=f"highest sparsity searched (default {DEFAULT_MAX_SPARSITY})")
    g.add_argument("--no-int8", action="store_true", help="never recommend 8-bit weights (int8, nor 8-bit gptq/rtn)")
    g.add_argument("--measured-shapes", action="store_true",
                   help="keep to the width/depth ratios and the depths of the sweep's shapes (the laws see only "
                   "the parameter count, so other shapes are an extrapolation that tlc plan warns about)")
    g = parser.add_argument_group("search and output")
    g.add_argument("--trials", type=int, default=DEFAULT_TPE_TRIALS, help=f"TPE trials (default {DEFAULT_TPE_TRIALS})")
    g.add_argument("--pareto-trials", type=int, default=DEFAULT_PARETO_TRIALS,
                   help=f"NSGA-II trials for the Pareto front (default {DEFAULT_PARETO_TRIALS})")
    g.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    g.add_argument("--storage", help="Optuna storage URL for the studies (default: SQLite RUNS_DIR/study.db "
                   "with --runs, none otherwise)")
    g.add_argument("--out", type=Path, help="where plan.json goes (default RUNS_DIR/plan.json with --runs)")
    g.add_argument("--json", action="store_true", help="print only plan.json's content")
    g.add_argument("--allow-other-corpus", action="store_true",
                   help="plan even though the corpus at the runs' data source is not the one fit.json was made on "
                        "(recorded in plan.json's corpus)")


def _budgets(args: argparse.Namespace) -> Budgets:
    try:
        served_none = float(args.inference_tokens) == 0.0
    except ValueError:
        served_none = False
    inference_tokens = 0.0 if served_none else parse_count(args.inference_tokens, "--inference-tokens")
    if args.budget is None:
        raise UserError("--budget: required; give the training compute in FLOPs, e.g. --budget 1e17")
    latency = None
    if args.max_latency_ms is not None:
        latency = parse_positive(args.max_latency_ms, "--max-latency-ms", "milliseconds such as 20 or 2.5")
    train_flops, train_seconds = parse_budget(args.budget, "--budget")
    if train_seconds is not None and inference_tokens:
        raise UserError("--inference-tokens: needs a --budget in FLOPs (inference is counted in FLOPs, not time)")
    return Budgets(
        train_flops=train_flops, train_seconds=train_seconds,
        inference_tokens=inference_tokens,
        max_params=parse_count(args.max_params, "--max-params") if args.max_params is not None else None,
        max_bytes=parse_bytes(args.max_bytes, "--max-bytes") if args.max_bytes is not None else None,
        max_latency_ms=latency,
    )


def run(args: argparse.Namespace) -> int:
    """Recommend the model to train and how to compress it, for a training budget and an inference budget.

    Searches width, depth (or N for a published law), training tokens from the compute budget,
    pruning method and sparsity, and 8-bit weights with Optuna (TPE with constraints for the
    answer, then a local polish; NSGA-II for the Pareto front of loss against inference cost)
    over a fitted sweep (--runs), a fit.json (--fit, e.g. of a run table) or a published law (--law chinchilla|besiroglu). Prints the
    recommendation with its predicted loss and interval, the best uncompressed model meeting
    the same budgets ("train small") and the gain, and writes plan.json.
    """
    budgets = _budgets(args)
    args.max_epochs_given = args.max_epochs is not None
    if args.max_epochs is None:
        args.max_epochs = DEFAULT_MAX_EPOCHS
    elif not (args.max_epochs > 0 and args.max_epochs < float("inf")):
        raise UserError(f"--max-epochs: must be a number > 0 of passes over the corpus, got {args.max_epochs:g}")
    if args.trials < 1 or args.pareto_trials < 2:
        raise UserError("--trials must be >= 1 and --pareto-trials >= 2")
    if args.max_sparsity is not None and not (0 < args.max_sparsity < 1):
        raise UserError(f"--max-sparsity: must be in (0, 1), got {args.max_sparsity}")
    if args.fit is not None:
        if args.law is not None or args.runs is not None:
            raise UserError("--fit: give one law: --fit FIT.json, --runs RUNS_DIR or --law, not several")
        if not args.fit.is_file():
            raise UserError(f"--fit: {args.fit} is not a file; give the fit.json that tlc fit wrote")
        args.law = str(args.fit)
    law = load_plan_law(args.runs, args.law, args.law_form)
    corpus = None
    if args.runs is not None:  # before the search: a law of another corpus predicts nothing about this one
        fit_corpus = json.loads((args.runs / "fit.json").read_text(encoding="utf-8")).get("corpus")
        corpus = check_corpus(fit_corpus, f"{args.runs / 'fit.json'}", "tlc plan", args.allow_other_corpus,
                              "--runs")
    storage = args.storage or (f"sqlite:///{(args.runs / 'study.db').resolve()}" if args.runs else None)
    plan = make_plan(law, budgets, args, storage)
    plan["corpus"] = corpus
    out = args.out or (args.runs / "plan.json" if args.runs else None)
    if out is not None:
        atomic_write_json(out, plan)
    print(json.dumps(plan, indent=2) if args.json else format_table(plan, str(out) if out else None))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tlc.plan.command``: the same command without loading the other stages' modules (start-up time)."""
    import sys

    parser = argparse.ArgumentParser(prog="tlc plan", description=run.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        print(f"tlc plan: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
