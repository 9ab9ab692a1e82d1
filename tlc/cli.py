"""The ``tlc`` command: one subcommand per stage, one module per subcommand.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; the docstring of
``run`` is the command's ``--help``. Only the module of the command being run is imported, so
``tlc --help``, ``tlc plan`` and input errors answer without loading torch. A
:class:`~tlc.errors.UserError` ends the command with one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys

from tlc.errors import UserError

# name -> (module, one-line summary); a test checks each summary against the module's run() docstring
COMMANDS = {
    "train": ("tlc.train.command", "Train one model with DeepSpeed, writing metrics.jsonl, checkpoints and model/ into its run directory."),
    "sweep": ("tlc.train.sweep_command", "Train every run of a sweep (shapes x seeds) that is not finished yet, each in its own process."),
    "compress": ("tlc.compress.command", "Prune and 8-bit quantize every trained model of a sweep; evaluate and measure each variant."),
    "fit": ("tlc.fit.command", "Fit scaling laws to a sweep (and its compressed variants) and write RUNS_DIR/fit.json."),
    "predict": ("tlc.fit.predict_command", "Predict the loss of one model (N parameters, D tokens, optionally sparse or 8-bit) from a fit.json."),
    "plan": ("tlc.plan.command", "Recommend the model to train and how to compress it, for a training budget and an inference budget."),
    "validate": ("tlc.validate.command", "Train and compress what plan.json says, measure it, and say whether the plan came true."),
    "report": ("tlc.report.command", "Write RUNS_DIR/report/: index.html (opens offline), report.md and the figures as PNG."),
    "export": ("tlc.export.command", "Export a compressed variant as a transformers or compressed-tensors folder, or as ONNX models (fp32 and int8)."),
    "generate": ("tlc.generate.command", "Continue a prompt with any variant of a run: greedy at temperature 0, else sampled with --seed."),
    "demo": ("tlc.demo", "Run the whole pipeline on the tiny sweep and the standard-library corpus, then print the plan."),
}


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors escape control characters, so an argument holding \\r stays on one line."""

    def error(self, message):
        super().error("".join(c if c.isprintable() else ascii(c)[1:-1] for c in message))


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the ``selected`` command's module is imported to add its arguments."""
    from tlc import __version__

    parser = _Parser(
        prog="tlc", description="Train large, then compress: measure, fit and plan the model to ship."
    )
    parser.add_argument("--version", action="version", version=f"tlc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in COMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(module_name)
        doc = inspect.cleandoc(module.run.__doc__ or "")
        p = sub.add_parser(name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected if selected in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        # control characters from user input (a path holding \r or \n) are escaped: the error stays one line
        message = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(e))
        print(f"tlc {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tlc {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
