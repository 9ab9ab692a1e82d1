"""Time a full `tlc fit` on a synthetic sweep: 12 runs x 20 points, 200 bootstrap resamples.

The sweep comes from `scaling.synthetic` (Chinchilla-form truth with 1% noise, one pruning
method at five sparsities and an 8-bit variant per run), so the fit does everything a real
one does: both L(N, D) laws with bootstrap and leave-largest-out, the allocation, 12
learning curves, the frontier with bootstrap, and the compression models with bootstrap.
The target is 10 s on a 2-core machine.

Side by side, from the same run: the same fit with a few resamples under OpenBLAS's default
thread count and under one thread (`scaling.blas_threads`), to show why fitting pins BLAS
to one thread.

    python bench/fit.py                 # the timed fit and the thread comparison
    python bench/fit.py --no-threads    # the timed fit only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import scaling.fitting
from scaling import fit_sweep_observations
from scaling.synthetic import synthetic_sweep

TARGET_S = 10.0


def timed_fit(sweep, bootstrap: int) -> tuple[float, float, dict]:
    """Wall-clock and CPU seconds of one full fit, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    fit = fit_sweep_observations(sweep, bootstrap=bootstrap, seed=0)
    return time.perf_counter() - wall, time.process_time() - cpu, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--no-threads", action="store_true", help="skip the BLAS thread comparison")
    args = parser.parse_args()

    sweep = synthetic_sweep(n_runs=args.runs, points_per_run=args.points, noise=0.01, seed=0)
    machine = platform.processor() or platform.machine()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {machine}, {os.cpu_count()} cores, python {platform.python_version()}, load average {load}")
    elapsed, cpu, fit = timed_fit(sweep, args.bootstrap)
    statuses = {name: law["status"] for name, law in fit["laws"].items()}
    refits = sum(sum(law["bootstrap"]["statuses"].values()) for law in fit["laws"].values())
    refits += sum(sum(m["bootstrap"]["statuses"].values()) for m in fit["compression"]["pruning"].values())
    refits += sum(fit["compression"]["int8"]["bootstrap"]["statuses"].values()) if fit["compression"]["int8"] else 0
    print(
        f"full fit: {args.runs} runs x {args.points} points, {args.bootstrap} bootstrap resamples: "
        f"{elapsed:.2f} s wall, {cpu:.2f} s CPU ({elapsed / TARGET_S:.2f} x the {TARGET_S:.0f} s target); "
        f"{refits} law refits + {args.bootstrap} frontier refits; statuses {statuses}"
    )

    if not args.no_threads:
        small = 10
        one_thread, one_thread_cpu, _ = timed_fit(sweep, small)
        original = scaling.fitting.one_blas_thread
        scaling.fitting.one_blas_thread = contextlib.nullcontext  # OpenBLAS's default thread count
        try:
            default_threads, default_threads_cpu, _ = timed_fit(sweep, small)
        finally:
            scaling.fitting.one_blas_thread = original
        print(
            f"same fit with {small} resamples: default BLAS threads {default_threads:.2f} s wall "
            f"({default_threads_cpu:.2f} s CPU), one BLAS thread {one_thread:.2f} s wall ({one_thread_cpu:.2f} s CPU), "
            f"ratio {default_threads / one_thread:.1f}x wall"
        )


if __name__ == "__main__":
    main()
