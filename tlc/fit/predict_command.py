"""``tlc predict FIT.json --params N --tokens D``: one point's predicted loss with its interval."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

import scaling
from scaling.bootstrap import percentile_interval
from scaling.sparse_law import FRANTAR
from tlc.errors import UserError
from tlc.units import parse_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc predict``."""
    parser.add_argument("fit", type=Path, metavar="FIT.json", help="a fit.json written by tlc fit")
    parser.add_argument("--params", required=True, metavar="N", help="model size as the fit counts N, e.g. 7e9 or 70B "
                        "(with --sparsity: the dense model's count, of which 1 - S are non-zero)")
    parser.add_argument("--tokens", required=True, metavar="D", help="training tokens, e.g. 1.4e12 or 300B")
    parser.add_argument("--sparsity", type=float, default=0.0, help="fraction of weights that are zero (default 0)")
    parser.add_argument("--method", help="pruning method of the fit's compression models (default: the only one); "
                        "not needed where the fit has a sparse law (a table with rows trained sparse)")
    parser.add_argument("--bits", type=int, default=32, choices=(8, 16, 32), help="weight bits (default 32)")
    parser.add_argument("--law", help="which L(N, D) law of the fit (default: the one the fit prefers)")
    parser.add_argument("--json", action="store_true", help="print the prediction as JSON")


def predict(fit: dict, params: float, tokens: float, sparsity: float = 0.0, bits: int = 32,
            law: str | None = None, method: str | None = None) -> dict:
    """The predicted loss, its interval and where it came from, for one (N, D, sparsity, bits) point."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity: must be in [0, 1), got {sparsity}")
    try:
        fitted = scaling.load_fit(fit)
    except ValueError as error:
        raise UserError(f"FIT.json: {error}") from None
    sparse = fit.get("sparse_law") or {}
    if sparsity > 0 and sparse.get("parameters") and bits == 32 and law is None:
        chosen = scaling.FittedLaw.from_json(FRANTAR, sparse)
        point, draws = chosen.log_loss(density=1 - sparsity, N=params * (1 - sparsity), D=tokens)
        mean = math.exp(point)
        low, high = percentile_interval(np.exp(draws), fitted.confidence) if len(draws) else (math.nan, math.nan)
        name = FRANTAR.name
    else:
        name = law or fitted.preferred_law or next(iter(fitted.laws))
        if name not in fitted.laws:
            raise UserError(f"--law: {name!r} is not usable in this fit; valid: {', '.join(sorted(fitted.laws))}")
        if sparsity > 0 and method is None:
            if len(fitted.methods) != 1:
                raise UserError(f"--method: the fit models {len(fitted.methods)} pruning methods; name one of "
                                f"{', '.join(fitted.methods) or 'none (this fit has no compression models)'}")
            method = fitted.methods[0]
        try:
            mean, low, high = fitted.predict_loss(params, tokens, method, sparsity, bits == 8, law=name)
        except ValueError as error:
            raise UserError(f"--{str(error).split(':')[0]}: {str(error).split(': ', 1)[-1]}") from None
    compute = 6.0 * params * (1.0 - sparsity) * tokens  # a sparse model computes with its non-zero weights
    largest = max((r["final_train_flops"] for r in fit.get("runs") or []), default=math.nan)
    return scaling.sweep_fit.json_clean({
        "law": name, "params": params, "tokens": tokens, "sparsity": sparsity, "bits": bits, "loss": mean,
        "low": low, "high": high, "confidence": fitted.confidence,
        "compute": compute, "extrapolation": compute / largest if largest > 0 else None})


def run(args: argparse.Namespace) -> int:
    """Predict the loss of one model (N parameters, D tokens, optionally sparse or 8-bit) from a fit.json.

    Uses the law the fit prefers (or --law), Frantar et al.'s sparse law for --sparsity where the fit
    has one, and the fit's compression models otherwise. Prints the loss with its interval and how far
    past the fit's largest run (in training FLOPs, 6ND) the point lies.
    """
    try:
        fit = json.loads(Path(args.fit).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8, or a path with a NUL byte
        raise UserError(f"FIT.json: cannot read {args.fit} ({error}); give the fit.json tlc fit wrote") from None
    if not isinstance(fit, dict):
        raise UserError(f"FIT.json: {args.fit} does not hold a JSON object")
    result = predict(fit, parse_count(args.params, "--params"), parse_count(args.tokens, "--tokens"),
                     args.sparsity, args.bits, args.law, args.method)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    interval = "" if result["low"] is None else (f" [{result['low']:.4f}, {result['high']:.4f}] "
                                                 f"({result['confidence']:.0%} interval)")
    print(f"loss {result['loss']:.4f}{interval} by the {result['law']} law at N = {result['params']:.4g}, "
          f"D = {result['tokens']:.4g}" + (f", sparsity {result['sparsity']:g}" if result["sparsity"] else "")
          + (f", {result['bits']}-bit" if result["bits"] != 32 else "")
          + (f"; {result['extrapolation']:.3g}x the compute of the fit's largest run"
             if result["extrapolation"] else ""))
    return 0
