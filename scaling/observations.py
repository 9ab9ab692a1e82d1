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
    """One trained model's evaluations, and the finished-run points it yielded.

    params is N in every law; tokens is D; train_flops is C. The learning curve
    (tokens, train_flops, val_loss) is every evaluation in training order, at whatever learning
    rate the schedule had reached; points at step 0 (no tokens seen) must already be dropped.
    A finished-run point is the loss of a model whose schedule ended there: the last evaluation
    of a cosine run, or the end of each cooldown branch of a warmup-stable-decay run (Hagele et
    al. 2024). Only those are what a run trained for exactly D tokens reaches, so the joint laws
    fit them by default. Without ``finished_*`` the last evaluation is the one finished point.
    """

    run_id: str
    params: float
    tokens: np.ndarray  # (n,) training tokens seen at each evaluation
    train_flops: np.ndarray  # (n,) training FLOPs spent at each evaluation
    val_loss: np.ndarray  # (n,) validation loss, nats per token
    finished_tokens: np.ndarray | None = None  # (m,) D of each finished-run point, increasing
    finished_flops: np.ndarray | None = None  # (m,) training FLOPs behind each (a branch's include the trunk's)
    finished_loss: np.ndarray | None = None  # (m,)
    # (m, 2) the finished points' loss on targets seen earlier in their window and on the rest
    # (tlc.train.evaluation), or None when any point lacks it (runs trained before it was recorded)
    finished_split: np.ndarray | None = None

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
        if not (math.isfinite(self.params) and self.params > 0):
            raise ValueError(f"run {self.run_id}: params must be > 0, got {self.params!r}")
        for field in ("tokens", "train_flops", "val_loss"):
            _positive_finite(self.run_id, field, getattr(self, field))
        finished = ("finished_tokens", "finished_flops", "finished_loss")
        given = [getattr(self, f) is not None for f in finished]
        if any(given) and not all(given):
            raise ValueError(f"run {self.run_id}: give all of finished_tokens, finished_flops, finished_loss or none")
        for field, source in zip(finished, ("tokens", "train_flops", "val_loss")):
            values = getattr(self, field)
            values = getattr(self, source)[-1:] if values is None else np.asarray(values, dtype=float).ravel()
            object.__setattr__(self, field, values)
        if not len(self.finished_loss) or not (len(self.finished_tokens) == len(self.finished_flops)
                                               == len(self.finished_loss)):
            raise ValueError(f"run {self.run_id}: finished_tokens, finished_flops and finished_loss must have equal, "
                             "non-zero lengths")
        for field in finished:
            _positive_finite(self.run_id, field, getattr(self, field))
        if self.finished_split is not None:
            split = np.asarray(self.finished_split, dtype=float).reshape(-1, 2)
            if len(split) != len(self.finished_loss):
                raise ValueError(f"run {self.run_id}: finished_split needs one (repeat, novel) pair per finished point")
            _positive_finite(self.run_id, "finished_split", split.ravel())
            object.__setattr__(self, "finished_split", split)

    @property
    def final_loss(self) -> float:
        """Loss of the run's final model (its finished point with the most tokens): the dense baseline
        for compression, and what leave-largest-out predicts."""
        return float(self.finished_loss[int(np.argmax(self.finished_tokens))])

    @property
    def final_tokens(self) -> float:
        """Tokens behind the run's final model."""
        return float(self.finished_tokens.max())


@dataclass(frozen=True)
class CompressedVariant:
    """One compressed copy of a trained run: pruning method and sparsity, bit width, loss."""

    run_id: str
    method: str  # "magnitude", "block", "structured", "2:4", "gradual", "wanda", "sparsegpt", "gptq", ... or "none"
    sparsity: float  # fraction of prunable weights set to zero, in [0, 1)
    bits: int  # 32, 8, or 4 (weight-only quantization such as gptq)
    val_loss: float
    dense_loss: float | None = None  # the dense model's loss as the compression stage measured it
    tokens: float | None = None  # D of the compressed checkpoint (a cooldown branch's end); None: the run's final

    def __post_init__(self) -> None:
        if not (0.0 <= self.sparsity < 1.0):
            raise ValueError(f"run {self.run_id}: sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.bits not in (4, 8, 32):
            raise ValueError(f"run {self.run_id}: bits must be 32, 8 or 4, got {self.bits!r}")
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
        """Points for the joint laws: each run's finished-run points (``final_only``), or every
        evaluation of every run plus the finished points that are not evaluations of its curve."""
        curves = []
        for i, r in enumerate(self.runs):
            if final_only:
                d, c, loss = r.finished_tokens, r.finished_flops, r.finished_loss
            else:
                extra = ~np.isin(r.finished_tokens, r.tokens)
                d = np.concatenate([r.tokens, r.finished_tokens[extra]])
                c = np.concatenate([r.train_flops, r.finished_flops[extra]])
                loss = np.concatenate([r.val_loss, r.finished_loss[extra]])
            curves.append((i, d, c, loss))
        return PointTable(
            N=np.concatenate([np.full(len(d), self.runs[i].params) for i, d, _, _ in curves]),
            D=np.concatenate([d for _, d, _, _ in curves]),
            C=np.concatenate([c for _, _, c, _ in curves]),
            loss=np.concatenate([loss for _, _, _, loss in curves]),
            run_index=np.concatenate([np.full(len(d), i) for i, d, _, _ in curves]),
        )

    def identification_problems(self, final_only: bool = False) -> list[str]:
        """Why the points cannot identify a five-parameter L(N, D) law (empty when they can)."""
        table = self.points(final_only)
        sizes, tokens = len(np.unique(table.N)), len(np.unique(table.D))
        problems = []
        if len(self.runs) < 2:
            problems.append(f"{len(self.runs)} run(s); a scaling law needs runs of at least {MIN_MODEL_SIZES} sizes")
        elif sizes < MIN_MODEL_SIZES:
            problems.append(f"{sizes} distinct model size(s) (non_embedding params); need at least {MIN_MODEL_SIZES}")
        if tokens < MIN_TOKEN_COUNTS:
            where = " among finished-run points" if final_only else ""
            problems.append(f"{tokens} distinct token count(s){where}; need at least {MIN_TOKEN_COUNTS}")
        if len(table.loss) < MIN_POINTS:
            problems.append(f"{len(table.loss)} points; need at least {MIN_POINTS}")
        return problems

    def check_identifiable(self, final_only: bool = False) -> None:
        """Raise ValueError if the sweep cannot identify a five-parameter L(N, D) law."""
        problems = self.identification_problems(final_only)
        if problems:
            raise ValueError("sweep too small to fit L(N, D): " + "; ".join(problems))
