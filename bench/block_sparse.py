"""Block-sparse linear: cuda_ext's kernel against dense F.linear (cuBLAS on CUDA) and torch's native BSR.

For each weight shape, block density and token count, the three are timed side by side in one
run (interleaved rounds, best of each), and printed as ratios:
  ext/ideal     extension time ÷ (density × dense time): 1.0 means sparsity turned fully into speed
  vs dense      dense time ÷ extension time
  vs torch-bsr  torch BSR time ÷ extension time  (W.to_sparse_bsr((bs, bs)) then F.linear)

  python bench/block_sparse.py            # full grid (a few minutes on 2 cores)
  python bench/block_sparse.py --quick    # the two headline shapes only
  python bench/block_sparse.py --device cuda --dtype bfloat16 --shapes 8192x8192 --tokens 8192 --densities 0.1 0.5
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import torch
import torch.nn.functional as F

import cuda_ext

SQUARE = [(1024, 1024), (2048, 2048), (4096, 4096)]
FFN = [(4 * w, w) for w in (64, 128, 256)] + [(w, 4 * w) for w in (64, 128, 256)]  # tiny-sweep FFN layers


def block_pruned_weight(out_features: int, in_features: int, block_size: int, density: float, seed: int = 0):
    """Random [out, in] weight with round(density × blocks) blocks kept at random positions."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = out_features // block_size, in_features // block_size
    keep = torch.zeros(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: max(1, round(density * rows * cols))]] = True
    mask = keep.reshape(rows, cols).repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return torch.randn(out_features, in_features, generator=g) * mask


def best_times(functions, min_seconds: float, clock=time.perf_counter, max_rounds: int = 200,
               sync=lambda: None) -> list[float]:
    """Best time of each function over interleaved rounds (robust to other load on the machine).

    ``sync`` waits for queued device work (torch.cuda.synchronize on CUDA) before and after each call.
    """
    for f in functions:
        f()
    best = [float("inf")] * len(functions)
    start, rounds = time.perf_counter(), 0
    while rounds < 3 or (time.perf_counter() - start < min_seconds and rounds < max_rounds):
        for i, f in enumerate(functions):
            sync()
            t = clock()
            f()
            sync()
            best[i] = min(best[i], clock() - t)
        rounds += 1
    return best


def torch_bsr_supports(x: torch.Tensor, weight_bsr: torch.Tensor) -> bool:
    """torch's BSR matmul lacks some dtypes on CPU (bf16: addmm_out_sparse_csr_impl_mkl); those print nan."""
    try:
        F.linear(x, weight_bsr)
        return True
    except (NotImplementedError, RuntimeError):
        return False


def run(shapes, densities, token_counts, dtype, min_seconds, clock, device=torch.device("cpu")):
    print(f"{'weight':>11} {'bs':>3} {'dens':>5} {'tok':>4} | {'dense ms':>9} {'ext ms':>8} {'bsr ms':>8} | "
          f"{'ext/ideal':>9} {'vs dense':>8} {'vs torch-bsr':>12}")
    rows = []
    for out_features, in_features in shapes:
        block_size = 32 if out_features % 32 == 0 and in_features % 32 == 0 else 16
        for density in densities:
            weight = block_pruned_weight(out_features, in_features, block_size, density).to(device, dtype)
            layer = cuda_ext.BlockSparseLinear.from_dense(weight, None, block_size, dense_above=1.0)
            real_density = layer.density
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse BSR support is in beta"
                weight_bsr = weight.to_sparse_bsr((block_size, block_size))
            for tokens in token_counts:
                x = torch.randn(tokens, in_features).to(device, dtype)
                values, crow, col = layer.values, layer.crow_indices, layer.col_indices
                candidates = [lambda: F.linear(x, weight), lambda: cuda_ext.bsr_linear(x, values, crow, col)]
                if torch_bsr_supports(x, weight_bsr):
                    candidates.append(lambda: F.linear(x, weight_bsr))
                with torch.no_grad():
                    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
                    times = best_times(candidates, min_seconds, clock, sync=sync)
                dense, ext = times[:2]
                bsr = times[2] if len(times) > 2 else float("nan")
                ideal = real_density * dense
                rows.append((out_features, in_features, block_size, real_density, tokens, dense, ext, bsr))
                print(f"{out_features:>5}x{in_features:<5} {block_size:>3} {real_density:>5.2f} {tokens:>4} | "
                      f"{dense * 1e3:>9.3f} {ext * 1e3:>8.3f} {bsr * 1e3:>8.3f} | "
                      f"{ext / ideal:>9.2f} {dense / ext:>8.2f} {bsr / ext:>12.2f}", flush=True)
    return rows


def main() -> None:
    """Time the block-sparse linear against dense and torch BSR; print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2048² and 4096² at 10%% and 50%%, 256 tokens")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--densities", type=float, nargs="+", default=None, help="block densities, e.g. 0.05 0.1")
    parser.add_argument("--shapes", nargs="+", default=None, help="weights as OUTxIN, e.g. 2048x2048 1024x256")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts, e.g. 1 32 256")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="timing budget per measurement")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="thread: CPU time of the calling thread, immune to preemption by other processes "
                             "on a shared machine; needs --threads 1")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread only: add --threads 1")
    if args.device == "cuda" and args.clock == "thread":
        parser.error("--clock thread times the CPU thread, not the GPU: use --clock wall with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not cuda_ext.available():
        raise SystemExit(f"cuda_ext kernels unavailable: {cuda_ext.ops._build.build_error()}")
    shapes = [(2048, 2048), (4096, 4096)] if args.quick else SQUARE + FFN
    if args.shapes:
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes]
    densities = args.densities or ([0.1, 0.5] if args.quick else [0.05, 0.1, 0.25, 0.5])
    tokens = args.tokens or ([256] if args.quick else [1, 32, 256])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    device = torch.device(args.device)
    where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device.type == "cuda" else \
        f"{os.cpu_count()} cpus, {torch.get_num_threads()} threads"
    print(f"# {cpu}, {where}, torch {torch.__version__}, dtype {args.dtype}, {args.clock} clock", flush=True)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    run(shapes, densities, tokens, getattr(torch, args.dtype), args.min_seconds, clock, device)


if __name__ == "__main__":
    main()
