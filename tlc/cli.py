"""The ``tlc`` command: one subcommand per stage, each documented by its function's docstring.

Heavy libraries (torch, DeepSpeed) are imported inside the commands so that ``--help`` and
input errors answer at once. A :class:`~tlc.errors.UserError` ends the command with one line
on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from tlc.errors import UserError

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"


def _count(text: str) -> int:
    """Parse a positive count written as 2000000, 2e6 or 2_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 2e6, got {text!r}") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _float(text: str) -> float:
    try:
        return float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e15, got {text!r}") from None


# ----------------------------------------------------------------------------------------------
# tlc train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from tlc.config import ARCHS, PRECISIONS, DataSettings, ModelShape, TrainSettings

    t, s, d = TrainSettings(), ModelShape(1, 1, 1), DataSettings()
    p.add_argument("--out", type=Path, help="run directory (default: runs/single/<run-id>, or runs/<sweep>/<run-id>)")
    p.add_argument("--sweep", type=Path, help="take the run's settings from this sweep file (with --run-id)")
    p.add_argument("--run-id", help="which run of --sweep to train, e.g. w64-d2-s0")
    g = p.add_argument_group("shape (without --sweep)")
    g.add_argument("--width", type=int, help="residual width d_model")
    g.add_argument("--depth", type=int, help="number of transformer blocks")
    g.add_argument("--heads", type=int, help="attention heads (must divide --width)")
    g.add_argument("--context", type=int, default=s.context, help=f"tokens per sequence (default {s.context})")
    g.add_argument("--vocab-size", type=int, default=s.vocab_size, help=f"BPE vocabulary (default {s.vocab_size})")
    g.add_argument("--arch", choices=ARCHS, default=s.arch, help=f"model family (default {s.arch})")
    g = p.add_argument_group("training (without --sweep)")
    g.add_argument("--tokens", type=_count, help="training tokens for the run")
    g.add_argument("--flops", type=_float, help="training FLOPs for the run (instead of --tokens)")
    g.add_argument("--micro-batch", type=int, default=t.micro_batch, help=f"sequences per process per pass (default {t.micro_batch})")
    g.add_argument("--grad-accum", type=int, default=t.grad_accum, help=f"micro-batches per optimizer step (default {t.grad_accum})")
    g.add_argument("--lr", type=_float, default=t.lr, help=f"peak learning rate (default {t.lr})")
    g.add_argument("--zero-stage", type=int, default=t.zero_stage, help="DeepSpeed ZeRO stage 0, 1 or 2 (default 0)")
    g.add_argument("--precision", choices=PRECISIONS, default=t.precision, help=f"(default {t.precision})")
    g.add_argument("--evals", type=int, default=t.evals, help=f"evaluations, spaced evenly in log FLOPs (default {t.evals})")
    g.add_argument("--eval-tokens", type=int, default=t.eval_tokens, help=f"validation tokens per evaluation (default {t.eval_tokens})")
    g.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default 0)")
    g.add_argument("--data", default=d.source, help="'stdlib' (default), a text file, a folder, a glob or a .jsonl file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_config(args: argparse.Namespace):
    from tlc.config import DataSettings, ModelShape, RunConfig, TrainSettings, load_sweep

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
    shape = ModelShape(args.width, args.depth, args.heads, args.context, args.vocab_size, args.arch)
    train = TrainSettings(
        tokens=args.tokens, flops=args.flops, micro_batch=args.micro_batch, grad_accum=args.grad_accum,
        lr=args.lr, zero_stage=args.zero_stage, precision=args.precision, evals=args.evals,
        eval_tokens=args.eval_tokens,
    )
    cfg = RunConfig(shape=shape, train=train, data=DataSettings(source=args.data), seed=args.seed)
    return cfg, args.out or Path("runs") / "single" / cfg.run_id


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model with DeepSpeed, writing metrics.jsonl, checkpoints and model/ into its run directory.

    Run it again with the same arguments to resume after an interruption. Under torchrun or
    the deepspeed launcher, every process runs this same command.
    """
    from tlc.config import validate_run
    from tlc.train import train_run

    cfg, out = _train_config(args)
    validate_run(cfg)
    last = train_run(cfg, out, progress=not args.no_progress)
    if last and int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"{cfg.run_id}: val_loss {last['val_loss']:.4f}  val_bpb {last['val_bpb']:.3f}  "
              f"val_acc {last['val_acc']:.3f}  -> {out}")
    return 0


# ----------------------------------------------------------------------------------------------
# tlc sweep and tlc demo


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", type=Path, metavar="SWEEP", help="sweep file, e.g. sweeps/tiny.yaml")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs/<sweep>/ goes (default runs)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db "
                   "(default: SQLite in the sweep's folder)")
    p.add_argument("--max-runs", type=int, help="stop this worker after training this many runs")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train every run of a sweep (shapes x seeds) that is not finished yet, each in its own process.

    Start the same command on several machines with one --storage URL to share the work.
    """
    from tlc.sweep import run_sweep, summary_table

    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs: must be at least 1, got {args.max_runs}")
    outcomes = run_sweep(args.sweep, args.runs_dir, args.storage, args.max_runs)
    from tlc.config import load_sweep

    sweep_dir = args.runs_dir / load_sweep(args.sweep).name
    print(summary_table(sweep_dir, outcomes))
    failed = [o.run_id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; logs in {sweep_dir}/<run>.log", file=sys.stderr)
        return 1
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs/tiny/ goes (default runs)")
    p.add_argument("--sweep", type=Path, default=SWEEPS_DIR / "tiny.yaml", help="sweep file (default sweeps/tiny.yaml)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the pipeline on the embedded default: the tiny sweep on the standard-library corpus.

    Interrupt it at any time; running it again resumes where it stopped.
    """
    if not args.sweep.exists():
        raise UserError(f"--sweep: {str(args.sweep)!r} not found; run from a clone of the tlc repository or pass --sweep")
    args.storage, args.max_runs = None, None
    return cmd_sweep(args)


# ----------------------------------------------------------------------------------------------
# Entry point

# name -> (add_arguments, run); a string names a module exposing add_arguments(parser) and run(args)
COMMANDS = {
    "train": (add_train_arguments, cmd_train),
    "sweep": (add_sweep_arguments, cmd_sweep),
    "fit": "tlc.fit",
    "plan": "tlc.plan",
    "report": "tlc.report",
    "demo": (add_demo_arguments, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlc", description="Train large, then compress: measure, fit and plan the model to ship."
    )
    from tlc import __version__

    parser.add_argument("--version", action="version", version=f"tlc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, entry in COMMANDS.items():
        if isinstance(entry, str):
            module = importlib.import_module(entry)
            add, run = module.add_arguments, module.run
        else:
            add, run = entry
        doc = (run.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"tlc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tlc {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
