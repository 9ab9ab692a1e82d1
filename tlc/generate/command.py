"""``tlc generate RUN [--variant NAME] --prompt TEXT``: flags, their checks, the printed completion."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tlc.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc generate``."""
    parser.add_argument("run", type=Path, metavar="RUN", help="one trained run, e.g. runs/tiny/w64-d2-s0")
    parser.add_argument("--variant", default=None,
                        help="a variant tlc compress made (dense, magnitude-s50-int8, ...) or 'recommended' "
                             "(the one nearest the sweep's plan.json); default: the trained model")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens to generate, at least 1 (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 for greedy decoding, else the softmax temperature (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    parser.add_argument("--no-record", action="store_true", help="do not append the sample to RUN/samples.jsonl")


def check_args(args: argparse.Namespace) -> None:
    """The checks that need no model: a UserError naming the flag."""
    if args.tokens < 1:
        raise UserError(f"--tokens: must be at least 1, got {args.tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature: must be 0 (greedy) or a positive number, got {args.temperature}")
    if not args.prompt:
        raise UserError("--prompt: the prompt is empty; give some text to continue")


def run(args: argparse.Namespace) -> int:
    """Continue a prompt with any variant of a run: greedy at temperature 0, else sampled with --seed.

    Prints the prompt and its completion; records both in RUN/samples.jsonl, from which tlc report
    shows the dense model and the plan's recommended compression side by side.
    """
    from tlc.export.source import check_run, find_variant, recommended_variant, saved_variants
    from tlc.generate.sample import SAMPLES, complete, load_model, load_tokenizer
    from tlc.io import append_jsonl

    check_args(args)
    run_dir = check_run(args.run)
    variant = None
    if args.variant == "recommended":
        plan_path = run_dir.parent / "plan.json"
        plan = json.loads(plan_path.read_text(encoding="utf-8")) if plan_path.is_file() else None
        if plan is None:
            raise UserError(f"--variant recommended: no plan.json beside {run_dir.name}; run tlc plan first")
        name = recommended_variant(plan, saved_variants(run_dir))
        if name is None:
            raise UserError(f"--variant recommended: {run_dir.name} has no variant of the plan's compression "
                            f"{plan['recommendation'].get('compression')}; compress it with that method")
        variant = find_variant(run_dir, name)
    elif args.variant is not None:
        variant = find_variant(run_dir, args.variant)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    context = int(config["shape"]["context"])
    tokenizer, eot_id = load_tokenizer(run_dir)
    prompt_ids = tokenizer.encode(args.prompt).ids
    if not prompt_ids:
        raise UserError("--prompt: the prompt encodes to no tokens; give some text to continue")
    if len(prompt_ids) > context:
        raise UserError(f"--prompt: {len(prompt_ids)} tokens, longer than the model's context of {context}; "
                        "give a shorter prompt")

    model = load_model(run_dir, variant.folder if variant else None)
    new = complete(model, prompt_ids, args.tokens, args.temperature, args.seed, context, stop_id=eot_id)
    completion = tokenizer.decode(new)
    print(args.prompt + completion)
    if not args.no_record:
        row = variant.row if variant else {"variant": "dense", "method": "none", "sparsity": 0.0, "bits": 32}
        append_jsonl(run_dir / SAMPLES, {
            "variant": variant.name if variant else "dense", "method": row.get("method"),
            "sparsity": row.get("sparsity"), "bits": row.get("bits"), "prompt": args.prompt,
            "completion": completion, "tokens": args.tokens, "generated": len(new),
            "temperature": args.temperature, "seed": args.seed, "prompt_tokens": len(prompt_ids)})
    return 0
