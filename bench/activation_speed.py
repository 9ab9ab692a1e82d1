"""GPT-2's GELU as tlc builds it (torch's fused tanh GELU) against transformers' "gelu_new", per demo shape.

Both compute GELU's tanh approximation: "gelu_new" as five elementwise ops, each with its own backward,
"gelu_pytorch_tanh" as one fused op. For every shape of the sweep (default: the demo's sweeps/tiny.yaml) the
same model is built both ways from one seed, and a training step (forward, backward, AdamW) on one micro-batch
is timed in thread CPU time, the two alternating round by round so that a machine's drift hits both alike.
Prints the median step of each and their ratio, and the largest difference of the two models' logits.

    OMP_NUM_THREADS=1 python bench/activation_speed.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    import torch
    from transformers import GPT2LMHeadModel

    import cuda_ext
    from tlc.architecture import model_config
    from tlc.config import load_sweep

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sweep = load_sweep(args.sweep)
    print(f"# {args.sweep.name}; {cpu_model()}, cpu_kernel_isa "
          f"{cuda_ext.cpu_kernel_isa()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); thread CPU "
          f"time per step, median of {args.rounds} interleaved rounds x {args.steps} steps; load {os.getloadavg()[0]:.1f}")
    print("| shape | micro-batch | gelu_new ms | gelu_pytorch_tanh ms | speed-up | max logit difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    seen = set()
    for run in sweep.runs():
        shape, train = run.shape, run.train
        if shape.width in seen:
            continue
        seen.add(shape.width)
        models = {}
        for activation in ("gelu_new", "gelu_pytorch_tanh"):
            config = model_config(shape)
            config.activation_function = activation
            torch.manual_seed(0)
            model = GPT2LMHeadModel(config)
            models[activation] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
        batch = torch.randint(0, shape.vocab_size, (train.micro_batch, shape.context),
                              generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = [m(batch).logits for m, _ in models.values()]
        difference = (logits[0] - logits[1]).abs().max().item()
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
        new, fused = (statistics.median(times[name]) for name in models)
        print(f"| w{shape.width}-d{shape.depth} | {train.micro_batch} | {new:.2f} | {fused:.2f} | {new / fused:.3f}x "
              f"| {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
