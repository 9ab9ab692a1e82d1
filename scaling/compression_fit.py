"""Fit and choose compression models for each pruning method and for 8-bit weights.

The points: every compressed variant of every run, against the dense loss the compression
stage measured with the same evaluation (CompressedVariant.dense_loss), or else the run's
final evaluation during training.
Pruning models use 32-bit variants with sparsity > 0, one model per method; the 8-bit model
uses unpruned 8-bit variants of method "none" (row-wise int8); weight-only quantizers (gptq, rtn)
get one model per method and bit width, named like "gptq-w4", fitted with the 8-bit forms. Variants both pruned and 8-bit are not fitted: the planner
adds the two added losses (`scaling.fitted`), an assumption these variants could test.
How a candidate is chosen is explained in `scaling.compression`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scaling.compression import (
    CURVED_CANDIDATES,
    INT8_CANDIDATES,
    MIN_CURVED_LEVELS,
    PRUNING_CANDIDATES,
    SIZE_FREE,
    TOKEN_CANDIDATES,
)
from scaling.fitting import FitResult, fit_law
from scaling.observations import MIN_MODEL_SIZES, SweepObservations


# Pruning while training, as `tlc fit` names its models: "init-snip" (a mask fixed at step 0), "during-magnitude"
# (grown on a schedule). Every other pruning method prunes a trained model ("after").
TIMINGS = ("init", "during")


def timing_of(method: str) -> str:
    """When a pruning method prunes: "init", "during" or "after" training."""
    head = method.split("-", 1)[0]
    return head if head in TIMINGS and "-" in method else "after"


@dataclass(frozen=True)
class CompressionPoints:
    """Measured compressed losses for one method (or 8-bit), with covariates per point."""

    kind: str  # "pruning" or "int8" (any unpruned quantization)
    method: str  # pruning method, "int8" (row-wise int8), or a weight-only quantizer and bits ("gptq-w4")
    N: np.ndarray  # (n,) the dense model's non-embedding parameters
    sparsity: np.ndarray  # (n,)
    dense_loss: np.ndarray  # (n,) the dense model's validation loss (see the module docstring)
    loss: np.ndarray  # (n,) the compressed variant's validation loss
    run_index: np.ndarray  # (n,) index into SweepObservations.runs
    tokens: np.ndarray | None = None  # (n,) D of each compressed checkpoint

    @property
    def covariates(self) -> dict[str, np.ndarray]:
        """Covariates by the names the compression forms use."""
        tokens = self.tokens if self.tokens is not None else np.full_like(self.N, np.nan)
        return {"sparsity": self.sparsity, "N": self.N, "dense_loss": self.dense_loss,
                "tokens_per_param": tokens / self.N}

    @property
    def tokens_identified(self) -> bool:
        """Whether one model size was compressed at two or more D (what epsilon needs)."""
        if self.tokens is None or not np.isfinite(self.tokens).all():
            return False
        return any(len(np.unique(np.round(self.tokens[self.N == n]))) >= 2 for n in np.unique(self.N))


def compression_points(observations: SweepObservations) -> list[CompressionPoints]:
    """Group the sweep's compressed variants: one group per pruning method, one for 8-bit."""
    groups: dict[tuple[str, str], list] = {}
    for variant in observations.variants:
        if variant.bits == 32 and variant.sparsity > 0 and variant.method != "none":
            key = ("pruning", variant.method)
        elif variant.bits < 32 and variant.sparsity == 0:
            # row-wise int8 of the dense model; weight-only quantizers each by method and bits
            key = ("int8", "int8" if variant.method in ("none", "dense") else f"{variant.method}-w{variant.bits}")
        else:
            continue  # the dense baseline itself, or pruned and 8-bit together
        groups.setdefault(key, []).append(variant)
    out = []
    for (kind, method), variants in sorted(groups.items()):
        index = np.array([observations.run_position(v.run_id) for v in variants])
        runs = [observations.runs[i] for i in index]
        dense = [r.final_loss if v.dense_loss is None else v.dense_loss for v, r in zip(variants, runs)]
        tokens = [r.final_tokens if v.tokens is None else float(v.tokens) for v, r in zip(variants, runs)]
        out.append(
            CompressionPoints(
                kind=kind,
                method=method,
                N=np.array([r.params for r in runs]),
                sparsity=np.array([v.sparsity for v in variants]),
                dense_loss=np.array(dense),
                loss=np.array([v.val_loss for v in variants]),
                run_index=index,
                tokens=np.array(tokens),
            )
        )
    return out


@dataclass(frozen=True)
class CompressionModel:
    """The chosen model for one method, the candidates' held-out errors and why it won."""

    kind: str
    method: str
    candidate: str  # name of the chosen form
    fit: FitResult  # fitted on every point of the method
    # candidate -> the error the choice ranks by: mean |pred/obs - 1| on the largest N, or where three or more
    # sparsity levels were measured the larger of that and sparsity_heldout_errors
    heldout_errors: dict[str, float | None]
    reason: str
    n_points: int
    sparsities: tuple[float, ...]  # distinct sparsities measured (to 0.001); one level: gamma not identified
    # candidate -> mean |pred/obs - 1| on each level between the lowest and highest sparsity measured, from
    # a fit without that level, averaged over those levels (None with fewer than three levels)
    sparsity_heldout_errors: dict[str, float | None] = field(default_factory=dict)


def _error_on(form, points: CompressionPoints, test: np.ndarray) -> float | None:
    """Mean relative error on the ``test`` points from a fit on the others (None: too few others)."""
    train = ~test
    if train.sum() < len(form.fitted) + 1:
        return None
    fit = fit_law(form, points.covariates, points.loss, train.astype(float), grid_starts=6)
    predicted = form.predict(fit.parameters, **{k: v[test] for k, v in points.covariates.items()})
    return float(np.mean(np.abs(predicted / points.loss[test] - 1.0)))


def _heldout_error(form, points: CompressionPoints) -> float | None:
    """Mean relative error predicting the largest model's points from a fit on the others."""
    return _error_on(form, points, points.N == points.N.max())


def _sparsity_heldout_error(form, points: CompressionPoints, levels: np.ndarray) -> float | None:
    """Mean relative error on each interior sparsity level (``levels``: `sparsity_levels` of the points) from
    a fit without it, averaged over those levels: how well the form interpolates between the sparsities
    measured, which the planner relies on."""
    errors = [_error_on(form, points, levels == level) for level in range(1, levels.max())]
    return None if not errors or None in errors else float(np.mean(errors))


SAME_LEVEL = 0.01  # sparsities closer than this are one level (achieved sparsities vary a little by model)


def sparsity_levels(sparsity: np.ndarray, apart: float = 0.05) -> np.ndarray:
    """Each point's sparsity level (0 the lowest), levels starting at least ``apart`` from one another:
    block pruning to 0.9 achieves 0.875-0.901 by model, one level."""
    labels = np.empty(len(sparsity), dtype=int)
    level, start = -1, -math.inf
    for i in np.argsort(sparsity, kind="stable"):
        if sparsity[i] - start >= apart:
            level, start = level + 1, sparsity[i]
        labels[i] = level
    return labels


def _one_level(points: CompressionPoints) -> str:
    """A note for pruning measured at a single sparsity (e.g. 2:4, always about 0.5)."""
    if points.kind != "pruning" or np.ptp(points.sparsity) >= SAME_LEVEL:
        return ""
    level = round(float(np.median(points.sparsity)), 2)
    return f"; measured at sparsity {level:g} only, so gamma is not identified and predictions hold there only"


def fit_compression_model(points: CompressionPoints) -> CompressionModel | str:
    """Choose and fit a compression model for ``points``; a string says why none could be fitted.

    The rule (reasons in `scaling.compression`): with at least MIN_MODEL_SIZES sizes, the
    candidate with the lowest leave-largest-out error whose fit on all points converges (the
    best one if none does); with fewer sizes, the size-free candidate.
    """
    candidates = PRUNING_CANDIDATES if points.kind == "pruning" else INT8_CANDIDATES
    if not points.tokens_identified:  # D/N would only restate N: the tokens term cannot be fitted
        candidates = {k: v for k, v in candidates.items() if k not in TOKEN_CANDIDATES}
    sparsities = tuple(sorted({round(float(s), 3) for s in points.sparsity}))
    levels = sparsity_levels(points.sparsity)
    n_levels = int(levels.max()) + 1 if points.kind == "pruning" else 0
    if n_levels < MIN_CURVED_LEVELS:  # the curvature is not identified through fewer levels
        candidates = {k: v for k, v in candidates.items() if k not in CURVED_CANDIDATES}
    size_free = candidates[SIZE_FREE[points.kind]]
    n = len(points.loss)
    if n < len(size_free.fitted) + 1:
        return f"{n} variant(s); need at least {len(size_free.fitted) + 1} to fit {size_free.name}"
    n_sizes = len(np.unique(points.N))
    errors: dict[str, float | None] = {name: None for name in candidates}
    level_errors: dict[str, float | None] = {}
    criterion = ("held-out error (the larger of leave-largest-out and leave-one-sparsity-out)"
                 if n_levels >= MIN_CURVED_LEVELS else "leave-largest-out error")
    if n_sizes < MIN_MODEL_SIZES:
        chosen = size_free
        reason = (
            f"{n_sizes} model size(s) measured; at least {MIN_MODEL_SIZES} are needed to compare candidates "
            f"on the largest, so the size-free form was used"
        )
    else:
        for name, form in candidates.items():
            errors[name] = _heldout_error(form, points)
            if n_levels >= MIN_CURVED_LEVELS:
                between = level_errors[name] = _sparsity_heldout_error(form, points, levels)
                errors[name] = None if errors[name] is None or between is None else max(errors[name], between)
        scored = {name: e for name, e in errors.items() if e is not None}
        if not scored:
            chosen, reason = size_free, "too few points below the largest model size to compare candidates"
        else:
            # Best held-out error first; a candidate whose full fit hits a bound (a parameter the
            # data cannot pin down, e.g. a size exponent when the added loss is within noise)
            # gives way to the next one that converges.
            ranked = sorted(scored, key=scored.get)
            fits = {}
            for name in ranked:
                fits[name] = fit_law(candidates[name], points.covariates, points.loss, grid_starts=8)
                if fits[name].status == "converged":
                    break
            best = next((name for name in ranked if name in fits and fits[name].status == "converged"), ranked[0])
            chosen = candidates[best]
            passed = ranked[: ranked.index(best)]
            passed_over = ", ".join(f"{name}: {fits[name].status}" for name in passed)
            reason = f"lowest {criterion}, {scored[best]:.4f}, among {ranked}" + (
                f" whose fit converged ({passed_over})" if passed else ""
            )
            return CompressionModel(points.kind, points.method, best, fits[best], errors,
                                    reason + _one_level(points), n, sparsities, level_errors)
    fit = fit_law(chosen, points.covariates, points.loss, grid_starts=8)
    return CompressionModel(
        kind=points.kind,
        method=points.method,
        candidate=chosen.name,
        fit=fit,
        heldout_errors=errors,
        reason=reason + _one_level(points),
        n_points=n,
        sparsities=sparsities,
        sparsity_heldout_errors=level_errors,
    )
