"""Scaling laws for training and compression: forms, fitting, bootstrap intervals, allocation.

Imports numpy and scipy only (never torch, never `tlc`). The entry points:

- `fit_sweep_observations(SweepObservations(...), bootstrap=200, seed=0)` -> fit.json's dict
- `load_fit(dict)` -> `FittedSweep`, whose `predict_loss(N, D, method, sparsity, int8)` gives
  (mean, low, high) and `compute_optimal(C)` gives (N_opt, D_opt)
- `fit_sweep_law(form, observations, resample_runs(...))` -> `LawFit`: one law with its
  intervals, status, held-out error and residuals
- the building blocks: the forms in `scaling.forms` and `scaling.compression`, `fit_law`,
  `bootstrap_law`, `chinchilla_allocation`, `optimal_allocation`, `leave_largest_out`.
"""

from scaling.allocation import ChinchillaAllocation, allocation_exponents, chinchilla_allocation, optimal_allocation
from scaling.bootstrap import BootstrapFits, bootstrap_law, percentile_interval, resample_runs
from scaling.diagnostics import HeldOutError, leave_largest_out, residuals_per_run
from scaling.fitted import FittedLaw, FittedSweep, load_fit
from scaling.fitting import HUBER_DELTA, FitResult, fit_law
from scaling.forms import (
    LAWS,
    PUBLISHED_BESIROGLU,
    PUBLISHED_CHINCHILLA,
    ChinchillaForm,
    ChinchillaParameters,
    KaplanForm,
    KaplanParameters,
    LearningCurveForm,
    LearningCurveParameters,
    chinchilla_loss,
    kaplan_loss,
    learning_curve_loss,
)
from scaling.frontier import Frontier, compute_frontier, fit_frontier, fit_learning_curve
from scaling.law_fit import LawFit, fit_sweep_law
from scaling.observations import CompressedVariant, RunCurve, SweepObservations
from scaling.sweep_fit import FORMAT, fit_sweep_observations

__all__ = [
    "BootstrapFits",
    "ChinchillaAllocation",
    "ChinchillaForm",
    "ChinchillaParameters",
    "CompressedVariant",
    "FORMAT",
    "FitResult",
    "FittedLaw",
    "FittedSweep",
    "Frontier",
    "HUBER_DELTA",
    "HeldOutError",
    "KaplanForm",
    "KaplanParameters",
    "LAWS",
    "LawFit",
    "LearningCurveForm",
    "LearningCurveParameters",
    "PUBLISHED_BESIROGLU",
    "PUBLISHED_CHINCHILLA",
    "RunCurve",
    "SweepObservations",
    "allocation_exponents",
    "bootstrap_law",
    "chinchilla_allocation",
    "chinchilla_loss",
    "compute_frontier",
    "fit_frontier",
    "fit_law",
    "fit_learning_curve",
    "fit_sweep_law",
    "fit_sweep_observations",
    "kaplan_loss",
    "learning_curve_loss",
    "leave_largest_out",
    "load_fit",
    "optimal_allocation",
    "percentile_interval",
    "resample_runs",
    "residuals_per_run",
]
