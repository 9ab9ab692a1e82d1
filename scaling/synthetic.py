"""Synthetic sweeps generated from known laws, for tests, benchmarks and demos of the fitter.

Losses follow a Chinchilla-form law (plus optional multiplicative log-normal noise); compressed
variants follow the odds_power pruning model and the size_power 8-bit model. Because the truth
is known, a fit on these sweeps can be checked against it.
"""

from __future__ import annotations

import numpy as np

from scaling.compression import N_REF
from scaling.forms import ChinchillaForm, ChinchillaParameters
from scaling.observations import CompressedVariant, RunCurve, SweepObservations

# A law shaped like small-model sweeps: loss about 3-6 nats over N = 1e5..1e8.
TINY_TRUTH = ChinchillaParameters(E=1.8, A=60.0, B=400.0, alpha=0.30, beta=0.28)
PRUNING_TRUTH = {"c": 0.08, "gamma": 1.5, "delta": 0.3}  # odds_power, per method
INT8_TRUTH = {"c": 0.01, "delta": 0.2}  # size_power
SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9)


def synthetic_sweep(
    n_runs: int = 12,
    points_per_run: int = 20,
    truth: ChinchillaParameters = TINY_TRUTH,
    noise: float = 0.0,
    seed: int = 0,
    methods: tuple[str, ...] = ("magnitude",),
    min_params: float = 1e5,
    max_params: float = 1e8,
    tokens_per_param: float = 20.0,
) -> SweepObservations:
    """A sweep of ``n_runs`` sizes log-spaced in [min_params, max_params], ``points_per_run`` each.

    Run i trains for tokens_per_param·N_i·(1.3^(i mod 3)) tokens (so final token counts differ
    between runs), evaluated at tokens log-spaced from 1/1000 of that to all of it; C = 6·N·D.
    ``noise`` is the standard deviation of the log-normal noise on every loss.
    """
    rng = np.random.default_rng(seed)
    form = ChinchillaForm()
    sizes = np.geomspace(min_params, max_params, n_runs)
    runs, variants = [], []
    for i, n in enumerate(sizes):
        final_tokens = tokens_per_param * n * 1.3 ** (i % 3)
        tokens = np.geomspace(final_tokens / 1000.0, final_tokens, points_per_run)
        loss = form.predict(truth, N=n, D=tokens) * np.exp(noise * rng.standard_normal(points_per_run))
        run = RunCurve(
            run_id=f"r{i:02d}-n{n:.3g}",
            params=float(n),
            tokens=tokens,
            train_flops=6.0 * n * tokens,
            val_loss=loss,
        )
        runs.append(run)
        dense = run.final_loss
        for method in methods:
            for s in SPARSITIES:
                odds, size = s / (1 - s), n / N_REF
                added = PRUNING_TRUTH["c"] * odds ** PRUNING_TRUTH["gamma"] * size ** -PRUNING_TRUTH["delta"]
                compressed = (dense + added) * np.exp(noise * rng.standard_normal())
                variants.append(CompressedVariant(run.run_id, method, s, 32, float(compressed)))
        if methods:
            added = INT8_TRUTH["c"] * (n / N_REF) ** -INT8_TRUTH["delta"]
            compressed = (dense + added) * np.exp(noise * rng.standard_normal())
            variants.append(CompressedVariant(run.run_id, "none", 0.0, 8, float(compressed)))
    return SweepObservations(runs=tuple(runs), variants=tuple(variants))
