"""What a sweep measured, as validated arrays: learning curves and compressed variants.

`scaling` does not read run directories (that is `tlc fit`'s job); it takes these objects,
which check their own fields and raise ValueError naming the run, the field and what would
be valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_MODEL_SIZES = 3  # distinct N: E, A and alpha are not identified by fewer
MIN_TOKEN_COUNTS = 3  # distinct D: likewise for E, B and beta
MIN_POINTS = 10  # twice the parameters of the largest law (Chinchilla's five)


def _positive_finite(run_id: str, field: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"run {run_id}: {field} must be finite and > 0, got {values[i]!r} at point {i}")


@dataclass(frozen=True, eq=False)
class RunCurve:
    """One trained model's evaluations: validation loss against tokens and training FLOPs.

    non_embedding_params is N in every law; tokens is D; train_flops is C. Points are in
    training order; points at step 0 (no tokens seen) must already be dropped.
    """

    run_id: str
    non_embedding_params: float
    tokens: np.ndarray  # (n,) training tokens seen at each evaluation
    train_flops: np.ndarray  # (n,) training FLOPs spent at each evaluation
    val_loss: np.ndarray  # (n,) validation loss, nats per token

    def __post_init__(self) -> None:
        for field in ("tokens", "train_flops", "val_loss"):
            object.__setattr__(self, field, np.asarray(getattr(self, field), dtype=float).ravel())
        n = len(self.val_loss)
        if n == 0:
            raise ValueError(f"run {self.run_id}: val_loss has no points after dropping step 0")
        if len(self.tokens) != n or len(self.train_flops) != n:
            raise ValueError(
                f"run {self.run_id}: tokens, train_flops and val_loss must have equal lengths, "
                f"got {len(self.tokens)}, {len(self.train_flops)}, {n}"
            )
        if not (math.isfinite(self.non_embedding_params) and self.non_embedding_params > 0):
            raise ValueError(f"run {self.run_id}: non_embedding_params must be > 0, got {self.non_embedding_params!r}")
        for field in ("tokens", "train_flops", "val_loss"):
            _positive_finite(self.run_id, field, getattr(self, field))

    @property
    def final_loss(self) -> float:
        """Validation loss at the last evaluation: the dense baseline for compression."""
        return float(self.val_loss[-1])


@dataclass(frozen=True)
class CompressedVariant:
    """One compressed copy of a trained run: pruning method and sparsity, bit width, loss."""

    run_id: str
    method: str  # "magnitude", "block", "structured", "2:4", "gradual" or "none"
    sparsity: float  # fraction of prunable weights set to zero, in [0, 1)
    bits: int  # 32 or 8
    val_loss: float
    dense_loss: float | None = None  # the dense model's loss as the compression stage measured it

    def __post_init__(self) -> None:
        if not (0.0 <= self.sparsity < 1.0):
            raise ValueError(f"run {self.run_id}: sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.bits not in (8, 32):
            raise ValueError(f"run {self.run_id}: bits must be 32 or 8, got {self.bits!r}")
        if not (math.isfinite(self.val_loss) and self.val_loss > 0):
            raise ValueError(f"run {self.run_id}: compressed val_loss must be finite and > 0, got {self.val_loss!r}")
        if self.dense_loss is not None and not (math.isfinite(self.dense_loss) and self.dense_loss > 0):
            raise ValueError(f"run {self.run_id}: dense_val_loss must be finite and > 0, got {self.dense_loss!r}")


@dataclass(frozen=True)
class PointTable:
    """Every (N, D, C, L) point used by the joint laws, with the run each came from."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    run_index: np.ndarray  # (n,) index into SweepObservations.runs


@dataclass(frozen=True)
class SweepObservations:
    """All runs of a sweep and their compressed variants."""

    runs: tuple[RunCurve, ...]
    variants: tuple[CompressedVariant, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "variants", tuple(self.variants))
        ids = [r.run_id for r in self.runs]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"runs: run ids must be unique, got duplicates {duplicated}")
        unknown = sorted({v.run_id for v in self.variants} - set(ids))
        if unknown:
            raise ValueError(f"variants: compressed variants name runs that are not in the sweep: {unknown}")

    def run_position(self, run_id: str) -> int:
        """Index of a run in ``runs``."""
        return [r.run_id for r in self.runs].index(run_id)

    def points(self, final_only: bool = False) -> PointTable:
        """Points for the joint laws: every evaluation of every run, or each run's last one."""
        last = slice(-1, None) if final_only else slice(None)
        curves = [(i, r.tokens[last], r.train_flops[last], r.val_loss[last]) for i, r in enumerate(self.runs)]
        return PointTable(
            N=np.concatenate([np.full(len(d), self.runs[i].non_embedding_params) for i, d, _, _ in curves]),
            D=np.concatenate([d for _, d, _, _ in curves]),
            C=np.concatenate([c for _, _, c, _ in curves]),
            loss=np.concatenate([loss for _, _, _, loss in curves]),
            run_index=np.concatenate([np.full(len(d), i) for i, d, _, _ in curves]),
        )

    def check_identifiable(self, final_only: bool = False) -> None:
        """Raise ValueError if the sweep cannot identify a five-parameter L(N, D) law."""
        table = self.points(final_only)
        sizes, tokens = len(np.unique(table.N)), len(np.unique(table.D))
        problems = []
        if len(self.runs) < 2:
            problems.append(f"{len(self.runs)} run(s); a scaling law needs runs of at least {MIN_MODEL_SIZES} sizes")
        elif sizes < MIN_MODEL_SIZES:
            problems.append(f"{sizes} distinct model size(s) (non_embedding params); need at least {MIN_MODEL_SIZES}")
        if tokens < MIN_TOKEN_COUNTS:
            hint = " (with final-only fitting every run must end at a different token count)" if final_only else ""
            problems.append(f"{tokens} distinct token count(s); need at least {MIN_TOKEN_COUNTS}{hint}")
        if len(table.loss) < MIN_POINTS:
            problems.append(f"{len(table.loss)} points; need at least {MIN_POINTS}")
        if problems:
            raise ValueError("sweep too small to fit L(N, D): " + "; ".join(problems))
