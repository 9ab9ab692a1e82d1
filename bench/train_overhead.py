"""DeepSpeed engine against a plain PyTorch loop: tokens/s for the same model, optimizer, batch and dtype.

Also the FLOP rate the engine reaches on the largest tiny-sweep shape, as a fraction of this
machine's matmul peak measured in the same run. Timed rounds alternate between the two loops
so that a noisy neighbour slows both alike.

    python bench/train_overhead.py              # both precisions, largest tiny shape
    python bench/train_overhead.py --quick      # fewer steps
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tlc.config import load_sweep
from tlc.shapes import flops_per_token
from tlc.train.model import build_model
from tlc.train.engine import init_distributed
from tlc.train.evaluation import lm_loss

REPO = Path(__file__).resolve().parents[1]


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul in ``dtype``: the machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def make_batch(shape, micro_batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape.vocab_size, (micro_batch, shape.context + 1), generator=g)


def plain_loop(shape, precision: str, micro_batch: int):
    model = build_model(shape, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(batch):
        with autocast:
            loss, _ = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def deepspeed_loop(deepspeed, shape, precision: str, micro_batch: int):
    model = build_model(shape, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    config = {
        "train_batch_size": micro_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

    def step(batch):
        loss, _ = lm_loss(engine, batch)
        engine.backward(loss)
        engine.step()

    return step


def timed(step, batches, rounds: int) -> float:
    start = time.perf_counter()
    for i in range(rounds):
        step(batches[i % len(batches)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    deepspeed, _, _ = init_distributed()
    shape = max(load_sweep(REPO / "sweeps" / "tiny.yaml").shapes, key=flops_per_token)
    steps_per_round, rounds = (4, 3) if args.quick else (10, 5)
    tokens_per_step = args.micro_batch * shape.context
    batches = [make_batch(shape, args.micro_batch, s) for s in range(4)]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}

    print(f"shape {shape.run_id(0)}: width {shape.width}, depth {shape.depth}, context {shape.context}, "
          f"vocab {shape.vocab_size}, micro-batch {args.micro_batch}, {torch.get_num_threads()} threads")
    print(f"matmul peak (2048^2): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"{'precision':<10} {'plain tok/s':>12} {'deepspeed tok/s':>16} {'ratio':>6} {'DS GFLOP/s':>11} {'of peak':>8}")
    for precision in ("fp32", "bf16"):
        loops = {"plain": plain_loop(shape, precision, args.micro_batch),
                 "deepspeed": deepspeed_loop(deepspeed, shape, precision, args.micro_batch)}
        for step in loops.values():  # warm-up: allocator, kernels, optimizer state
            timed(step, batches, 3)
        seconds = {name: 0.0 for name in loops}
        for _ in range(rounds):  # alternate, so both loops see the same machine
            for name, step in loops.items():
                seconds[name] += timed(step, batches, steps_per_round)
        rate = {name: rounds * steps_per_round * tokens_per_step / s for name, s in seconds.items()}
        flops = rate["deepspeed"] * flops_per_token(shape)
        print(f"{precision:<10} {rate['plain']:>12.0f} {rate['deepspeed']:>16.0f} "
              f"{rate['deepspeed'] / rate['plain']:>6.2f} {flops / 1e9:>11.1f} {flops / peaks[precision]:>8.0%}")


if __name__ == "__main__":
    main()
