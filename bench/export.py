"""Latency per token of one model in four runtimes, dense and pruned, side by side in one run.

Model: the largest shape of sweeps/tiny.yaml (GPT-2), random weights (latency does not depend on
their values), dense and pruned to 50% and 90% two ways: magnitude (unstructured: zeros kept in
dense matrices, as every runtime here computes them) and structured (heads and FFN neurons
removed: smaller matrices). Runtimes, each on the same fixed 32-token prompt at batch 1 and 32:

  torch fp32      the transformers model as tlc evaluates it
  torch int8      tlc's int8 runtime on this device (tlc.compress.quantize.choose_int8_path)
  ORT fp32        the variant exported by torch's ONNX exporter (tlc.export.to_onnx), ONNX Runtime CPU
  ORT int8        ONNX Runtime's dynamic quantization of that graph (int8 weights per channel)

ONNX Runtime runs on as many threads as torch. Rounds alternate over every (variant, runtime,
batch), so load from other processes hits all alike; each figure is the median over rounds of the
median of the repeats in a round. Ratios are against torch fp32 of the dense model at the same batch.

    .venv/bin/python bench/export.py [--rounds 5] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlc.compress.evaluate import median_seconds  # noqa: E402
from tlc.compress.prune import PATTERNS, apply_masks  # noqa: E402
from tlc.compress.quantize import apply_int8, choose_int8_path, int8_weights  # noqa: E402
from tlc.compress.structured import shrink, structured_plan  # noqa: E402
from tlc.config import load_sweep  # noqa: E402
from tlc.export.to_onnx import FP32, INT8, export_fp32, ort_logits, quantize_int8, session  # noqa: E402
from tlc.train.model import build_model  # noqa: E402

RUNTIMES = ("torch fp32", "torch int8", "ORT fp32", "ORT int8")


def variants(model, shape, calibration) -> dict[str, torch.nn.Module]:
    """dense, magnitude 50/90% and structured 50/90% of ``model`` (fp32)."""
    out = {"dense": model}
    for sparsity in (0.5, 0.9):
        pruned = copy.deepcopy(model)
        apply_masks(pruned, PATTERNS["magnitude"](pruned, sparsity, calibration, block_size=32))
        out[f"magnitude {sparsity:.0%}"] = pruned.eval()
        shrunk = copy.deepcopy(model)
        out[f"structured {sparsity:.0%}"] = shrink(shrunk, structured_plan(shrunk, sparsity, calibration)).eval()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and ONNX Runtime alike (default: torch's); 1 steadies a shared machine")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "tiny.yaml")
    shape = max(sweep.shapes, key=lambda s: s.width * s.width * s.depth)
    model = build_model(shape, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    calibration = torch.randint(0, shape.vocab_size, (8, shape.context), generator=g)
    prompt = {b: torch.randint(0, shape.vocab_size, (b, 32), generator=g) for b in (1, 32)}
    int8_path, _ = choose_int8_path(torch.device("cpu"), shape.width)

    folder = Path(tempfile.mkdtemp(prefix="tlc-bench-export-"))
    calls = {}  # (variant, runtime) -> fn(batch)
    sizes = {}
    for name, fp32 in variants(model, shape, calibration).items():
        int8 = apply_int8(copy.deepcopy(fp32), int8_weights(fp32), int8_path)
        stem = folder / name.replace(" ", "-").replace("%", "")
        stem.mkdir()
        export_fp32(fp32, stem / FP32, shape.context)
        quantize_int8(stem / FP32, stem / INT8)
        sizes[name] = ((stem / FP32).stat().st_size, (stem / INT8).stat().st_size)
        ort32, ort8 = session(stem / FP32), session(stem / INT8)
        with torch.inference_mode():
            expected = fp32(input_ids=prompt[1]).logits.numpy()
        drift = np.abs(ort_logits(ort32, prompt[1].numpy()) - expected).max() / np.abs(expected).max()
        assert drift < 1e-4, (name, drift)  # the graph computes the model

        def torch_call(m):
            def call(b):
                with torch.inference_mode():
                    m(input_ids=prompt[b])
            return call

        def ort_call(s):
            return lambda b: ort_logits(s, prompt[b].numpy())

        calls.update({(name, "torch fp32"): torch_call(fp32), (name, "torch int8"): torch_call(int8),
                      (name, "ORT fp32"): ort_call(ort32), (name, "ORT int8"): ort_call(ort8)})

    results: dict[tuple, list[float]] = {(v, r, b): [] for (v, r) in calls for b in (1, 32)}
    for _ in range(args.rounds):
        for (variant, runtime, batch), times in results.items():
            run = calls[(variant, runtime)]
            times.append(median_seconds(lambda: run(batch), cuda=False, repeats=args.repeats, warmup=1))

    print(f"model: tiny {shape.run_id(0)} (GPT-2, vocabulary {shape.vocab_size}), prompt 32 tokens; "
          f"{torch.get_num_threads()} threads; torch int8 path {int8_path}; {args.rounds} rounds x {args.repeats} "
          "repeats, median")
    for batch in (1, 32):
        base = statistics.median(results[("dense", "torch fp32", batch)]) / (batch * 32)
        print(f"\nbatch {batch}: ms per token (x = speed-up against dense torch fp32 at this batch)")
        print(f"{'variant':<16}" + "".join(f"{r:>22}" for r in RUNTIMES))
        for variant in dict.fromkeys(v for v, _ in calls):
            line = f"{variant:<16}"
            for runtime in RUNTIMES:
                per_token = statistics.median(results[(variant, runtime, batch)]) / (batch * 32)
                line += f"{per_token * 1e3:>14.4f} ({base / per_token:4.2f}x)"
            print(line)
    print("\nONNX file bytes (fp32, int8): " + ", ".join(f"{v} {a:,}/{b:,}" for v, (a, b) in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
