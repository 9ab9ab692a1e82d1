"""Block-sparse linear on CPU: cuda_ext's kernels against dense torch and torch's own sparse ops.

Every candidate of a row is timed in the same run, interleaved (one call of each per repeat, so
load from other processes hits all of them alike), and the median of the repeats is printed as
soon as the row is measured. Ratios are speedups of the extension:
  ext/ideal     extension time ÷ (density × dense time): 1.0 means sparsity turned fully into speed
  vs dense      dense time ÷ extension time
  vs torch      torch's sparse time ÷ extension time, torch at its best: for the forward the faster of
                F.linear(x, W_bsr) and torch.matmul(W_bsr, x.T) (column "best" names it)

  --backward  also grad_input (dX = dY·W; dense dY @ W, torch matmul(Wᵀ_bsr, dY.T)) and grad_values
              (dW on kept blocks only; dense dY.T @ x; torch having no block-sparse sampled product, the
              faster of sampled_addmm on W's CSR pattern and a gather of each block's operands + bmm)
  --step      a training step of one layer: forward, backward and SGD update of BlockSparseLinear
              against nn.Linear with the same (block-pruned) weight
  --crossover instead of the table, the dense/blocks crossover density BlockSparseLinear.from_dense
              measures for each shape and token count (cuda_ext.measure_crossover; not cached)

  python bench/block_sparse.py --quick                          # 2048², 4096² at 10%, 50%, 256 tokens
  python bench/block_sparse.py --quick --threads 1 --clock thread
  TLC_BSR_ISA=avx2 python bench/block_sparse.py --quick         # force a kernel path (or --isa avx2)
  python bench/block_sparse.py                                  # full grid (many minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuda_ext  # noqa: E402
from cuda_ext.crossover import interleaved_medians  # noqa: E402

SQUARE = [(1024, 1024), (2048, 2048), (4096, 4096)]
FFN = [(4 * w, w) for w in (64, 128, 256)] + [(w, 4 * w) for w in (64, 128, 256)]  # tiny-sweep FFN layers
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile",
              "asimd", "sve", "sve2")


def block_pruned_weight(out_features: int, in_features: int, block_size: int, density: float, seed: int = 0):
    """Random [out, in] weight with round(density × blocks) blocks kept at random positions."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = out_features // block_size, in_features // block_size
    keep = torch.zeros(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: max(1, round(density * rows * cols))]] = True
    mask = keep.reshape(rows, cols).repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return torch.randn(out_features, in_features, generator=g) * mask


def median_times(functions, repeats: int, clock) -> list[float]:
    """Median seconds of each function over `repeats` interleaved rounds, after one warm-up call each."""
    # a CUDA call only queues its work: wait for the device around each timed call
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    return interleaved_medians(functions, repeats, clock, sync)


def runs(f) -> bool:
    """torch's sparse ops lack some layouts and dtypes on CPU; those columns print nan."""
    try:
        f()
        return True
    except (NotImplementedError, RuntimeError):
        return False


def timed_or_nan(candidates: dict, repeats: int, clock) -> dict:
    usable = {name: f for name, f in candidates.items() if runs(f)}
    measured = dict(zip(usable, median_times(list(usable.values()), repeats, clock)))
    return {name: measured.get(name, float("nan")) for name in candidates}


def sparse_layouts(weight: torch.Tensor, block_size: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse BSR/CSR support is in beta"
        return (weight.to_sparse_bsr((block_size, block_size)),
                weight.t().contiguous().to_sparse_bsr((block_size, block_size)), weight.to_sparse_csr())


def faster(a: float, b: float, names: tuple[str, str]) -> tuple[float, str]:
    if b != b or a <= b:
        return a, names[0]
    return b, names[1]


def forward_row(layer, weight, w_bsr, x, repeats, clock):
    values, crow, col = layer.values, layer.crow_indices, layer.col_indices
    with torch.no_grad():
        t = timed_or_nan({"dense": lambda: F.linear(x, weight),
                          "ext": lambda: cuda_ext.bsr_linear(x, values, crow, col),
                          "linear": lambda: F.linear(x, w_bsr),
                          "matmul": lambda: torch.matmul(w_bsr, x.T)}, repeats, clock)
    best, name = faster(t["linear"], t["matmul"], ("F.linear", "matmul"))
    return t["dense"], t["ext"], best, name


def gathered_grad_values(grad_y, x, crow, col, block_size):
    """dW on the kept blocks in plain torch: each block's grad_y and x columns gathered, one batched GEMM."""
    tokens = x.shape[0]
    rows = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())
    gy_blocks = grad_y.view(tokens, -1, block_size).index_select(1, rows)  # [tokens, nnz, bs]
    x_blocks = x.view(tokens, -1, block_size).index_select(1, col)
    return torch.bmm(gy_blocks.permute(1, 2, 0), x_blocks.transpose(0, 1))


def backward_rows(layer, weight, wt_bsr, w_csr, x, repeats, clock):
    values, crow, col = layer.values, layer.crow_indices, layer.col_indices
    grad_y = torch.randn(x.shape[0], weight.shape[0]).to(x.device, x.dtype)
    ops = torch.ops.tlc_bsr
    bs = layer.block_size
    with torch.no_grad():
        t = timed_or_nan({"dx_dense": lambda: grad_y @ weight,
                          "dx_ext": lambda: ops.bsr_linear_grad_input(grad_y, values, crow, col, weight.shape[1]),
                          "dx_torch": lambda: torch.matmul(wt_bsr, grad_y.T),
                          "dw_dense": lambda: grad_y.T @ x,
                          "dw_ext": lambda: ops.bsr_linear_grad_values(grad_y, x, crow, col, bs),
                          "dw_sampled": lambda: torch.sparse.sampled_addmm(w_csr, grad_y.T, x, beta=0.0),
                          "dw_bmm": lambda: gathered_grad_values(grad_y, x, crow, col, bs)},
                         repeats, clock)
    t["dw_torch"], t["dw_torch_op"] = faster(t["dw_sampled"], t["dw_bmm"], ("csr-smp", "bmm"))
    return t


def step_row(layer, weight, x, repeats, clock):
    dense = nn.Linear(weight.shape[1], weight.shape[0], bias=True).to(x.device, x.dtype)
    with torch.no_grad():
        dense.weight.copy_(weight)
    sparse = cuda_ext.BlockSparseLinear.from_dense(weight, dense.bias.detach(), layer.block_size, dense_above=1.0)
    x = x.detach().requires_grad_()
    grad_y = torch.randn(x.shape[0], weight.shape[0]).to(x.device, x.dtype)

    def step(module, optimizer):
        def run():
            optimizer.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(grad_y)
            optimizer.step()
        return run

    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-6) for m in (dense, sparse)]
    return median_times([step(dense, optimizers[0]), step(sparse, optimizers[1])], repeats, clock)


def print_row(label: str, op: str, density: float, dense: float, ext: float, torch_time: float, torch_op: str):
    torch_cols = f"{torch_time * 1e3:>9.3f} {torch_op:>9}" if torch_op else f"{'':>9} {'':>9}"
    vs_torch = f"{torch_time / ext:>8.2f}" if torch_op else f"{'':>8}"
    print(f"{label} {op:>4} | {dense * 1e3:>9.3f} {ext * 1e3:>8.3f} {torch_cols} | {ext / (density * dense):>9.2f} "
          f"{dense / ext:>8.2f} {vs_torch}", flush=True)


def run(shapes, densities, token_counts, dtype, repeats, clock, backward: bool, train_step: bool,
        device=torch.device("cpu")) -> None:
    print(f"{'weight':>11} {'bs':>3} {'dens':>5} {'tok':>4} {'op':>4} | {'dense ms':>9} {'ext ms':>8} {'torch ms':>9} "
          f"{'torch op':>9} | {'ext/ideal':>9} {'vs dense':>8} {'vs torch':>8}", flush=True)
    for out_features, in_features in shapes:
        block_size = 32 if out_features % 32 == 0 and in_features % 32 == 0 else 16
        for density in densities:
            weight = block_pruned_weight(out_features, in_features, block_size, density).to(device, dtype)
            layer = cuda_ext.BlockSparseLinear.from_dense(weight, None, block_size, dense_above=1.0)
            w_bsr, wt_bsr, w_csr = sparse_layouts(weight, block_size)
            for tokens in token_counts:
                x = torch.randn(tokens, in_features).to(device, dtype)
                label = f"{out_features:>5}x{in_features:<5} {block_size:>3} {layer.density:>5.2f} {tokens:>4}"
                dense, ext, torch_best, name = forward_row(layer, weight, w_bsr, x, repeats, clock)
                print_row(label, "fwd", layer.density, dense, ext, torch_best, name)
                if backward:
                    t = backward_rows(layer, weight, wt_bsr, w_csr, x, repeats, clock)
                    print_row(label, "dx", layer.density, t["dx_dense"], t["dx_ext"], t["dx_torch"], "matmul")
                    print_row(label, "dw", layer.density, t["dw_dense"], t["dw_ext"], t["dw_torch"], t["dw_torch_op"])
                if train_step:
                    dense_step, ext_step = step_row(layer, weight, x, repeats, clock)
                    print_row(label, "step", layer.density, dense_step, ext_step, float("nan"), "")


def crossovers(shapes, token_counts, dtype) -> None:
    """The crossover density from_dense would use, measured afresh (the timings come from the measurement)."""
    for out_features, in_features in shapes:
        for tokens in token_counts:
            record = cuda_ext.measure_crossover(out_features, in_features, 32, tokens=tokens, dtype=dtype, repeats=7)
            s = record["seconds"]
            print(f"{out_features:>5}x{in_features:<5} {tokens:>4} tokens: crossover density "
                  f"{record['crossover_density']:.2f} | dense {s['dense'] * 1e3:.3f} ms, blocks at 25% "
                  f"{s['bsr@0.25'] * 1e3:.3f} ms, at 100% {s['bsr@1.0'] * 1e3:.3f} ms", flush=True)


def blas_summary() -> str:
    """The BLAS and oneDNN lines of torch.__config__.show(), shortened."""
    config = torch.__config__.show()
    parts = []
    for pattern in (r"Math Kernel Library Version ([\w.\-]+)", r"MKL-DNN v([\w.]+)", r"BLAS_INFO=(\w+)",
                    r"CPU capability usage: (\w+)"):
        found = re.search(pattern, config)
        if found:
            parts.append(found.group(0).replace("Math Kernel Library Version", "MKL")
                         .replace("MKL-DNN", "oneDNN"))
    return ", ".join(parts) or "unknown (torch.__config__.show() names no BLAS)"


def cpu_summary() -> tuple[str, str]:
    """(CPU model, the SIMD-relevant feature flags) from /proc/cpuinfo, as lscpu shows them."""
    model, flags = platform.processor() or platform.machine(), set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name") and model in ("", platform.machine()):
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    return model, " ".join(f for f in SIMD_FLAGS if f in flags) or "none of " + " ".join(SIMD_FLAGS)


def main() -> None:
    """Time the block-sparse linear against dense and torch's sparse ops; print the ratios as measured."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2048² and 4096² at 10%% and 50%%, 256 tokens")
    parser.add_argument("--isa", choices=["auto", "avx512-bf16", "avx512", "avx2", "portable"], default=None,
                        help="force a CPU kernel path (sets TLC_BSR_ISA; default: the environment's, else the best)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: cuda_ext's CUDA kernels against cuBLAS dense and torch's BSR (wall clock)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--densities", type=float, nargs="+", default=None, help="block densities, e.g. 0.05 0.1")
    parser.add_argument("--shapes", nargs="+", default=None, help="weights as OUTxIN, e.g. 2048x2048 1024x256")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts, e.g. 1 32 256")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved timed repeats per row (median)")
    parser.add_argument("--backward", action="store_true", help="also time grad_input (dx) and grad_values (dw)")
    parser.add_argument("--step", action="store_true", help="also time a training step of one layer")
    parser.add_argument("--crossover", action="store_true",
                        help="print the measured dense/blocks crossover density per shape and token count instead")
    parser.add_argument("--clock", choices=["wall", "thread", "process"], default="wall",
                        help="thread: CPU time of the calling thread, immune to preemption by other processes "
                             "on a shared machine; needs --threads 1. process: CPU time of all this process's "
                             "threads (work split without overhead costs the same as on one thread; set "
                             "OMP_WAIT_POLICY=passive so that waiting threads sleep instead of spinning)")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread only: add --threads 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.device == "cuda" and args.clock != "wall":
        parser.error("--device cuda: the GPU is timed by wall clock (--clock wall)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.isa:
        os.environ["TLC_BSR_ISA"] = args.isa  # read by the kernels at their first call, below
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not cuda_ext.available():
        raise SystemExit(f"cuda_ext kernels unavailable: {cuda_ext.ops._build.build_error()}")
    try:
        isa = cuda_ext.cpu_kernel_isa()
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    shapes = [(2048, 2048), (4096, 4096)] if args.quick else SQUARE + FFN
    if args.shapes:
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes]
    densities = args.densities or ([0.1, 0.5] if args.quick else [0.05, 0.1, 0.25, 0.5])
    tokens = args.tokens or ([256] if args.quick else [1, 32, 256])
    model, flags = cpu_summary()
    forced = os.environ.get("TLC_BSR_ISA", "auto") or "auto"
    print(f"# kernel path: {isa} ({'forced by TLC_BSR_ISA' if forced != 'auto' else 'best available'}; "
          f"this CPU can run: {', '.join(cuda_ext.cpu_kernel_isas())})")
    print(f"# CPU: {model}, {os.cpu_count()} cpus; SIMD flags: {flags}")
    print(f"# BLAS: {blas_summary()}; torch {torch.__version__}")
    threads = torch.get_num_threads()
    wait = f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" if "OMP_WAIT_POLICY" in os.environ else ""
    print(f"# {threads} thread{'s' if threads != 1 else ''}, {args.clock} clock{wait}, median of {args.repeats} "
          f"interleaved repeats, {args.dtype}, warm cache (operands reused between repeats); "
          f"load average {load_average()}", flush=True)
    clock = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}[args.clock]
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"# device: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}", flush=True)
    if args.crossover:
        crossovers(shapes, tokens, getattr(torch, args.dtype))
    else:
        run(shapes, densities, tokens, getattr(torch, args.dtype), args.repeats, clock, args.backward, args.step,
            device)
    print(f"# load average at the end: {load_average()}")


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
