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


# A law is identified by the data only if its exponents are pinned down: the 95% bootstrap
# interval of each may span at most this factor (high / low).
MAX_EXPONENT_SPAN = 3.0
EXPONENTS = {"chinchilla": ("alpha", "beta"), "kaplan": ("alpha_N", "alpha_D"), "power_sum": ("alpha", "beta"),
             "overtraining": ("alpha",)}


def judge_identification(form: LawForm, fit: FitResult, intervals: dict[str, tuple[float, float]],
                         exponents: tuple[str, ...] | None = None,
                         bootstrap: BootstrapFits | None = None) -> tuple[str, str]:
    """(status, reason) of a fitted law: "converged", "unstable", "unidentified" or "not_converged".

    Unstable: fewer than MIN_CONVERGED_SHARE of the ``bootstrap`` refits converged, so the
    intervals (and any judgement made from them) rest on a selected few resamples.

    Unidentified: a fitted coordinate sits on its bound (the data do not constrain it, so the
    optimiser ran to the edge), or the 95% interval of an exponent (``exponents``, by default the
    law's in EXPONENTS) spans more than MAX_EXPONENT_SPAN. Without bootstrap draws only the
    bounds can be judged.
    """
    if fit.status == "not_converged":
        return "not_converged", f"the optimiser stopped without meeting its tolerances ({fit.message})"
    unstable = bootstrap.stability() if bootstrap is not None else None
    if unstable:
        return "unstable", unstable
    problems = bound_hits(form, fit.theta)
    judged = []
    for name in EXPONENTS.get(form.name, ()) if exponents is None else exponents:
        low, high = intervals.get(name, (np.nan, np.nan))
        if not (np.isfinite(low) and np.isfinite(high)):
            continue
        judged.append(name)
        span = high / low if low > 0 else np.inf
        if span > MAX_EXPONENT_SPAN:
            problems.append(f"{name}'s 95% interval [{low:.3g}, {high:.3g}] spans {span:.3g}x "
                            f"(more than {MAX_EXPONENT_SPAN:g}x)")
    if problems:
        return "unidentified", "; ".join(problems)
    if not judged:
        return "converged", "no bootstrap draws: identification judged by the bounds only"
    spans = ", ".join(f"{n} {intervals[n][1] / intervals[n][0]:.3g}x" for n in judged)
    return "converged", f"no parameter on a bound; 95% interval spans: {spans}"


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
    status, reason = judge_identification(form, fit, intervals, bootstrap=boot)
    return LawFit(
        status=status,
        reason=reason,
        form=form,
        fit=fit,
        bootstrap=boot,
        intervals=intervals,
        heldout=leave_largest_out(form, observations, table),
        heldout_tokens=leave_longest_out(form, observations, table),
        residuals=tuple(residuals_per_run(form, fit, observations, table)),
    )
