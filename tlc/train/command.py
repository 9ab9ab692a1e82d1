"""`tlc train`: one run from flags, or one run of a sweep file (``--sweep`` with ``--run-id``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from tlc.errors import UserError


def _count(text: str) -> int:
    """Parse a positive count written as 2000000, 2e6 or 2_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 2e6, got {text!r}") from None
    if not math.isfinite(value):  # int() of inf or nan raises
        raise argparse.ArgumentTypeError(f"expected a finite number such as 2e6, got {text!r}")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _float(text: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e15, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number such as 1e15, got {text!r}")
    return value


def _fractions(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers such as 0.25,0.5,1.0."""
    return tuple(_float(part) for part in text.split(",") if part.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc train``."""
    from tlc.config import ARCHS, OBJECTIVES, PRECISIONS, SCHEDULES, DataSettings, ModelShape, TrainSettings

    t, s, d = TrainSettings(), ModelShape(1, 1, 1), DataSettings()
    p.add_argument("--out", type=Path, help="run directory (default: runs/single/<run-id>, or runs/<sweep>/<run-id>)")
    p.add_argument("--sweep", type=Path, help="take the run's settings from this sweep file (with --run-id)")
    p.add_argument("--run-id", help="which run of --sweep to train, e.g. w64-d2-s0")
    p.add_argument("--plan", type=Path, metavar="PLAN.json", help="train a point of a plan.json as planned "
                   "(default out: <plan's folder>/validation/<point>-<recipe hash>-s<seed>)")
    p.add_argument("--point", default="recommendation", help="with --plan: recommendation (default) or train_small")
    g = p.add_argument_group("shape (without --sweep)")
    g.add_argument("--width", type=int, help="residual width d_model")
    g.add_argument("--depth", type=int, help="number of transformer blocks")
    g.add_argument("--heads", type=int, help="attention heads (must divide --width)")
    g.add_argument("--context", type=int, default=s.context, help=f"tokens per sequence (default {s.context})")
    g.add_argument("--vocab-size", type=int, default=s.vocab_size, help=f"BPE vocabulary (default {s.vocab_size})")
    g.add_argument("--arch", choices=ARCHS, default=s.arch, help=f"model family (default {s.arch})")
    g.add_argument("--objective", choices=OBJECTIVES, default=s.objective,
                   help=f"clm: causal decoder; mlm: RoBERTa-style encoder, 15%% of tokens masked (default {s.objective})")
    g = p.add_argument_group("training (without --sweep)")
    g.add_argument("--tokens", type=_count, help="training tokens for the run")
    g.add_argument("--flops", type=_float, help="training FLOPs for the run (instead of --tokens)")
    g.add_argument("--micro-batch", type=int, default=t.micro_batch, help=f"sequences per process per pass (default {t.micro_batch})")
    g.add_argument("--grad-accum", type=int, default=t.grad_accum, help=f"micro-batches per optimizer step (default {t.grad_accum})")
    g.add_argument("--lr", type=_float, default=t.lr, help=f"peak learning rate (default {t.lr})")
    g.add_argument("--zero-stage", type=int, default=t.zero_stage, help="DeepSpeed ZeRO stage 0, 1 or 2 (default 0)")
    g.add_argument("--precision", choices=PRECISIONS, default=t.precision,
                   help=f"(default {t.precision}: bf16 on a CUDA GPU of compute capability 8.0 or more; on a CPU fp32 "
                        "unless a short measured training step is faster in bf16, measured once per machine)")
    g.add_argument("--min-lr-ratio", type=_float, default=t.min_lr_ratio,
                   help=f"cosine decays to this share of the peak rate (default {t.min_lr_ratio})")
    g.add_argument("--warmup-frac", type=_float, default=t.warmup_frac,
                   help=f"share of the optimizer steps spent in linear warmup (default {t.warmup_frac})")
    g.add_argument("--schedule", choices=SCHEDULES, default=t.schedule,
                   help="learning-rate schedule: cosine, or wsd (warmup-stable-decay with cooldown branches) "
                   f"(default {t.schedule})")
    g.add_argument("--cooldowns", type=_fractions, default=(),
                   help="wsd forks as fractions of the run's tokens, e.g. 0.25,0.5,1.0: each starts a decay branch "
                   "whose end is a finished-run point")
    g.add_argument("--cooldown-frac", type=_float, default=t.cooldown_frac,
                   help=f"a branch's length as a share of its fork's tokens (default {t.cooldown_frac})")
    g.add_argument("--evals", type=int, default=t.evals, help=f"evaluations, spaced evenly in log FLOPs (default {t.evals})")
    g.add_argument("--eval-tokens", type=int, default=t.eval_tokens, help=f"validation tokens per evaluation (default {t.eval_tokens})")
    g.add_argument("--seed", type=int, default=None, help="seed for initialisation and data order (default 0, "
                   "or the plan's)")
    g.add_argument("--data", default=d.source, help="'stdlib' (default), a text file, a folder, a glob or a .jsonl file")
    g.add_argument("--prune", help="train sparse: METHOD:SPARSITY at init (snip, synflow, random, snip-shuffle, "
                                   "synflow-shuffle) or magnitude:SPARSITY[:START:END] during training "
                                   "(fractions of the run's tokens, default 0.25:0.75)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _prune(text: str | None):
    """--prune METHOD:SPARSITY[:START:END] as train.prune settings (validated, errors naming --prune)."""
    from tlc.config import parse_prune

    if text is None:
        return None
    parts = text.split(":")
    if len(parts) not in (2, 4):
        raise UserError(f"--prune: expected METHOD:SPARSITY or magnitude:SPARSITY:START:END, got {text!r}")
    raw = dict(zip(("method", "sparsity", "start", "end"), parts))
    return parse_prune(raw, "--prune")


def _train_config(args: argparse.Namespace):
    from tlc.config import DataSettings, ModelShape, RunConfig, TrainSettings, load_sweep

    if args.plan is not None:
        from tlc.plan.planfile import point_recipe, read_plan, run_config, validation_run_dir

        if args.sweep is not None:
            raise UserError("--plan and --sweep: give one source of settings, not both")
        recipe = point_recipe(read_plan(args.plan), args.point)
        cfg = run_config(recipe, args.seed)
        return cfg, args.out or validation_run_dir(args.plan.parent, recipe, args.point, cfg.seed)
    if args.sweep is not None:
        if not args.run_id:
            raise UserError("--run-id: required with --sweep; it names the run to train, e.g. w64-d2-s0")
        sweep = load_sweep(args.sweep)
        cfg = sweep.run(args.run_id)
        return cfg, args.out or Path("runs") / sweep.name / cfg.run_id
    missing = [f"--{n}" for n in ("width", "depth", "heads") if getattr(args, n) is None]
    if missing:
        raise UserError(f"{', '.join(missing)}: required (or give --sweep and --run-id)")
    if (args.tokens is None) == (args.flops is None):
        raise UserError("--tokens or --flops: give exactly one training budget, e.g. --tokens 2e6")
    shape = ModelShape(args.width, args.depth, args.heads, args.context, args.vocab_size, args.arch,
                       objective=args.objective)
    train = TrainSettings(
        tokens=args.tokens, flops=args.flops, micro_batch=args.micro_batch, grad_accum=args.grad_accum,
        lr=args.lr, zero_stage=args.zero_stage, precision=args.precision, evals=args.evals,
        eval_tokens=args.eval_tokens, prune=_prune(args.prune), min_lr_ratio=args.min_lr_ratio,
        warmup_frac=args.warmup_frac, schedule=args.schedule, cooldowns=args.cooldowns,
        cooldown_frac=args.cooldown_frac,
    )
    cfg = RunConfig(shape=shape, train=train, data=DataSettings(source=args.data), seed=args.seed or 0)
    return cfg, args.out or Path("runs") / "single" / cfg.run_id


def run(args: argparse.Namespace) -> int:
    """Train one model with DeepSpeed, writing metrics.jsonl, checkpoints and model/ into its run directory.

    Run it again with the same arguments to resume after an interruption. Under torchrun or
    the deepspeed launcher, every process runs this same command.
    """
    from tlc.config import validate_run
    from tlc.train.loop import train_run

    cfg, out = _train_config(args)
    validate_run(cfg)
    last = train_run(cfg, out, progress=not args.no_progress, notify=lambda line: print(line, file=sys.stderr, flush=True))
    if last and int(os.environ.get("RANK", "0")) == 0:
        print(f"{cfg.run_id}: val_loss {last['val_loss']:.4f}  val_bpb {last['val_bpb']:.3f}  "
              f"val_acc {last['val_acc']:.3f}  -> {out}")
    return 0
