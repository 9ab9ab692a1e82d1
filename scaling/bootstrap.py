"""Bootstrap over runs: intervals for every fitted parameter and every prediction.

Points on one learning curve are strongly correlated (same model, same data order), so
resampling points would understate the uncertainty. Runs are resampled instead: a resample
draws n_runs runs with replacement, and each point is weighted by how often its run was
drawn. The same resamples are reused for every law of a sweep, so draw k of one law and draw
k of another come from the same data and can be combined into one prediction.

The intervals are percentile intervals of the refits: they describe the uncertainty of the
fitted *mean* loss from which runs happened to be trained, not the scatter of a new run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from scaling.fitting import FitResult, best_grid_starts, fit_law
from scaling.forms import LawForm

CONFIDENCE = 0.95
REFIT_STARTS = 3  # the full-data optimum and up to two other local optima of the full-data fit
NEAR_BEST = 1.1  # ... whose objective is within 10% of the optimum's: a resample could prefer them
FALLBACK_GRID_STARTS = 2  # grid points added when a refit from those does not converge
# An interval resting on fewer of its resamples than this share is reported "unstable": the dropped
# refits are not a random subset (they fail on the resamples that pull the law furthest), so the
# percentiles of the rest understate the spread.
MIN_CONVERGED_SHARE = 0.8


def resample_runs(n_runs: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each run is drawn in each resample: integer counts (n_resamples, n_runs)."""
    if n_runs < 1:
        raise ValueError(f"n_runs: need at least 1 run to resample, got {n_runs}")
    if n_resamples < 0:
        raise ValueError(f"bootstrap: the number of resamples must be >= 0, got {n_resamples}")
    draws = np.random.default_rng(seed).integers(0, n_runs, size=(n_resamples, n_runs))
    counts = np.zeros((n_resamples, n_runs), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1)
    return counts


@dataclass(frozen=True)
class BootstrapFits:
    """Refits of one law on each resample; rows of ``thetas`` are NaN where a refit was unusable."""

    law: str
    thetas: np.ndarray  # (R, P) fitted coordinates
    statuses: tuple[str, ...]  # per resample: a FitResult status, or "skipped" when no point was drawn

    @property
    def n_usable(self) -> int:
        """Refits that count towards intervals (converged or on a bound)."""
        return int(np.isfinite(self.thetas).all(axis=1).sum())

    @property
    def converged_share(self) -> float | None:
        """Share of the resamples whose refit counts towards intervals; None without resamples."""
        return self.n_usable / len(self.statuses) if self.statuses else None

    def stability(self) -> str | None:
        """Why the intervals cannot be trusted (under MIN_CONVERGED_SHARE of the resamples usable), or None."""
        share = self.converged_share
        if share is None or share >= MIN_CONVERGED_SHARE:
            return None
        return (f"only {self.n_usable} of {len(self.statuses)} bootstrap refits converged ({share:.0%}, fewer than "
                f"{MIN_CONVERGED_SHARE:.0%}): the intervals rest on the resamples that happened to fit")

    def status_counts(self) -> dict[str, int]:
        """How many refits ended in each status."""
        return {s: self.statuses.count(s) for s in sorted(set(self.statuses))}


def bootstrap_law(
    form: LawForm,
    x: Mapping[str, np.ndarray],
    loss: np.ndarray,
    run_index: np.ndarray,
    run_counts: np.ndarray,
    full_fit: FitResult,
    base_weights: np.ndarray | None = None,
) -> BootstrapFits:
    """Refit ``form`` on each run resample, starting from the full-data optimum.

    run_index (n,) maps each point to its run; run_counts (R, n_runs) comes from
    `resample_runs`. Each refit starts from the full-data optimum and the other distinct
    local optima the full fit's grid starts ended in, if nearly as good (at most REFIT_STARTS
    in all, within NEAR_BEST of the optimum's objective): a resample moves the optimum a
    little, so starting next to it saves most of the descent. A refit that does not converge
    from those is tried again with the best FALLBACK_GRID_STARTS grid points added. (A refit
    that runs into a bound from the full-data optimum found the bound downhill: on a sweep too
    small to pin E down, E -> 0 is a legitimate resample; such refits are kept and counted.)
    Refits that still end "not_converged" are dropped from intervals but counted.
    """
    loss = np.asarray(loss, dtype=float)
    run_index = np.asarray(run_index)
    base = np.ones_like(loss) if base_weights is None else np.asarray(base_weights, dtype=float)
    near_best = [
        theta
        for theta, value in zip(full_fit.local_optima, full_fit.local_objectives)
        if value <= NEAR_BEST * full_fit.objective + 1e-12
    ]
    starts = np.array([full_fit.theta, *near_best[1:]][:REFIT_STARTS], dtype=float)
    job = (form, dict(x), loss, run_index, base, starts)
    chunks = np.array_split(np.asarray(run_counts), _workers(len(run_counts)))
    if len(chunks) == 1:
        parts = [_refit(job, chunks[0])]
    else:  # each refit is independent of the others: the same draws whichever process makes them
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_refit, [job] * len(chunks), chunks))
    thetas = np.concatenate([t for t, _ in parts]).reshape(len(run_counts), len(form.fitted))
    return BootstrapFits(law=form.name, thetas=thetas, statuses=tuple(s for _, part in parts for s in part))


# Resamples per process below which refits stay in this one (a fork costs more than a few refits)
MIN_RESAMPLES_PER_PROCESS = 32


def _workers(n_resamples: int) -> int:
    """Processes to share the refits: one per core (at most 4) on Linux (where fork is safe in a process that has
    loaded torch), each with enough of them."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return 1
    return max(1, min(os.cpu_count() or 1, 4, n_resamples // MIN_RESAMPLES_PER_PROCESS))


def _refit(job: tuple, run_counts: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Refit on each of these resamples: (thetas with NaN rows for unusable refits, statuses)."""
    form, x, loss, run_index, base, starts = job
    fallback = None
    thetas = np.full((len(run_counts), len(form.fitted)), np.nan)
    statuses = []
    for k, counts in enumerate(run_counts):
        weights = base * counts[run_index]
        if not (weights > 0).any():
            statuses.append("skipped")
            continue
        refit = fit_law(form, x, loss, weights, starts=starts, grid_starts=0, precise=False)
        if refit.status == "not_converged":
            if fallback is None:
                fallback = np.concatenate([starts, best_grid_starts(form, x, np.log(loss), base, FALLBACK_GRID_STARTS)])
            refit = fit_law(form, x, loss, weights, starts=fallback, grid_starts=0, precise=False)
        statuses.append(refit.status)
        if refit.status != "not_converged":
            thetas[k] = refit.theta
    return thetas, statuses


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval over axis 0, ignoring NaN draws (all NaN gives NaN)."""
    samples = np.asarray(samples, dtype=float)
    tail = 100.0 * (1.0 - confidence) / 2.0
    finite = np.isfinite(samples)
    if not finite.any():
        nan = np.full(samples.shape[1:], np.nan)
        return nan, nan.copy()
    with np.errstate(invalid="ignore"):
        low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


def parameter_draws(form: LawForm, thetas: np.ndarray) -> dict[str, np.ndarray]:
    """Named user-facing parameters for each bootstrap draw, NaN where the draw is unusable."""
    names = form.parameter_names
    draws = {name: np.full(len(thetas), np.nan) for name in names}
    for k, theta in enumerate(thetas):
        if np.isfinite(theta).all():
            params: Any = form.to_parameters(theta)
            for name in names:
                draws[name][k] = getattr(params, name)
    return draws
