"""A training step of each demo shape as tlc builds it, against the step before its two speed choices.

tlc's GPT-2 computes GELU's tanh approximation as torch's one fused op ("gelu_pytorch_tanh") rather than as
transformers' "gelu_new" (the same formula in five elementwise ops, each with its own backward), and its AdamW
is torch's fused kernel rather than the default foreach ops. For every shape of the sweep (default: the demo's
sweeps/tiny.yaml) the same model is built three ways from one seed: as before (gelu_new, foreach AdamW), with
the fused GELU, and with both; a training step (forward, backward, tlc's AdamW: tlc.train.engine.adamw) on one
micro-batch is timed in thread CPU time, the three alternating round by round so that a machine's drift hits
them alike. Prints the median step of each, the ratios, and how far the parameters drift apart.

    OMP_NUM_THREADS=1 python bench/step_speed.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"before": ("gelu_new", False), "fused GELU": ("gelu_pytorch_tanh", False),
            "fused GELU + AdamW": ("gelu_pytorch_tanh", True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    import torch
    from transformers import GPT2LMHeadModel

    import cuda_ext
    from cuda_ext.crossover import cpu_model
    from tlc.architecture import model_config
    from tlc.config import load_sweep
    from tlc.train.engine import adamw

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sweep = load_sweep(args.sweep)
    print(f"# {args.sweep.name}; {cpu_model()}, cpu_kernel_isa {cuda_ext.cpu_kernel_isa()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); thread CPU time per step, median of {args.rounds} interleaved rounds x "
          f"{args.steps} steps; load {os.getloadavg()[0]:.1f}")
    print("| shape | micro-batch | " + " | ".join(f"{name} ms" for name in VARIANTS) + " | speed-up, GELU | speed-up, both "
          "| largest parameter difference after the steps |")
    print("| --- " * (len(VARIANTS) + 5) + "|")
    seen = set()
    for run in sweep.runs():
        shape, train = run.shape, run.train
        if shape.width in seen:
            continue
        seen.add(shape.width)
        models = {}
        for name, (activation, fused) in VARIANTS.items():
            config = model_config(shape)
            config.activation_function = activation
            torch.manual_seed(0)
            model = GPT2LMHeadModel(config)
            models[name] = (model, adamw(model, train, fused=fused))
        batch = torch.randint(0, shape.vocab_size, (train.micro_batch, shape.context),
                              generator=torch.Generator().manual_seed(0))
        times = {name: [] for name in models}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for name, (model, optimizer) in models.items():
                started = time.thread_time()
                for _ in range(args.steps):
                    model(batch, labels=batch).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                if round_:
                    times[name].append((time.thread_time() - started) / args.steps * 1e3)
        median = [statistics.median(times[name]) for name in models]
        weights = [torch.cat([p.detach().ravel() for p in model.parameters()]) for model, _ in models.values()]
        drift = max((w - weights[0]).abs().max().item() for w in weights[1:])
        print(f"| w{shape.width}-d{shape.depth} | {train.micro_batch} | " + " | ".join(f"{m:.2f}" for m in median)
              + f" | {median[0] / median[1]:.3f}x | {median[0] / median[2]:.3f}x | {drift:.1e} |", flush=True)


if __name__ == "__main__":
    main()
