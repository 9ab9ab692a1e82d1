"""One L(N, D) law fitted to a sweep with everything reported about it, as one frozen result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scaling.bootstrap import BootstrapFits, bootstrap_law, parameter_draws, percentile_interval
from scaling.diagnostics import HeldOutError, RunResiduals, leave_largest_out, residuals_per_run
from scaling.fitting import FitResult, fit_law
from scaling.forms import LawForm
from scaling.observations import SweepObservations


@dataclass(frozen=True)
class LawFit:
    """A law fitted to a sweep: point estimate, bootstrap intervals, held-out error, residuals."""

    form: LawForm
    fit: FitResult  # on every point used (see SweepObservations.points)
    bootstrap: BootstrapFits  # refits on run resamples
    intervals: dict[str, tuple[float, float]]  # parameter name -> (low, high); NaN without draws
    heldout: HeldOutError | None  # leave-largest-out; None with fewer than 4 model sizes
    residuals: tuple[RunResiduals, ...]  # per run, in run order

    @property
    def parameters(self) -> Any:
        """The named point-estimate parameters, e.g. ChinchillaParameters."""
        return self.fit.parameters

    @property
    def status(self) -> str:
        """The full fit's status: "converged", "hit_bound" or "not_converged"."""
        return self.fit.status

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
    return LawFit(
        form=form,
        fit=fit,
        bootstrap=boot,
        intervals=intervals,
        heldout=leave_largest_out(form, observations, table, start=np.asarray(fit.theta)),
        residuals=tuple(residuals_per_run(form, fit, observations, table)),
    )
