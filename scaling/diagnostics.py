"""Diagnostics of a fitted L(N, D) law: leave-the-largest-out extrapolation, residuals per run.

A law that fits every point well can still extrapolate badly, and extrapolation to larger
models is its use. So the held-out error refits the law without the largest model size (all
seeds of it) and reports how well it then predicts that size's final loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.fitting import FitResult, fit_law
from scaling.forms import LawForm
from scaling.observations import MIN_MODEL_SIZES, PointTable, SweepObservations


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
