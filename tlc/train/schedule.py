"""Learning-rate schedules, evaluation steps and cooldown branches of one run (pure functions).

Two schedules (``train.schedule``):

- ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio`` of the peak at the run's
  last step. A run yields one finished-run point, its last evaluation.
- ``wsd`` (warmup-stable-decay; Hagele et al. 2024, "Scaling Laws and Compute-Optimal
  Training Beyond Fixed Training Durations"): linear warmup, then the peak rate held
  constant on a trunk. At each fork (``train.cooldowns``, fractions of the run's steps) a
  branch copies the trunk and decays the rate to zero over ``cooldown_frac`` of the fork's
  steps; the trunk then continues from the fork as if the branch had not happened. Each
  branch end is a finished-run point, so one run yields one per fork.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tlc.config import TrainSettings
from tlc.errors import UserError


def warmup_steps(total_steps: int, warmup_frac: float) -> int:
    """Optimizer steps of linear warmup: a share of the run's steps, at least one when asked for."""
    return max(1, round(warmup_frac * total_steps)) if warmup_frac > 0 else 0


def get_lr(step: int, total_steps: int, peak_lr: float, warmup_frac: float, min_lr_ratio: float) -> float:
    """Cosine schedule: learning rate for optimizer step ``step`` (0-based)."""
    warmup = warmup_steps(total_steps, warmup_frac)
    # 1) linear warmup from peak/warmup to peak
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    # 2) cosine decay from peak to min_lr_ratio * peak over the remaining steps
    progress = (step - warmup) / max(1, total_steps - warmup)
    min_lr = peak_lr * min_lr_ratio
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def trunk_lr(step: int, total_steps: int, peak_lr: float, warmup_frac: float) -> float:
    """WSD trunk: linear warmup over the same steps as the cosine schedule, then the peak, constant."""
    warmup = warmup_steps(total_steps, warmup_frac)
    return peak_lr * (step + 1) / warmup if step < warmup else peak_lr


def cooldown_lr(step: int, branch_steps: int, peak_lr: float) -> float:
    """WSD branch: step ``step`` (0-based) of a branch of ``branch_steps``, decaying from the peak towards zero.

    The 1-sqrt shape, which Hagele et al. 2024 (sec. 3, fig. 5) found to match or beat a full
    cosine schedule; the fraction runs over (0, 1) exclusive, so no step is spent at rate zero.
    """
    return peak_lr * (1.0 - math.sqrt((step + 1) / (branch_steps + 1)))


@dataclass(frozen=True)
class Branch:
    """One cooldown branch: it forks from the trunk after ``fork_step`` steps and trains ``steps`` more."""

    fork_step: int  # trunk optimizer steps before the fork
    steps: int  # optimizer steps of the decay

    @property
    def end_step(self) -> int:
        """Optimizer steps the branch's model has taken in all, trunk included (its D is this x tokens per step)."""
        return self.fork_step + self.steps

    @property
    def checkpoint_step(self) -> int:
        """Branch step (1-based) after which the branch is checkpointed, so a kill inside it resumes inside it."""
        return max(1, self.steps // 2)


def plan_branches(train: TrainSettings, total_steps: int) -> tuple[Branch, ...]:
    """The cooldown branches of a ``wsd`` run of ``total_steps`` trunk steps (none under cosine).

    Raises UserError naming train.cooldowns when two forks land on one step or a fork on step 0.
    """
    if train.schedule != "wsd":
        return ()
    forks = [round(f * total_steps) for f in train.cooldowns]
    for fraction, step in zip(train.cooldowns, forks):
        if step < 1:
            raise UserError(f"train.cooldowns: the fork at {fraction} of {total_steps} optimizer steps is before the "
                            "first step; use later forks or a larger budget")
    for (fa, a), (fb, b) in zip(zip(train.cooldowns, forks), zip(train.cooldowns[1:], forks[1:])):
        if a == b:
            raise UserError(f"train.cooldowns: forks {fa} and {fb} both land on step {a} of {total_steps}; "
                            "space them further apart or give the run a larger budget")
    return tuple(Branch(step, max(1, round(train.cooldown_frac * step))) for step in forks)


def eval_schedule(total_steps: int, evals: int, forks: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Steps spaced evenly in log FLOPs (FLOPs grow linearly with steps); always ends at the last step.

    ``forks`` (WSD fork steps) are added: the trunk is evaluated and checkpointed at each.
    """
    if evals >= total_steps:
        steps = set(range(1, total_steps + 1))
    else:
        steps = {int(round(p)) for p in np.geomspace(1, total_steps, num=evals)} | {total_steps}
    return tuple(sorted(steps | set(forks)))
