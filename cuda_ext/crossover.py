"""The block density above which a dense matmul beats the block-sparse kernels, measured on this machine.

Where block sparsity stops paying depends on the kernel path (AVX-512, AVX2, portable BLAS, CUDA),
on the dense GEMM torch uses here, on the layer's shape and on the token count, so it is measured
rather than assumed: per shape class (out_features, in_features, block size, dtype, device, token
count rounded to a power of two), the dense F.linear and the BSR kernel at two block densities are
timed interleaved. Kernel time is close to affine in the density (a fixed cost plus work in
proportion to the kept blocks), so the two points give the line, and the crossover is where it
meets the dense time. Results are cached on disk per machine, kernel path and thread count, in
`bsr_crossover.json` beside tlc's int8 path choice (`$TLC_CACHE`, else ~/.cache/tlc).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import ops
from .bsr_format import dense_to_bsr

CACHE_FILE = "bsr_crossover.json"
PROBE_DENSITIES = (0.25, 1.0)  # the two points of the line; far apart so that timing noise matters little
_lock = threading.Lock()
_memo: dict[str, dict] = {}


def cache_path() -> Path:
    """`$TLC_CACHE/bsr_crossover.json`, else under ~/.cache/tlc: tlc's cache rule, restated here because
    cuda_ext never imports tlc."""
    return Path(os.environ.get("TLC_CACHE") or Path.home() / ".cache" / "tlc") / CACHE_FILE


def token_bucket(tokens: int) -> int:
    """Token count rounded to the nearest power of two within 1 .. 4096: one measurement per bucket."""
    tokens = min(max(int(tokens), 1), 4096)
    return 1 << round(tokens.bit_length() - 1 + (tokens / (1 << (tokens.bit_length() - 1)) >= 1.5))


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it ("AMD EPYC"), from /proc/cpuinfo; elsewhere the platform's name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def shape_class_key(out_features: int, in_features: int, block_size: int, tokens: int, dtype: torch.dtype,
                    device: torch.device) -> str:
    """What a measured crossover depends on: machine, kernel path, threads, library version and shape class."""
    device = torch.device(device)
    if device.type == "cuda":
        where = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        where = f"cpu:{cpu_model()}:{ops.cpu_kernel_isa() or 'reference'}:threads={torch.get_num_threads()}"
    return "|".join([platform.node(), where, f"torch={torch.__version__}", f"{out_features}x{in_features}",
                     f"bs={block_size}", f"tokens={token_bucket(tokens)}", str(dtype).replace("torch.", "")])


def _random_block_weight(out_features, in_features, block_size, density, dtype, device, generator):
    rows, cols = out_features // block_size, in_features // block_size
    keep = torch.zeros(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=generator)[: max(1, round(density * rows * cols))]] = True
    mask = keep.reshape(rows, cols).repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return (torch.randn(out_features, in_features, generator=generator) * mask).to(device=device, dtype=dtype)


def _median_seconds(functions, repeats: int, device: torch.device) -> list[float]:
    # One CPU thread: that thread's CPU time, which preemption by other processes does not inflate
    # (on a busy machine wall-clock medians penalise the longest call, dense, the most).
    one_thread = device.type == "cpu" and torch.get_num_threads() == 1
    clock = time.thread_time if one_thread else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return interleaved_medians(functions, repeats, clock, sync)


def interleaved_medians(functions, repeats: int, clock, sync=lambda: None) -> list[float]:
    """Median seconds of each function over ``repeats`` interleaved rounds, after one warm-up call each.

    ``sync`` waits for queued device work (torch.cuda.synchronize on CUDA) around each timed call.
    """
    for f in functions:  # warm-up: first-call allocations, lazy kernel builds
        f()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for i, f in enumerate(functions):
            sync()
            start = clock()
            f()
            sync()
            times[i].append(clock() - start)
    return [statistics.median(t) for t in times]


def measure_crossover(out_features: int, in_features: int, block_size: int = 32, tokens: int = 256,
                      dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                      repeats: int = 5) -> dict:
    """Time dense F.linear and bsr_linear at PROBE_DENSITIES on this shape; the crossover density and timings.

    Returns {"crossover_density": d in [0, 1], "seconds": {...}, "tokens": ...}; d = 1.0 means the
    kernels beat dense even with every block kept, 0.0 that dense wins at any density.
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(token_bucket(tokens), in_features, generator=g).to(device=device, dtype=dtype)
    weights = [_random_block_weight(out_features, in_features, block_size, d, dtype, device, g)
               for d in PROBE_DENSITIES]
    operands = [dense_to_bsr(w, block_size) for w in weights]
    candidates = [lambda: F.linear(x, weights[-1])]
    candidates += [lambda v=v, c=c, l=l: ops.bsr_linear(x, v, c, l) for v, c, l in operands]
    with torch.no_grad():
        dense, *sparse = _median_seconds(candidates, repeats, device)
    (d0, t0), (d1, t1) = zip(PROBE_DENSITIES, sparse)
    slope = (t1 - t0) / (d1 - d0)
    if t1 <= dense:
        crossover = 1.0
    elif slope <= 0:  # timing noise swamped the density's effect: trust only the full-density point
        crossover = 0.0
    else:  # where the line meets dense (below d0 an extrapolation; clamped to [0, 1])
        crossover = d0 + (dense - t0) / slope
    seconds = {"dense": dense, **{f"bsr@{d}": t for d, t in zip(PROBE_DENSITIES, sparse)}}
    return {"crossover_density": round(min(max(crossover, 0.0), 1.0), 3), "seconds": seconds,
            "tokens": token_bucket(tokens)}


def _read_cache(path: Path) -> dict:
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        return known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, known: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(known, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: readers see the old file or the new one


def crossover_density(out_features: int, in_features: int, block_size: int = 32, tokens: int = 256,
                      dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> float:
    """The measured block density above which dense is faster for this shape class, from the cache or
    measured now (once per machine, kernel path, thread count and shape class) and cached."""
    key = shape_class_key(out_features, in_features, block_size, tokens, dtype, torch.device(device))
    with _lock:
        if key in _memo:
            return _memo[key]["crossover_density"]
        path = cache_path()
        record = _read_cache(path).get(key)
        if not (isinstance(record, dict) and isinstance(record.get("crossover_density"), (int, float))):
            record = measure_crossover(out_features, in_features, block_size, tokens, dtype, device)
            known = _read_cache(path)  # re-read: another process may have added classes meanwhile
            known[key] = record
            try:
                _write_cache(path, known)
            except OSError:
                pass  # a read-only cache costs a re-measurement next process, not a failure
        _memo[key] = record
        return record["crossover_density"]
