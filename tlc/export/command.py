"""``tlc export RUN --variant NAME --to DIR --format hf|onnx|compressed-tensors``: flags, checks, printed summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from tlc.export.write import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc export``."""
    parser.add_argument("run", type=Path, metavar="RUN", help="one compressed run, e.g. runs/tiny/w64-d2-s0")
    parser.add_argument("--variant", required=True,
                        help="a variant tlc compress made: dense, none-int8, magnitude-s50, block32-s90-int8, ...")
    parser.add_argument("--to", type=Path, required=True, metavar="DIR", help="folder to create")
    parser.add_argument("--format", default="hf", metavar="|".join(FORMATS),
                        help="hf: a transformers folder (from_pretrained); onnx: model.onnx and model.int8.onnx "
                             "for ONNX Runtime; compressed-tensors: 8-bit, gptq and rtn weights packed as "
                             "compressed-tensors' pack-quantized (transformers loads it; vLLM untested; GPT-2 as OPT) "
                             "(default %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")


def run(args: argparse.Namespace) -> int:
    """Export a compressed variant as a transformers or compressed-tensors folder, or as ONNX models (fp32 and int8).

    hf: AutoModelForCausalLM.from_pretrained(DIR) (AutoModelForMaskedLM for an mlm run) and
    AutoTokenizer.from_pretrained(DIR) load it without tlc; 8-bit variants are in bitsandbytes' int8 format (needs bitsandbytes and accelerate).
    onnx: model.onnx (fp32) and model.int8.onnx (ONNX Runtime dynamic quantization), with the
    tokenizer.
    compressed-tensors: from_pretrained(DIR) as for hf, with compressed-tensors installed; int8, gptq and
    rtn codes packed with their scales (weight-only), pruned weights dense with their zeros, GPT-2 as the same network
    in OPT's layout. DIR is written whole or not at all; DIR/tlc_export.json records what it holds.
    """
    from tlc.export.source import find_variant
    from tlc.export.write import check_format, check_not_in_run, check_target, export_variant

    check_format(args.format)
    out = check_target(args.to, args.force)
    variant = find_variant(args.run, args.variant)
    check_not_in_run(out, variant.run_dir)
    record = export_variant(variant, out, args.format)
    files = sorted(p.name for p in out.iterdir())
    print(f"{variant.run_dir.name} {variant.name} -> {out} ({args.format}): {', '.join(files)}")
    if record.get("zero_filled_heads"):
        print("GPT-2 heads removed by structured pruning are zero-filled (transformers 5 loads no per-layer head count)")
    if record.get("source_architecture") == "gpt2":
        print("GPT-2 is written as OPT: the same network with nn.Linear layers (compressed-tensors skips Conv1D)")
    if record.get("needs"):
        print(f"loading it needs: {', '.join(record['needs'])}")
    return 0
