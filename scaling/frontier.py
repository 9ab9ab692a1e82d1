"""Per-run learning curves against training FLOPs, and the compute-optimal frontier.

Each run's curve L(C) = E + A·C^-alpha is fitted on its own points so it can be drawn
smoothly. The frontier is the envelope over runs, at each compute the lowest loss any run
reached (Kaplan et al. 2020 fig. 1 and sec. 6; Hoffmann et al. 2022 approach 1). It is taken
from the measured points, interpolated linearly in log C within each run's range, rather than
from the fitted curves, so a poor per-run fit cannot move it. A power law in compute is then
fitted to the envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.fitting import FitResult, fit_law
from scaling.forms import LearningCurveForm
from scaling.observations import RunCurve

LEARNING_CURVE = LearningCurveForm()
FRONTIER_POINTS = 40  # log-spaced compute values at which the envelope is taken


def fit_learning_curve(run: RunCurve) -> FitResult | None:
    """Fit L(C) = E + A·C^-alpha to one run's evaluations; None if it has fewer than 4 points."""
    if len(run.val_loss) < len(LEARNING_CURVE.fitted) + 1:
        return None
    return fit_law(LEARNING_CURVE, {"C": run.train_flops}, run.val_loss, grid_starts=6)


@dataclass(frozen=True)
class Frontier:
    """The envelope of the runs' loss-against-compute curves."""

    compute: np.ndarray  # (K,) training FLOPs
    loss: np.ndarray  # (K,) lowest loss over runs at that compute
    run_ids: tuple[str, ...]  # (K,) the run on the envelope at each compute


def compute_frontier(runs: tuple[RunCurve, ...] | list[RunCurve], n_points: int = FRONTIER_POINTS) -> Frontier:
    """Lowest loss over ``runs`` at log-spaced compute values spanning every run's range."""
    if not runs:
        raise ValueError("runs: the frontier needs at least one run")
    low = min(float(r.train_flops.min()) for r in runs)
    high = max(float(r.train_flops.max()) for r in runs)
    compute = np.geomspace(low, high, n_points) if high > low else np.array([low])
    log_c = np.log(compute)
    curves = np.full((len(runs), len(compute)), np.inf)
    for i, run in enumerate(runs):
        order = np.argsort(run.train_flops, kind="stable")
        run_log_c, run_loss = np.log(run.train_flops[order]), run.val_loss[order]
        inside = (log_c >= run_log_c[0] - 1e-12) & (log_c <= run_log_c[-1] + 1e-12)
        curves[i, inside] = np.interp(log_c[inside], run_log_c, run_loss)
    best = np.argmin(curves, axis=0)
    loss = curves[best, np.arange(len(compute))]
    covered = np.isfinite(loss)  # a compute no run reached (a gap between runs' ranges) is left out
    return Frontier(
        compute=compute[covered],
        loss=loss[covered],
        run_ids=tuple(runs[i].run_id for i, keep in zip(best, covered) if keep),
    )


def fit_frontier(
    frontier: Frontier, start: np.ndarray | None = None, grid_starts: int = 12, precise: bool = True
) -> FitResult:
    """Fit L(C) = E + A·C^-alpha to the envelope (Kaplan et al. 2020 eq. 1.3 with a constant E)."""
    if len(frontier.loss) < len(LEARNING_CURVE.fitted) + 1:
        raise ValueError(f"frontier: {len(frontier.loss)} points; need at least {len(LEARNING_CURVE.fitted) + 1}")
    return fit_law(
        LEARNING_CURVE, {"C": frontier.compute}, frontier.loss, starts=start, grid_starts=grid_starts, precise=precise
    )


def bootstrap_frontier(
    runs: tuple[RunCurve, ...], run_counts: np.ndarray, full_fit: FitResult
) -> np.ndarray:
    """Frontier refits on each run resample (R, 3) in fitted coordinates; NaN where unusable.

    A resample's envelope is the envelope of the runs it drew (how often does not matter).
    Refits start from the full-data optimum; grid starts are added only when that fails.
    """
    thetas = np.full((len(run_counts), len(LEARNING_CURVE.fitted)), np.nan)
    for k, counts in enumerate(run_counts):
        drawn = [run for run, count in zip(runs, counts) if count > 0]
        frontier = compute_frontier(drawn)
        if len(frontier.loss) < len(LEARNING_CURVE.fitted) + 1:
            continue
        refit = fit_frontier(frontier, start=np.asarray(full_fit.theta), grid_starts=0, precise=False)
        if refit.status != "converged" and full_fit.status == "converged":
            refit = fit_frontier(frontier, start=np.asarray(full_fit.theta), grid_starts=2, precise=False)
        if refit.status != "not_converged":
            thetas[k] = refit.theta
    return thetas
