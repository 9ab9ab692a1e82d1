"""Choosing the law to predict with, and how far to trust it past the fit set: the compute hold-out.

A plan reaches past a sweep in compute, often by 10-1000x, and the law that fits the small end best
need not extrapolate best (on Gadre et al.'s runs the forms without an irreducible term fit the small
runs as well as any, and miss the 6.9B model by 15%). So each law is also refitted without the runs
in the top decade of the fit set's compute (`compute_holdout`) and asked to predict them: that is the
extrapolation the law will be used for, at a tenth of the distance, measured on the fit set alone.

The rule (`scaling.sweep_fit.preferred_law`): among converged laws with an irreducible term E (laws
without a floor only where none with one converged: they predict the loss falling forever, and at 300x
past Gadre et al.'s fit set they ran 15% low where the hold-out at 10x could not tell them apart), the
lowest root-mean-square log error on the compute hold-out; without a hold-out (too few sizes below the
cut), the lowest leave-largest-out and leave-longest-out error (`scaling.sweep_fit.extrapolation_error`).
"Converged" judges a law by its prediction one decade past the fit set, not by its exponents
(`scaling.law_fit.judge_identification`). The same hold-out sizes the prediction
interval's extra terms (`predictive_spread`): the scatter of single runs about the law, and an error
that grows with each decade of compute extrapolation, fitted to the hold-out's errors.
"""

from __future__ import annotations

import math

import numpy as np

from scaling.fitting import FitResult, fit_law
from scaling.forms import LawForm
from scaling.observations import MIN_MODEL_SIZES, MIN_POINTS, PointTable, SweepObservations

COMPUTE_CUT = 10.0  # runs above 1/COMPUTE_CUT of the fit set's largest compute are held out


def compute_holdout(form: LawForm, observations: SweepObservations, table: PointTable) -> dict | None:
    """Refit ``form`` without every run whose largest compute exceeds 1/COMPUTE_CUT of the fit set's
    largest, and predict those runs' points. None when the rest has fewer than MIN_MODEL_SIZES sizes or
    MIN_POINTS points. Errors are log(predicted / observed); factors each point's compute over the
    largest compute kept."""
    run_compute = np.array([r.finished_flops.max() for r in observations.runs])
    held_runs = np.flatnonzero(run_compute > run_compute.max() / COMPUTE_CUT)
    held = np.isin(table.run_index, held_runs)
    if (not held.any() or len(np.unique(table.N[~held])) < MIN_MODEL_SIZES or int((~held).sum()) < MIN_POINTS):
        return None
    # the full fit's tolerances: with the bootstrap's looser ones, Chinchilla's refit on Gadre et al.'s C4 fit set
    # stopped early yet "converged", its held-out error 6.5% against 3.4% converged, which chose the law
    fit = fit_law(form, {"N": table.N, "D": table.D}, table.loss, (~held).astype(float))
    predicted = form.predict(fit.parameters, N=table.N[held], D=table.D[held])
    errors = np.log(predicted / table.loss[held])
    factors = table.C[held] / table.C[~held].max()
    return {"cut": COMPUTE_CUT, "n_runs": int(len(held_runs)), "n_points": int(held.sum()),
            "rms_log_error": float(np.sqrt(np.mean(errors**2))), "max_relative_error": float(np.max(np.abs(
                np.expm1(errors)))), "bias": float(np.mean(errors)), "errors": errors.tolist(),
            "factors": factors.tolist(), "fit_status": fit.status, "N": table.N[held].tolist(),
            "D": table.D[held].tolist(), "observed": table.loss[held].tolist(), "predicted": predicted.tolist()}


def predictive_spread(form: LawForm, fit: FitResult, table: PointTable, holdout: dict | None) -> dict:
    """The terms a prediction interval adds to the bootstrap's: ``residual_sd`` (log scatter of single
    points about the law) and ``sd_per_decade`` (log error per decade of compute past the fit set,
    least squares of the hold-out's squared errors less the scatter on squared decades)."""
    residual = np.log(form.predict(fit.parameters, N=table.N, D=table.D) / table.loss)
    residual_sd = float(np.sqrt(np.mean(residual**2)))
    per_decade = 0.0
    if holdout:
        decades = np.log10(np.maximum(np.asarray(holdout["factors"]), 1.0))
        excess = np.maximum(np.asarray(holdout["errors"]) ** 2 - residual_sd**2, 0.0)
        if (decades > 0).any():
            per_decade = float(math.sqrt(np.sum(excess * decades**2) / np.sum(decades**4)))
    return {"residual_sd": residual_sd, "sd_per_decade": per_decade, "largest_compute": float(table.C.max()),
            "equation": "log-sd = sqrt(residual_sd^2 + (sd_per_decade * log10(max(1, C / largest_compute)))^2)"}


def extra_log_sd(spread: dict | None, compute: float) -> float:
    """The log-sd a prediction at ``compute`` FLOPs adds to the bootstrap's spread (0 without a spread)."""
    if not spread:
        return 0.0
    decades = math.log10(max(1.0, compute / spread["largest_compute"]))
    return math.hypot(spread["residual_sd"], spread["sd_per_decade"] * decades)
