"""One L(N, D) law fitted to a sweep with everything reported about it, as one frozen result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scaling.bootstrap import BootstrapFits, bootstrap_law, parameter_draws, percentile_interval
from scaling.diagnostics import (HeldOutError, HeldOutTokens, RunResiduals, leave_largest_out, leave_longest_out,
                                 residuals_per_run)
from scaling.fitting import FitResult, bound_hits, fit_law
from scaling.forms import LawForm
from scaling.observations import SweepObservations


# The sparsity exponent of a compression model is identified only if its 95% bootstrap interval
# spans at most this factor (high / low). The L(N, D) laws are judged by their prediction instead
# (`decade_prediction`): E and the exponents trade off, so an exponent can be loose while the loss
# the law predicts, which is all a plan uses, is pinned.
MAX_EXPONENT_SPAN = 3.0
DECADE = 10.0  # the prediction judged: this many times the fit set's largest compute


def decade_prediction(form: LawForm, fit: FitResult, thetas: np.ndarray, N: float, D: float) -> dict | None:
    """The loss ``form`` predicts at DECADE times the compute of the point (N, D), the fit set's largest,
    at its tokens per parameter (N and D each times sqrt(DECADE)), with the 95% bootstrap interval over
    ``thetas`` (R, P); and ``drop``, the log-loss the point estimate falls by over that decade. None
    without usable draws."""
    usable = thetas[np.isfinite(thetas).all(axis=1)]
    if not len(usable):
        return None
    x = {"N": np.array([N * DECADE**0.5]), "D": np.array([D * DECADE**0.5])}
    log_now, _ = form.log_loss(np.asarray(fit.theta), {"N": np.array([N]), "D": np.array([D])}, jacobian=False)
    log_then, _ = form.log_loss(np.asarray(fit.theta), x, jacobian=False)
    draws, _ = form.log_loss(usable, x, jacobian=False)  # (R, 1)
    low, high = percentile_interval(draws[:, 0])
    return {"N": float(x["N"][0]), "D": float(x["D"][0]), "compute_factor": DECADE,
            "loss": float(np.exp(log_then.ravel()[0])), "low": float(np.exp(low)), "high": float(np.exp(high)),
            "half_width": float((high - low) / 2), "drop": float(log_now.ravel()[0] - log_then.ravel()[0])}


def judge_identification(form: LawForm, fit: FitResult, intervals: dict[str, tuple[float, float]],
                         exponents: tuple[str, ...] = (), bootstrap: BootstrapFits | None = None,
                         prediction: dict | None = None) -> tuple[str, str]:
    """(status, reason) of a fitted law: "converged", "unstable", "unidentified" or "not_converged".

    Unstable: fewer than MIN_CONVERGED_SHARE of the ``bootstrap`` refits converged, so the
    intervals (and any judgement made from them) rest on a selected few resamples.

    Unidentified: a fitted coordinate sits on its bound (the data do not constrain it, so the
    optimiser ran to the edge); or, for an L(N, D) law, its ``prediction`` one decade of compute past
    the fit set (`decade_prediction`) is looser than the change it predicts: the 95% interval's
    half-width in log loss exceeds the drop in log loss over that decade, so the fit cannot tell, at
    95%, what another decade of compute buys; or the 95% interval of one of ``exponents`` (a
    compression model's) spans more than MAX_EXPONENT_SPAN. Without bootstrap draws only the bounds
    can be judged.
    """
    if fit.status == "not_converged":
        return "not_converged", f"the optimiser stopped without meeting its tolerances ({fit.message})"
    unstable = bootstrap.stability() if bootstrap is not None else None
    if unstable:
        return "unstable", unstable
    problems = bound_hits(form, fit.theta)
    judged = []
    if prediction is not None:
        judged.append(f"the loss at {prediction['compute_factor']:g}x the largest compute, 95% interval "
                      f"[{prediction['low']:.4g}, {prediction['high']:.4g}] (±{np.expm1(prediction['half_width']):.1%}"
                      f") against a drop of {-np.expm1(-prediction['drop']):.1%} over that decade")
        if not prediction["half_width"] < prediction["drop"]:
            problems.append(f"the prediction is not pinned: {judged[-1]}")
    for name in exponents:
        low, high = intervals.get(name, (np.nan, np.nan))
        if not (np.isfinite(low) and np.isfinite(high)):
            continue
        span = high / low if low > 0 else np.inf
        judged.append(f"{name}'s 95% interval spans {span:.3g}x")
        if span > MAX_EXPONENT_SPAN:
            problems.append(f"{name}'s 95% interval [{low:.3g}, {high:.3g}] spans {span:.3g}x "
                            f"(more than {MAX_EXPONENT_SPAN:g}x)")
    if problems:
        return "unidentified", "; ".join(problems)
    if not judged:
        return "converged", "no bootstrap draws: identification judged by the bounds only"
    return "converged", "no parameter on a bound; " + "; ".join(judged)


@dataclass(frozen=True)
class LawFit:
    """A law fitted to a sweep: point estimate, bootstrap intervals, held-out error, residuals."""

    form: LawForm
    fit: FitResult  # on every point used (see SweepObservations.points)
    bootstrap: BootstrapFits  # refits on run resamples
    intervals: dict[str, tuple[float, float]]  # parameter name -> (low, high); NaN without draws
    heldout: HeldOutError | None  # leave-largest-out; None with fewer than 4 model sizes
    heldout_tokens: HeldOutTokens | None  # leave-longest-out; None without several D per run
    residuals: tuple[RunResiduals, ...]  # per run, in run order
    status: str  # "converged", "unstable", "unidentified" or "not_converged" (see judge_identification)
    reason: str  # why, in one sentence
    prediction: dict | None = None  # decade_prediction: what identification was judged by

    @property
    def parameters(self) -> Any:
        """The named point-estimate parameters, e.g. ChinchillaParameters."""
        return self.fit.parameters

    @property
    def heldout_error(self) -> float | None:
        """Mean relative error predicting the largest model's final loss, or None."""
        return None if self.heldout is None else self.heldout.relative_error


def fit_sweep_law(
    form: LawForm, observations: SweepObservations, run_counts: np.ndarray, final_only: bool = False
) -> LawFit:
    """Fit ``form`` to a sweep's (N, D, loss) points, bootstrap it over ``run_counts``
    (from `scaling.bootstrap.resample_runs`), and run the diagnostics."""
    table = observations.points(final_only)
    x = {"N": table.N, "D": table.D}
    fit = fit_law(form, x, table.loss)
    boot = bootstrap_law(form, x, table.loss, table.run_index, run_counts, fit)
    intervals = {}
    for name, samples in parameter_draws(form, boot.thetas).items():
        low, high = percentile_interval(samples)
        intervals[name] = (float(low), float(high))
    largest = int(np.argmax(table.C))
    prediction = decade_prediction(form, fit, boot.thetas, float(table.N[largest]), float(table.D[largest]))
    status, reason = judge_identification(form, fit, intervals, bootstrap=boot, prediction=prediction)
    return LawFit(
        status=status,
        reason=reason,
        prediction=prediction,
        form=form,
        fit=fit,
        bootstrap=boot,
        intervals=intervals,
        heldout=leave_largest_out(form, observations, table),
        heldout_tokens=leave_longest_out(form, observations, table),
        residuals=tuple(residuals_per_run(form, fit, observations, table)),
    )
