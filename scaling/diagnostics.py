"""Diagnostics of a fitted L(N, D) law: held-out extrapolation in N and in D, residuals per run.

A law that fits every point well can still extrapolate badly, and extrapolation is its use: a
plan asks for larger models and longer runs than the sweep trained. So the held-out errors refit
the law without the largest model size (all seeds of it) and predict that size's final loss
(`leave_largest_out`), and refit it without every run's longest finished point and predict those
(`leave_longest_out`), which says how the law extrapolates in D and in which direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.fitting import FitResult, fit_law
from scaling.forms import LawForm
from scaling.observations import MIN_MODEL_SIZES, MIN_TOKEN_COUNTS, PointTable, SweepObservations


@dataclass(frozen=True)
class HeldOutError:
    """How well a law fitted without the largest model size predicts that size's final loss."""

    held_out_runs: tuple[str, ...]  # every run of the largest size
    params: float  # that size
    predicted_final_loss: tuple[float, ...]  # per held-out run
    observed_final_loss: tuple[float, ...]
    relative_error: float  # mean over held-out runs of |predicted / observed - 1|
    fit_status: str  # status of the fit on the remaining runs


def leave_largest_out(form: LawForm, observations: SweepObservations, table: PointTable) -> HeldOutError | None:
    """Refit ``form`` on all runs but those of the largest N and predict their final losses.

    The refit starts from the form's grid, as the full fit does, and never from the full fit's
    optimum: that optimum saw the held-out runs, and starting next to it would let them steer
    the refit into their basin. A run's final loss is that of its final model (the finished
    point with the most tokens). Returns None when fewer than MIN_MODEL_SIZES sizes would
    remain, too few to identify the law. ``table`` is the point set the law was fitted on.
    """
    sizes = np.array([r.params for r in observations.runs])
    largest = sizes.max()
    if len(np.unique(sizes[sizes < largest])) < MIN_MODEL_SIZES:
        return None
    held_out = np.flatnonzero(sizes == largest)
    weights = (~np.isin(table.run_index, held_out)).astype(float)
    x = {"N": table.N, "D": table.D}
    fit = fit_law(form, x, table.loss, weights)
    runs = [observations.runs[i] for i in held_out]
    final = {"N": np.full(len(runs), largest), "D": np.array([r.final_tokens for r in runs])}
    predicted = form.predict(fit.parameters, **final)
    observed = np.array([r.final_loss for r in runs])
    return HeldOutError(
        held_out_runs=tuple(r.run_id for r in runs),
        params=float(largest),
        predicted_final_loss=tuple(float(v) for v in predicted),
        observed_final_loss=tuple(float(v) for v in observed),
        relative_error=float(np.mean(np.abs(predicted / observed - 1.0))),
        fit_status=fit.status,
    )


@dataclass(frozen=True)
class HeldOutTokens:
    """How well a law fitted without each run's longest finished point predicts those points."""

    held_out_tokens: tuple[float, ...]  # per run with more than one finished point, its longest D
    tokens_ratio: float  # median over those runs of held-out D / the run's longest D kept
    predicted_loss: tuple[float, ...]
    observed_loss: tuple[float, ...]
    relative_error: float  # mean |predicted / observed - 1|
    bias: float  # mean (predicted / observed - 1): > 0, the law overestimates the loss of longer runs
    fit_status: str  # status of the fit on the remaining points


def leave_longest_out(form: LawForm, observations: SweepObservations, table: PointTable) -> HeldOutTokens | None:
    """Refit ``form`` without the finished point of largest D of every run that has several, and predict them.

    The refit starts from the form's grid (as `leave_largest_out` does). Returns None when no run has
    two finished points in ``table`` or fewer than MIN_TOKEN_COUNTS distinct D would remain.
    """
    held = np.zeros(len(table.D), dtype=bool)
    ratios = []
    for i in range(len(observations.runs)):
        mine = np.flatnonzero(table.run_index == i)
        if len(np.unique(table.D[mine])) < 2:
            continue
        longest = table.D[mine].max()
        held[mine[table.D[mine] == longest]] = True
        ratios.append(longest / table.D[mine][table.D[mine] < longest].max())
    if not held.any() or len(np.unique(table.D[~held])) < MIN_TOKEN_COUNTS:
        return None
    fit = fit_law(form, {"N": table.N, "D": table.D}, table.loss, (~held).astype(float))
    predicted = form.predict(fit.parameters, N=table.N[held], D=table.D[held])
    observed = table.loss[held]
    error = predicted / observed - 1.0
    return HeldOutTokens(
        held_out_tokens=tuple(float(d) for d in table.D[held]),
        tokens_ratio=float(np.median(ratios)),
        predicted_loss=tuple(float(v) for v in predicted),
        observed_loss=tuple(float(v) for v in observed),
        relative_error=float(np.mean(np.abs(error))),
        bias=float(np.mean(error)),
        fit_status=fit.status,
    )


@dataclass(frozen=True)
class RunResiduals:
    """Log residuals, log(predicted) - log(observed) (about the relative error), of one run."""

    run_id: str
    n_points: int
    mean: float  # > 0: the law overestimates this run's loss on average
    rms: float
    final: float  # at the run's last evaluation


def residuals_per_run(
    form: LawForm, fit: FitResult, observations: SweepObservations, table: PointTable
) -> list[RunResiduals]:
    """Residuals of ``fit`` on each run's points in ``table``, in run order."""
    predicted = form.predict(fit.parameters, N=table.N, D=table.D)
    residual = np.log(predicted) - np.log(table.loss)
    out = []
    for i, run in enumerate(observations.runs):
        mine = residual[table.run_index == i]
        if mine.size == 0:
            continue
        out.append(
            RunResiduals(
                run_id=run.run_id,
                n_points=int(mine.size),
                mean=float(mine.mean()),
                rms=float(np.sqrt(np.mean(mine**2))),
                final=float(mine[-1]),
            )
        )
    return out
