"""DeepSpeed engine against a plain PyTorch loop: tokens/s for the same model, optimizer, batch and dtype.

Also the FLOP rate the engine reaches on the largest tiny-sweep shape, as a fraction of this
machine's matmul peak measured in the same run. Timed rounds alternate between the two loops
so that a noisy neighbour slows both alike. Every figure is printed as soon as it is measured.

Precisions: on CUDA both; on a CPU fp32, and bf16 only where the CPU has bf16 arithmetic
(AVX512_BF16 or AMX). Elsewhere torch emulates bf16 and a round takes many minutes, so it is
skipped with a line saying so (``--precisions fp32 bf16`` forces it). A round is sized from
the warm-up to last about ``--round-seconds``, so a slow machine shortens the run instead of
going silent.

    python bench/train_overhead.py              # largest tiny shape, on CUDA if present
    python bench/train_overhead.py --quick      # fewer, shorter rounds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tlc.config import load_sweep
from tlc.shapes import flops_per_token
from tlc.train.engine import init_distributed
from tlc.train.evaluation import lm_loss
from tlc.train.model import build_model
from tlc.train.precision import native_bf16_cpu

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul in ``dtype``: the machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def make_batch(shape, micro_batch: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape.vocab_size, (micro_batch, shape.context + 1), generator=g).to(device)


def plain_loop(shape, precision: str, device: torch.device):
    model = build_model(shape, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def deepspeed_loop(deepspeed, shape, precision: str, micro_batch: int, device: torch.device):
    model = build_model(shape, seed=0).to(device)
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


def timed(step, batches, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    synchronize(device)
    return time.perf_counter() - start


def default_precisions(device: torch.device) -> tuple[list[str], str | None]:
    """The precisions worth timing here, and why one was left out (None if none was)."""
    if device.type == "cuda" or native_bf16_cpu():
        return ["fp32", "bf16"], None
    return ["fp32"], ("bf16 skipped: this CPU has no AVX512_BF16 or AMX, so torch emulates bf16 and a round would "
                      "take many minutes (--precisions fp32 bf16 forces it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of about 1 s instead of 5 of about 4 s")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if present")
    parser.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), help="default: what this hardware runs")
    parser.add_argument("--round-seconds", type=float, help="target length of one timed round per loop")
    parser.add_argument("--rounds", type=int, help="timed rounds per precision")
    args = parser.parse_args()
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    deepspeed, _, _ = init_distributed()
    shape = max(load_sweep(REPO / "sweeps" / "tiny.yaml").shapes, key=flops_per_token)
    rounds = args.rounds or (3 if args.quick else 5)
    round_seconds = args.round_seconds or (1.0 if args.quick else 4.0)
    tokens_per_step = args.micro_batch * shape.context
    precisions, skipped = (args.precisions, None) if args.precisions else default_precisions(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"shape {shape.run_id(0)}: width {shape.width}, depth {shape.depth}, context {shape.context}, "
          f"vocab {shape.vocab_size}, micro-batch {args.micro_batch}; {where}; torch {torch.__version__}", flush=True)
    if skipped:
        print(skipped, flush=True)
    batches = [make_batch(shape, args.micro_batch, s, device) for s in range(4)]
    results = {}
    for precision in precisions:
        peak = matmul_peak(DTYPES[precision], device, 8192 if device.type == "cuda" else 2048)
        print(f"{precision}: matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
        loops = {"plain": plain_loop(shape, precision, device),
                 "deepspeed": deepspeed_loop(deepspeed, shape, precision, args.micro_batch, device)}
        warmup = {name: timed(step, batches, 3, device) / 3 for name, step in loops.items()}  # allocator, kernels
        steps = max(1, round(round_seconds / max(warmup.values())))
        print(f"{precision}: warm-up {1e3 * warmup['plain']:.1f} ms/step plain, {1e3 * warmup['deepspeed']:.1f} "
              f"deepspeed; timing {rounds} rounds of {steps} steps per loop", flush=True)
        seconds = {name: 0.0 for name in loops}
        for r in range(rounds):  # alternate, so both loops see the same machine
            for name, step in loops.items():
                seconds[name] += timed(step, batches, steps, device)
            done = (r + 1) * steps * tokens_per_step
            print(f"{precision}: round {r + 1}/{rounds}: plain {done / seconds['plain']:.0f} tok/s, "
                  f"deepspeed {done / seconds['deepspeed']:.0f} tok/s (so far)", flush=True)
        rate = {name: rounds * steps * tokens_per_step / s for name, s in seconds.items()}
        flops = rate["deepspeed"] * flops_per_token(shape)
        results[precision] = (rate["plain"], rate["deepspeed"], flops, peak)
        print(f"{precision}: deepspeed / plain {rate['deepspeed'] / rate['plain']:.3f}", flush=True)
        del loops

    print(f"\n{'precision':<10} {'plain tok/s':>12} {'deepspeed tok/s':>16} {'ratio':>6} {'DS GFLOP/s':>11} {'of peak':>8}")
    for precision, (plain, ds, flops, peak) in results.items():
        print(f"{precision:<10} {plain:>12.0f} {ds:>16.0f} {ds / plain:>6.3f} {flops / 1e9:>11.1f} {flops / peak:>8.1%}")


if __name__ == "__main__":
    main()
