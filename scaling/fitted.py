"""A fitted sweep read back from fit.json, for prediction with intervals (what `tlc plan` calls).

    fitted = scaling.load_fit(json.loads(Path("runs/tiny/fit.json").read_text()))
    mean, low, high = fitted.predict_loss(N=2e7, D=4e8, method="magnitude", sparsity=0.5, int8=True)

A compressed model's loss is predicted as the dense law's loss plus the pruning model's
added loss plus the 8-bit model's added loss: the two added losses are assumed to add, which
the fits do not test (see `scaling.compression_fit`). Intervals come from the bootstrap draws
stored in fit.json: draw k of every law was fitted to the same resample of runs, so the
draws are summed draw by draw before taking percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from scaling.allocation import SIX_N, FlopsModel, chinchilla_allocation, optimal_allocation
from scaling.bootstrap import CONFIDENCE, percentile_interval
from scaling.compression import INT8_CANDIDATES, PRUNING_CANDIDATES
from scaling.compression_fit import SAME_LEVEL
from scaling.forms import LAWS, PUBLISHED_CHINCHILLA, LawForm
from scaling.loss_split import PARTS
from scaling.selection import extra_log_sd
from scaling.sweep_fit import FORMAT


@dataclass(frozen=True)
class FittedLaw:
    """One fitted form: point estimate, status, and its bootstrap draws in fitted coordinates."""

    form: LawForm
    parameters: Any  # the form's parameters dataclass
    status: str
    draws: np.ndarray = field(repr=False)  # (R, P); rows of NaN for unusable resamples

    @classmethod
    def from_json(cls, form: LawForm, entry: dict) -> FittedLaw:
        """Read one law's entry of fit.json (see `scaling.sweep_fit.fit_sweep_observations`)."""
        names = form.parameter_names
        try:
            parameters = form.parameters_type(**{n: float(entry["parameters"][n]["value"]) for n in names})
            draw_lists = entry["bootstrap"]["draws"]
            n_draws = len(draw_lists[names[0]])
        except (KeyError, TypeError) as error:
            raise ValueError(f"fit.json: law {form.name}: missing or malformed field {error}") from None
        draws = np.full((n_draws, len(form.fitted)), np.nan)
        for k in range(n_draws):
            values = [draw_lists[n][k] for n in names]
            if all(v is not None for v in values):
                draws[k] = form.to_theta(form.parameters_type(*map(float, values)))
        return cls(form=form, parameters=parameters, status=str(entry.get("status", "converged")), draws=draws)

    def log_loss(self, **covariates: float) -> tuple[float, np.ndarray]:
        """Log-prediction at one point: from the point estimate, and per draw (R,) (NaN if unusable)."""
        x = {c: np.array([float(covariates[c])]) for c in self.form.covariates}  # KeyError: a covariate not given
        theta = self.form.to_theta(self.parameters)
        point, _ = self.form.log_loss(theta, x, jacobian=False)
        if len(self.draws) == 0:
            return float(point[0]), np.empty(0)
        usable = np.isfinite(self.draws).all(axis=1)
        per_draw, _ = self.form.log_loss(np.where(usable[:, None], self.draws, theta), x, jacobian=False)
        per_draw = np.where(usable, per_draw[:, 0], np.nan)
        return float(point[0]), per_draw


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be finite and > 0, got {value!r}")
    return value


@dataclass(frozen=True)
class FittedSweep:
    """Every law fitted to a sweep, ready to predict loss for (N, D, pruning method, sparsity, int8)."""

    laws: dict[str, FittedLaw]  # joint L(N, D) laws by name ("chinchilla", "kaplan")
    pruning: dict[str, FittedLaw]  # pruning models by method
    int8: FittedLaw | None
    confidence: float = CONFIDENCE
    # weight-only quantizers by method and bits ("gptq-w4"), fitted with the 8-bit forms (scaling.compression_fit)
    quantization: dict[str, FittedLaw] = field(default_factory=dict)
    pruning_sparsities: dict[str, tuple[float, ...]] = field(default_factory=dict)  # measured, per method
    preferred_law: str | None = None  # fit.json's choice (best held-out error); None for a bare law
    flops: FlopsModel = SIX_N  # training FLOPs per token against N: the sweep's own, or 6N for a published law
    flops_definition: str = "C = 6ND, as published laws count it"  # what C means in compute_optimal
    size: str = "total"  # what N counts: "total" (every parameter) or "non_embedding"
    # fit.json's loss_split (scaling.loss_split): the law refitted to each part of the loss; None without
    loss_split: dict | None = None
    # per law, fit.json's "predictive" (scaling.selection.predictive_spread): the run scatter and the error per
    # decade of compute past the fit set that intervals add to the bootstrap's; a law without one adds nothing
    spreads: dict[str, dict] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        """Pruning methods the sweep measured well enough to model."""
        return tuple(sorted(self.pruning))

    def predict_loss(
        self,
        N: float,
        D: float,
        method: str | None = None,
        sparsity: float = 0.0,
        int8: bool = False,
        law: str = "chinchilla",
        weight_only: str | None = None,
    ) -> tuple[float, float, float]:
        """Predicted validation loss (mean, low, high) of a model of N non-embedding parameters
        trained on D tokens, then pruned with ``method`` to ``sparsity`` and/or made 8-bit, or quantized
        weight-only by a ``quantization`` model (``weight_only``, e.g. "gptq-w4").

        mean is the point estimate; (low, high) the bootstrap interval at ``confidence`` (NaN when
        fit.json holds no draws). The interval covers the uncertainty of the fitted mean loss, not
        the run-to-run scatter. Sparsities beyond those measured are extrapolations.
        """
        N, D = _positive("N", N), _positive("D", D)
        if law not in self.laws:
            raise ValueError(f"law: {law!r} is not in this fit; valid: {sorted(self.laws)}")
        if not (0.0 <= sparsity < 1.0):
            raise ValueError(f"sparsity: must be in [0, 1), got {sparsity!r}")
        log_dense, log_dense_draws = self.laws[law].log_loss(N=N, D=D)
        mean, draws = math.exp(log_dense), np.exp(log_dense_draws)
        added_terms = []
        if sparsity > 0:
            if method is None or method == "none":
                raise ValueError(f"method: sparsity {sparsity} needs a pruning method; valid: {list(self.methods)}")
            if method not in self.pruning:
                raise ValueError(f"method: no pruning model for {method!r} in this fit; valid: {list(self.methods)}")
            measured = self.pruning_sparsities.get(method, ())
            one_level = bool(measured) and max(measured) - min(measured) < SAME_LEVEL
            if one_level and not (min(measured) - SAME_LEVEL <= sparsity <= max(measured) + SAME_LEVEL):
                level = f"{round((min(measured) + max(measured)) / 2, 2):g}"
                raise ValueError(
                    f"sparsity: {method} was measured at sparsity {level} only; "
                    f"its model cannot say how loss changes with sparsity, ask for {level}"
                )
            added_terms.append((self.pruning[method], {"sparsity": sparsity, "N": N, "tokens_per_param": D / N}))
        if int8:
            if self.int8 is None:
                raise ValueError("int8: this fit has no 8-bit model (no 8-bit variants in compress.jsonl)")
            added_terms.append((self.int8, {"N": N, "tokens_per_param": D / N}))
        if weight_only is not None:
            if weight_only not in self.quantization:
                raise ValueError(f"weight_only: no quantization model for {weight_only!r} in this fit; "
                                 f"valid: {sorted(self.quantization)}")
            added_terms.append((self.quantization[weight_only], {"N": N, "tokens_per_param": D / N}))
        for model, covariates in added_terms:
            # Compression forms predict log(dense_loss + added); with dense_loss = 1 that is log(1 + added).
            log_point, log_draws = model.log_loss(dense_loss=1.0, **covariates)
            mean += math.expm1(log_point)
            draws = draws + np.expm1(log_draws) if len(draws) else draws
        low, high = percentile_interval(draws, self.confidence) if len(draws) else (math.nan, math.nan)
        extra = extra_log_sd(self.spreads.get(law), self.flops.k * N**self.flops.gamma * D)
        if extra > 0 and math.isfinite(low) and math.isfinite(high) and low > 0:
            # a new run scatters about the mean law, and the law's error grows past the fit set: both are
            # independent of which runs were fitted, so their log-spread adds in quadrature
            z = float(norm.ppf(0.5 + self.confidence / 2))
            low = mean * math.exp(-math.hypot(math.log(mean / low) if low < mean else 0.0, z * extra))
            high = mean * math.exp(math.hypot(math.log(high / mean) if high > mean else 0.0, z * extra))
        return mean, float(low), float(high)

    def compute_optimal(self, compute: float, law: str = "chinchilla") -> tuple[float, float]:
        """(N_opt, D_opt) at ``compute`` training FLOPs under the fit's C = k·N^gamma·D (6ND for a
        published law): closed form for Chinchilla."""
        _positive("compute", compute)
        if law not in self.laws:
            raise ValueError(f"law: {law!r} is not in this fit; valid: {sorted(self.laws)}")
        fitted = self.laws[law]
        if law == "chinchilla":
            allocation = chinchilla_allocation(fitted.parameters, self.flops)
            return float(allocation.optimal_params(compute)), float(allocation.optimal_tokens(compute))
        return optimal_allocation(fitted.form, fitted.parameters, compute, flops=self.flops)

    @classmethod
    def published_chinchilla(cls) -> FittedSweep:
        """Hoffmann et al. 2022's approach-3 fit, with no intervals and no compression models."""
        form = LAWS["chinchilla"]
        law = FittedLaw(form=form, parameters=PUBLISHED_CHINCHILLA, status="converged", draws=np.empty((0, 5)))
        return cls(laws={"chinchilla": law}, pruning={}, int8=None)


def _loss_split(entry) -> dict | None:
    """fit.json's loss_split when it is usable (its form is a known law with every part's parameters)."""
    if not isinstance(entry, dict) or entry.get("form") not in LAWS:
        return None
    parts = entry.get("parts")
    fields = set(LAWS[entry["form"]].parameter_names)
    if not isinstance(parts, dict) or any(set((parts.get(p) or {}).get("parameters") or {}) != fields for p in PARTS):
        return None
    return entry


def load_fit(data: dict) -> FittedSweep:
    """Read the content of fit.json (as written by `tlc fit`) into a FittedSweep.

    Laws whose status is "not_converged", and unidentified laws that could not be fitted at all
    (no parameters), are left out rather than used silently; an unidentified law with fitted
    parameters is kept with its status, for the caller to weigh. ValueError names a missing
    field or an unknown format.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"fit.json: format must be {FORMAT!r}, got {got!r}; rerun `tlc fit`")
    laws = {
        name: FittedLaw.from_json(LAWS[name], entry)
        for name, entry in data.get("laws", {}).items()
        if name in LAWS and entry.get("status") != "not_converged" and entry.get("parameters")
    }
    if not laws:
        raise ValueError("fit.json: no usable L(N, D) law (all missing or not converged); rerun `tlc fit`")
    compression = data.get("compression") or {}
    pruning = {
        method: FittedLaw.from_json(PRUNING_CANDIDATES[entry["candidate"]], entry)
        for method, entry in (compression.get("pruning") or {}).items()
        if entry.get("status") != "not_converged"
    }
    int8_entry = compression.get("int8")
    int8 = (
        FittedLaw.from_json(INT8_CANDIDATES[int8_entry["candidate"]], int8_entry)
        if int8_entry and int8_entry.get("status") != "not_converged"
        else None
    )
    quantization = {
        key: FittedLaw.from_json(INT8_CANDIDATES[entry["candidate"]], entry)
        for key, entry in (compression.get("quantization") or {}).items()
        if isinstance(entry, dict) and entry.get("status") != "not_converged"
    }
    confidence = float((data.get("bootstrap") or {}).get("confidence", CONFIDENCE))
    sparsities = {
        method: tuple(float(s) for s in compression["pruning"][method].get("sparsities", ()))
        for method in pruning
    }
    preferred = (data.get("preferred_law") or {}).get("name")
    flops_entry = data.get("flops") or {}
    try:
        flops = FlopsModel(float(flops_entry["k"]), float(flops_entry["gamma"])) if flops_entry else SIX_N
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"fit.json: flops: missing or malformed field {error}") from None
    return FittedSweep(
        laws=laws,
        pruning=pruning,
        int8=int8,
        confidence=confidence,
        quantization=quantization,
        pruning_sparsities=sparsities,
        preferred_law=preferred if preferred in laws else None,
        flops=flops,
        size=(data.get("size") or {}).get("definition", "non_embedding"),  # fits before --size counted the latter
        loss_split=_loss_split(data.get("loss_split")),
        spreads={name: entry["predictive"] for name, entry in data.get("laws", {}).items()
                 if name in laws and isinstance(entry.get("predictive"), dict)},
        flops_definition=(f"C = {flops.k:.4g} N^{flops.gamma:.4g} D: the sweep's own training FLOPs per token"
                          if flops_entry else "C = 6ND (a fit.json from before the FLOPs definition was recorded)"),
    )
