"""What a planned model costs to train besides its FLOPs: the data it repeats and the wall time it takes.

**Repeated data.** A corpus of U unique training tokens trained on for D > U tokens gives less
than D tokens' worth of learning. Muennighoff et al. 2023 ("Scaling Data-Constrained Language
Models", eq. 5) model the effective data as

    D' = U + U * R* * (1 - exp(-R / R*)),   R = D/U - 1 repetitions beyond the first epoch,

with R* ≈ 15.4 fitted on their runs: repeated tokens are worth less and less, and D' never
exceeds U * (1 + R*). The planner evaluates the law at D' and refuses plans above --max-epochs.

**Wall time.** A duration budget needs seconds per training token as a function of shape. It is
fitted to the sweep's own runs on their own hardware (final wall_s / final tokens of each run's
metrics.jsonl against its FLOPs per token from config.json) as a power law,

    seconds_per_token = exp(a) * flops_per_token^b,

by least squares in log space; its error is the leave-one-run-out RMS relative error of the
predicted training time, shown in plan.json and the printed plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlc.errors import UserError
from tlc.io import list_runs, read_jsonl

R_STAR = 15.4  # Muennighoff et al. 2023, R*_D fitted in their section 3
DEFAULT_MAX_EPOCHS = 4.0  # their finding: up to about 4 epochs are almost as good as unique data


@dataclass(frozen=True)
class DataLimit:
    """The corpus's unique training tokens and the most epochs a plan may take over them."""

    unique_tokens: float
    max_epochs: float
    r_star: float = R_STAR

    def effective_tokens(self, tokens) -> np.ndarray:
        """D' of the module docstring, vectorised; D itself up to one epoch."""
        D = np.asarray(tokens, dtype=float)
        U = self.unique_tokens
        repeats = np.maximum(D / U - 1.0, 0.0)
        return np.where(D <= U, D, U + U * self.r_star * (-np.expm1(-repeats / self.r_star)))

    def describe(self) -> dict:
        """JSON-ready summary for plan.json."""
        return {"unique_tokens": self.unique_tokens, "max_epochs": self.max_epochs, "r_star": self.r_star,
                "equation": "D' = U + U R* (1 - exp(-(D/U - 1)/R*)) above one epoch",
                "source": "Muennighoff et al. 2023, Scaling Data-Constrained Language Models, eq. 5; "
                          "U from config.json data.train_tokens_available"}


@dataclass(frozen=True)
class ThroughputModel:
    """Seconds per training token against FLOPs per token (module docstring)."""

    log_a: float
    b: float
    n_runs: int
    loo_relative_error: float  # leave-one-run-out RMS relative error of predicted training time
    runs: tuple[str, ...]

    def seconds_per_token(self, flops_per_token) -> np.ndarray:
        """Predicted training seconds per token for models of ``flops_per_token``."""
        return np.exp(self.log_a + self.b * np.log(np.asarray(flops_per_token, dtype=float)))

    def describe(self) -> dict:
        """JSON-ready summary for plan.json."""
        return {"equation": "seconds_per_token = exp(a) * flops_per_token^b", "a": self.log_a, "b": self.b,
                "n_runs": self.n_runs, "loo_relative_error": self.loo_relative_error, "runs": list(self.runs),
                "source": "final wall_s / final tokens of each run's metrics.jsonl (training time only)"}


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    X = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(a), float(b)


def fit_throughput(runs_dir: Path | None, flag: str = "--budget") -> ThroughputModel:
    """Fit `ThroughputModel` to the runs under ``runs_dir``; UserError naming ``flag`` without timings."""
    points = []
    for run_dir in list_runs(runs_dir) if runs_dir is not None else []:
        try:
            fpt = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("flops_per_token")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        rows = [r for r in read_jsonl(run_dir / "metrics.jsonl")
                if isinstance(r.get("wall_s"), (int, float)) and r["wall_s"] > 0 and r.get("tokens")]
        if isinstance(fpt, (int, float)) and fpt > 0 and rows:
            last = max(rows, key=lambda r: r["tokens"])
            points.append((run_dir.name, float(fpt), float(last["wall_s"]) / float(last["tokens"])))
    if len({fpt for _, fpt, _ in points}) < 2:
        where = f"the runs under {runs_dir}" if runs_dir is not None else "a published law"
        raise UserError(f"{flag}: a duration needs a throughput model, and {where} record measured wall times "
                        f"for {len(points)} model size(s) (two or more needed); give the budget in FLOPs such as "
                        "1e17, or plan with --runs on a trained sweep")
    x = np.log([p[1] for p in points])
    y = np.log([p[2] for p in points])
    a, b = _fit(x, y)
    errors = []
    for i in range(len(points)):
        keep = np.arange(len(points)) != i
        if len(set(x[keep])) < 2:
            continue
        a_i, b_i = _fit(x[keep], y[keep])
        errors.append(math.expm1(a_i + b_i * x[i] - y[i]))
    loo = float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan
    return ThroughputModel(a, b, len(points), loo, tuple(p[0] for p in points))
