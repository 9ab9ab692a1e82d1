"""int8 against fp32 forward latency, side by side in one run, as ratios.

Two workloads:
  1. the largest shape of sweeps/tiny.yaml as a whole GPT-2 model (random weights: latency does
     not depend on them), a forward pass over a fixed prompt at batch 1 and batch 32;
  2. a stack of 1024-wide transformer-MLP matrices (1024 -> 4096 -> 1024, four layers) on 32 x 32 tokens.

Every int8 path that runs on this device is timed (torch.ao dynamic quantization with fbgemm,
bitsandbytes Linear8bitLt; on CUDA bitsandbytes only). Rounds alternate between fp32 and each
int8 path so that load from other processes hits all of them alike; each figure is the median
over rounds of the median of the repeats within a round.

    .venv/bin/python bench/int8.py [--rounds 5] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlc.compress.evaluate import median_seconds  # noqa: E402
from tlc.config import load_sweep  # noqa: E402
from tlc.train.model import build_model  # noqa: E402
from tlc.compress.quantize import INT8_PATHS, apply_int8, int8_linear, int8_weights, quantize_rows  # noqa: E402


def largest_tiny_model():
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "tiny.yaml")
    shape = max(sweep.shapes, key=lambda s: s.width * s.width * s.depth)
    return shape, build_model(shape, seed=0).eval()


def mlp_stack(width: int = 1024, layers: int = 4) -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    mats = []
    for i in range(layers):
        o, n = (4 * width, width) if i % 2 == 0 else (width, 4 * width)
        lin = nn.Linear(n, o)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, n, generator=g) / n**0.5)
        mats.append(lin)
    return nn.Sequential(*mats).eval()


def quantized_stack(stack: nn.Sequential, path: str) -> nn.Sequential:
    return nn.Sequential(*[int8_linear(*quantize_rows(m.weight), m.bias, path) for m in stack]).eval()


def paths_for(device: torch.device) -> tuple[str, ...]:
    return ("bitsandbytes",) if device.type == "cuda" else INT8_PATHS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    shape, model = largest_tiny_model()
    model = model.to(device)
    weights = int8_weights(model)
    models = {"fp32": model, **{p: apply_int8(copy.deepcopy(model), weights, p) for p in paths_for(device)}}
    prompt = min(32, shape.context)
    g = torch.Generator().manual_seed(1)
    inputs = {b: torch.randint(0, shape.vocab_size, (b, prompt), generator=g).to(device) for b in (1, 32)}
    stack = mlp_stack().to(device)
    stacks = {"fp32": stack, **{p: quantized_stack(stack, p) for p in paths_for(device)}}
    x = torch.randn(32 * 32, 1024, generator=g).to(device)

    workloads = {f"tiny {shape.run_id(0)} b{b}": (models, lambda m, b=b: m(input_ids=inputs[b])) for b in (1, 32)}
    workloads["mlp stack 1024 (1024 tokens)"] = (stacks, lambda m: m(x))
    results: dict[str, dict[str, list[float]]] = {
        w: {k: [] for k in variants} for w, (variants, _) in workloads.items()}
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.repeats} repeats, median", flush=True)
    for r in range(args.rounds):
        for name, (variants, call) in workloads.items():
            for key, module in variants.items():  # alternate fp32 and int8 inside every round
                results[name][key].append(median_seconds(lambda: call(module), cuda=False, repeats=args.repeats,
                                                          warmup=1))
            measured = ", ".join(f"{key} {1e3 * times[-1]:.3f} ms" for key, times in results[name].items())
            print(f"round {r + 1}/{args.rounds} {name}: {measured}", flush=True)  # each figure as it is measured

    columns = "".join(f"{p + ' ms':>20}{'fp32/' + p:>22}" for p in paths_for(device))
    print(f"{'workload':<32}{'fp32 ms':>10}" + columns)
    for name, per_variant in results.items():
        fp32 = statistics.median(per_variant["fp32"])
        line = f"{name:<32}{fp32 * 1e3:>10.3f}"
        for p in paths_for(device):
            t = statistics.median(per_variant[p])
            line += f"{t * 1e3:>20.3f}{fp32 / t:>21.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
