"""``tlc generate RUN [--variant NAME] --prompt TEXT``: flags, their checks, the printed completion (or, for
a masked-LM encoder, the prompt with its ``<mask>`` tokens filled)."""

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
    parser.add_argument("--prompt", required=True,
                        help="text to continue; for a masked-LM run (objective mlm), text with <mask> where a "
                             "token is missing, e.g. 'return x <mask> 1'")
    parser.add_argument("--tokens", type=int, default=64,
                        help="new tokens to generate, at least 1 (default 64; a masked-LM run fills its masks)")
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
    shows the dense model and the plan's recommended compression side by side. A masked-LM run
    (objective mlm) cannot continue text: it fills each <mask> in the prompt with one token, left
    to right, and prints the filled prompt.
    """
    from tlc.architecture import MASK_TOKEN
    from tlc.export.source import check_run, find_variant, recommended_variant, saved_variants
    from tlc.generate.sample import SAMPLES, complete, fill_masks, load_model, load_tokenizer
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
    objective = config["shape"].get("objective", "clm")
    tokenizer, eot_id = load_tokenizer(run_dir)
    prompt_ids = tokenizer.encode(args.prompt).ids
    if not prompt_ids:
        raise UserError("--prompt: the prompt encodes to no tokens; give some text to continue")
    if len(prompt_ids) > context:
        raise UserError(f"--prompt: {len(prompt_ids)} tokens, longer than the model's context of {context}; "
                        "give a shorter prompt")
    mask_id = tokenizer.token_to_id(MASK_TOKEN) if objective == "mlm" else None
    if objective == "mlm" and mask_id not in prompt_ids:
        raise UserError(f"--prompt: {run_dir.name} is a masked-LM encoder (objective mlm), which fills {MASK_TOKEN} "
                        f"tokens instead of continuing text; put {MASK_TOKEN} where a token is missing, "
                        f"e.g. --prompt 'return x {MASK_TOKEN} 1'")

    model = load_model(run_dir, variant.folder if variant else None, objective)
    if objective == "mlm":
        new = fill_masks(model, prompt_ids, mask_id, args.temperature, args.seed)
        fills = iter(new)
        completion = tokenizer.decode([next(fills) if t == mask_id else t for t in prompt_ids])
        print(completion)
    else:
        new = complete(model, prompt_ids, args.tokens, args.temperature, args.seed, context, stop_id=eot_id)
        completion = tokenizer.decode(new)
        print(args.prompt + completion)
    if not args.no_record:
        row = variant.row if variant else {"variant": "dense", "method": "none", "sparsity": 0.0, "bits": 32}
        append_jsonl(run_dir / SAMPLES, {
            "variant": variant.name if variant else "dense", "method": row.get("method"),
            "sparsity": row.get("sparsity"), "bits": row.get("bits"), "prompt": args.prompt,
            "completion": completion, "tokens": len(new) if objective == "mlm" else args.tokens,
            "generated": len(new), "temperature": args.temperature, "seed": args.seed,
            "prompt_tokens": len(prompt_ids), **({"objective": objective} if objective == "mlm" else {})})
    return 0
