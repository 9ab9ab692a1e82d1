"""Fit a law in log space: Huber loss on log-loss residuals, L-BFGS-B from a grid of starts.

Hoffmann et al. 2022 (approach 3, eq. 3) minimise sum Huber_delta(log L_hat - log L) with
delta = 1e-3 using L-BFGS from a grid of initialisations and keep the best; so does this
module. The objective here is sum_i w_i · h((log L_hat_i - log L_i) / delta) / sum_i w_i with
h the Huber function of threshold 1: that is Chinchilla's objective times 1/(delta² · sum w),
so it has the same minimiser, but values and gradients are of order one, which keeps
L-BFGS-B's stopping tests meaningful. The weights w_i are how bootstrap resamples and
held-out splits enter without copying data.

A fit never fails silently: `FitResult.status` is "converged", "hit_bound" (a coordinate sits
on its bound: the law is not identified by this data, or the bound is wrong) or
"not_converged" (the optimiser stopped without meeting its tolerances).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy.optimize import minimize

from scaling.blas_threads import one_blas_thread
from scaling.forms import LawForm

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, sec. 3.3
STATUSES = ("converged", "hit_bound", "not_converged")

# Tight tolerances for the reported fit (noise-free data is recovered to ~1e-9); bootstrap
# refits only feed percentiles, where 1e-9 relative in the objective is far below the spread.
_LBFGSB_OPTIONS = {"maxiter": 3000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20}
_LBFGSB_REFIT_OPTIONS = {"maxiter": 1000, "ftol": 1e-9, "gtol": 1e-6, "maxcor": 10}


@dataclass(frozen=True)
class FitResult:
    """The best of several L-BFGS-B runs of one law on one data set."""

    law: str
    parameters: Any  # the form's frozen parameters dataclass, e.g. ChinchillaParameters
    theta: tuple[float, ...]  # fitted coordinates (e.g. log A rather than A), for restarts
    status: str  # one of STATUSES
    objective: float  # mean Huber loss of log residuals in units of delta (see module docstring)
    n_points: int  # points with non-zero weight
    n_starts: int  # L-BFGS-B runs made
    message: str  # the optimiser's message for the best run
    local_optima: tuple[tuple[float, ...], ...] = ()  # distinct end points of the runs, best first
    local_objectives: tuple[float, ...] = ()  # the objective at each of local_optima


def _distinct_end_points(results: list) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    """End points of the optimiser runs and their objectives, best first, without repeats of one minimum.

    A run counts as the same minimum as a better one if its end point is within 1e-3
    (relative) or its objective within 1e-8 (relative): on the flat valleys of a
    poorly identified law, runs stop at different points of one minimum.
    """
    kept: list = []
    for result in sorted(results, key=lambda r: r.fun):
        point = np.asarray(result.x, dtype=float)
        if all(
            np.max(np.abs(point - k.x) / (1.0 + np.abs(k.x))) > 1e-3
            and result.fun - k.fun > 1e-8 * max(1.0, abs(k.fun))
            for k in kept
        ):
            kept.append(result)
    return tuple(tuple(float(v) for v in k.x) for k in kept), tuple(float(k.fun) for k in kept)


# Inside reuse_fits(): finished fits by their exact inputs
_reused: dict | None = None


@contextlib.contextmanager
def reuse_fits():
    """Within this block, a `fit_law` call with exactly the inputs of an earlier one returns that call's result.

    A fit is a deterministic function of its inputs (the start grid, L-BFGS-B, one BLAS thread), so this changes no
    result. Within one sweep's fit the held-out refits repeat each other: where the top decade of compute holds
    exactly the largest model's runs, the compute hold-out refits the points that leave-largest-out refitted.
    Scoped rather than process-wide, so that a benchmark fitting the same data twice times two fits.
    """
    global _reused
    outer = _reused
    _reused = {} if outer is None else outer
    try:
        yield
    finally:
        _reused = outer


def _inputs_key(form, x, loss, weights, starts, grid_starts, delta, options) -> tuple:
    """Everything a fit depends on, hashable: the form object itself (held by the cache, so its id is never
    reused), and the arrays' shapes and bytes."""
    def raw(values) -> tuple | None:
        return None if values is None else (np.shape(values), np.asarray(values, dtype=float).tobytes())

    return (form, tuple((name, raw(values)) for name, values in sorted(x.items())), raw(loss), raw(weights),
            raw(starts), grid_starts, delta, tuple(sorted(options.items())))


def validate_observations(x: Mapping[str, np.ndarray], loss: np.ndarray, covariates: tuple[str, ...]) -> None:
    """Raise ValueError naming the field if a covariate or loss is missing, non-finite or not positive."""
    loss = np.asarray(loss, dtype=float)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"loss: expected a non-empty 1-D array, got shape {loss.shape}")
    for name, values in [*((c, x.get(c)) for c in covariates), ("loss", loss)]:
        if values is None:
            raise ValueError(f"{name}: missing; the law needs covariates {', '.join(covariates)}")
        values = np.asarray(values, dtype=float)
        if values.shape != loss.shape:
            raise ValueError(f"{name}: shape {values.shape} does not match loss shape {loss.shape}")
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: must be finite and > 0, got {values[i]!r} at index {i} ({int(bad.sum())} bad)")


def huber_objective(
    form: LawForm,
    theta: np.ndarray,
    x: Mapping[str, np.ndarray],
    log_observed: np.ndarray,
    weights: np.ndarray,
    delta: float = HUBER_DELTA,
    gradient: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted mean Huber loss of log residuals (in units of delta) and its gradient.

    ``theta`` may be (P,) or a batch (G, P); the value is () or (G,), the gradient (P,) or (G, P).
    """
    log_pred, jac = form.log_loss(theta, x, jacobian=gradient)
    z = (log_pred - log_observed) / delta
    clipped = np.minimum(np.maximum(z, -1.0), 1.0)  # h'(z)
    huber = clipped * (z - 0.5 * clipped)  # z²/2 where |z| <= 1, |z| - 1/2 beyond
    total_weight = weights.sum()
    value = huber @ weights / total_weight
    if not gradient:
        return value, None
    dz = clipped * (weights / (delta * total_weight))
    return value, np.einsum("...n,...np->...p", dz, jac)


def best_grid_starts(
    form: LawForm,
    x: Mapping[str, np.ndarray],
    log_observed: np.ndarray,
    weights: np.ndarray,
    count: int,
    delta: float = HUBER_DELTA,
) -> np.ndarray:
    """The ``count`` points of the form's start grid with the lowest objective, (count, P).

    Evaluating the whole grid is one vectorised pass; running L-BFGS-B from only its best
    points, rather than from all of them as Hoffmann et al. did, costs little accuracy because
    nearby grid points converge to the same optimum, and makes bootstrap refits affordable.
    """
    grid = form.start_grid()
    values = np.empty(len(grid))
    for lo in range(0, len(grid), 512):  # chunks keep the (G, n) work arrays small
        values[lo : lo + 512], _ = huber_objective(form, grid[lo : lo + 512], x, log_observed, weights, delta, False)
    values = np.where(np.isfinite(values), values, np.inf)
    return grid[np.argsort(values, kind="stable")[:count]]


def bound_hits(form: LawForm, theta) -> list[str]:
    """The fitted coordinates of ``theta`` on a bound, e.g. ["e at its lower bound (-10)"].

    "On a bound" means within 0.1% of the bound's range: on the flat valley of an
    unidentified parameter the optimiser stops near the bound rather than on it.
    """
    hits = []
    for value, spec in zip(theta, form.fitted):
        tolerance = 1e-3 * (spec.upper - spec.lower)
        if value <= spec.lower + tolerance:
            hits.append(f"{spec.name} at its lower bound ({spec.lower:g})")
        elif value >= spec.upper - tolerance:
            hits.append(f"{spec.name} at its upper bound ({spec.upper:g})")
    return hits


def _status(form: LawForm, theta: np.ndarray, success: bool) -> str:
    """Classify an optimiser result; a coordinate on a bound beats convergence."""
    if bound_hits(form, theta):
        return "hit_bound"
    return "converged" if success else "not_converged"


def fit_law(
    form: LawForm,
    x: Mapping[str, np.ndarray],
    loss: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    starts: np.ndarray | None = None,
    grid_starts: int = 12,
    delta: float = HUBER_DELTA,
    precise: bool = True,
) -> FitResult:
    """Fit ``form`` to observed losses by L-BFGS-B on the log-space Huber objective.

    x: covariates by name (each (n,), e.g. {"N": params, "D": tokens});
    loss: observed losses (n,), nats; weights: non-negative per-point weights (default ones).
    Starts are ``starts`` (extra points, e.g. a previous optimum) plus the ``grid_starts``
    best points of the form's grid; the run with the lowest objective is kept.
    ``precise=False`` loosens the optimiser's tolerances, for bootstrap refits.
    """
    x = {name: np.asarray(values, dtype=float) for name, values in x.items()}
    options = _LBFGSB_OPTIONS if precise else _LBFGSB_REFIT_OPTIONS
    key = None if _reused is None else _inputs_key(form, x, loss, weights, starts, grid_starts, delta, options)
    if key is not None and key in _reused:
        return _reused[key]
    validate_observations(x, loss, form.covariates)
    log_observed = np.log(np.asarray(loss, dtype=float))
    weights = np.ones_like(log_observed) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != log_observed.shape or (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError(f"weights: expected {log_observed.shape[0]} finite non-negative values")
    n_points = int((weights > 0).sum())
    if n_points == 0:
        raise ValueError("weights: every point has weight 0; nothing to fit")

    candidates = [] if starts is None else [np.atleast_2d(np.asarray(starts, dtype=float))]
    if grid_starts > 0:
        candidates.append(best_grid_starts(form, x, log_observed, weights, grid_starts, delta))
    if not candidates:
        raise ValueError("starts: no starting point; give starts or grid_starts > 0")
    start_points = np.concatenate(candidates, axis=0)
    lower = np.array([s.lower for s in form.fitted])
    upper = np.array([s.upper for s in form.fitted])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = huber_objective(form, theta, x, log_observed, weights, delta)
        return float(value), grad

    def run(start: np.ndarray):
        return minimize(objective, start, jac=True, method="L-BFGS-B", bounds=form.bounds, options=options)

    finished = []
    with one_blas_thread():
        for start in start_points:
            result = run(np.clip(start, lower, upper))
            if np.isfinite(result.fun):
                finished.append(result)
        best = min(finished, key=lambda r: r.fun, default=None)
        if best is None:
            raise ValueError(f"{form.name}: the objective is not finite at any start; check the losses")
        success = bool(best.success)
        if not success:
            # With delta = 1e-3 most residuals sit on the Huber's linear arm, whose kinks can end
            # a line search early. Restart once from the result: if that finds no further
            # descent, the point is a minimum for all practical purposes.
            again = run(best.x)
            if again.fun <= best.fun:
                success = bool(again.success) or (best.fun - again.fun) <= 1e-10 * max(1.0, abs(best.fun))
                best = again
    theta = np.asarray(best.x, dtype=float)
    local_optima, local_objectives = _distinct_end_points(finished)
    result = FitResult(
        law=form.name,
        parameters=form.to_parameters(theta),
        theta=tuple(float(v) for v in theta),
        status=_status(form, theta, success),
        objective=float(best.fun),
        n_points=n_points,
        n_starts=len(start_points),
        message=str(best.message),
        local_optima=local_optima,
        local_objectives=local_objectives,
    )
    if key is not None:
        _reused[key] = result
    return result
