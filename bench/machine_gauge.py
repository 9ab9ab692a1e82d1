"""How fast this machine is right now: a fixed, deterministic CPU load to measure beside any timing.

This project's machines are shared, and their speed changes by 40% from one hour to the next (BENCHMARKS.md,
"The first ten minutes"). A wall or CPU time taken an hour apart compares the hours, not the code. This script
fits the four L(N, D) laws to one synthetic sweep (seeded, so every run makes the same objective evaluations) on
one thread and prints the CPU seconds it took; run it just before and after a timing and give the gauge with the
figure. Prints the count of evaluations too: the same count means the same work.

    .venv/bin/python bench/machine_gauge.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="times the four laws are fitted (default 10: ~10 s)")
    args = parser.parse_args()
    import numpy as np

    import scaling.fitting as fitting
    from cuda_ext.crossover import cpu_model
    from scaling.forms import LAWS
    from scaling.synthetic import synthetic_sweep

    sweep = synthetic_sweep(n_runs=6, points_per_run=8, noise=0.01, seed=0)
    table = sweep.points(False)
    evaluations = 0
    minimize = fitting.minimize

    def counted(*args, **kwargs):
        nonlocal evaluations
        result = minimize(*args, **kwargs)
        evaluations += result.nfev
        return result

    fitting.minimize = counted
    started = time.process_time()
    for _ in range(args.repeats):
        for form in LAWS.values():
            fitting.fit_law(form, {"N": table.N, "D": table.D}, table.loss)
    seconds = time.process_time() - started
    print(f"machine gauge: {seconds:.2f} CPU-s for {evaluations:,} objective evaluations ({cpu_model()}, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC; numpy {np.__version__})")


if __name__ == "__main__":
    main()
