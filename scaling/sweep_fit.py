"""Fit everything `scaling` knows to one sweep and return it as a JSON-ready dict (fit.json).

One call fits the joint L(N, D) laws with bootstrap intervals and diagnostics, the
compute-optimal allocation, per-run learning curves and the frontier, and the compression
models. `scaling.fitted.load_fit` reads the dict back for prediction. The layout is
documented field by field in `fit_sweep_observations`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from scaling.allocation import FlopsModel, allocation_exponents, chinchilla_allocation, flops_model
from scaling.bootstrap import (
    CONFIDENCE,
    BootstrapFits,
    bootstrap_law,
    parameter_draws,
    percentile_interval,
    resample_runs,
)
from scaling.compression import INT8_CANDIDATES, PRUNING_CANDIDATES
from scaling.compression_fit import (SAME_LEVEL, TIMINGS, CompressionModel, compression_points, fit_compression_model,
                                     timing_of)
from scaling.fitting import HUBER_DELTA, FitResult, reuse_fits
from scaling.forms import LAWS, LawForm
from scaling.frontier import LEARNING_CURVE, bootstrap_frontier, compute_frontier, fit_frontier, fit_learning_curve
from scaling.law_fit import LawFit, fit_sweep_law, judge_identification
from scaling.loss_split import fit_loss_split
from scaling.observations import SweepObservations
from scaling.selection import compute_holdout, predictive_spread

FORMAT = "tlc.fit/1"
SCHEDULE_NOTE = (
    "Every evaluation of every run is a point of the L(N, D) fits (--all-points). An intermediate "
    "point overestimates the loss a run trained for exactly that many tokens would reach, because "
    "its learning rate has not decayed yet (Hoffmann et al. 2022 discuss this), so the fitted law "
    "overstates loss at small D and understates beta; the default fits finished-run points only."
)
FLOPS_NOTE = (
    "C is each run's own training FLOPs (6 per matmul parameter per token, vocabulary projection "
    "included, plus attention), in the points, the frontier and the allocation; published laws "
    "count C = 6ND instead."
)


def json_clean(value: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN and infinities to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _intervals(form: LawForm, fit: FitResult, thetas: np.ndarray) -> tuple[dict, dict]:
    """Parameters as {name: {value, low, high}} and the per-draw named parameters."""
    draws = parameter_draws(form, thetas)
    parameters = {}
    for name, samples in draws.items():
        low, high = percentile_interval(samples)
        parameters[name] = {"value": getattr(fit.parameters, name), "low": low, "high": high}
    return parameters, draws


def _fit_json(form: LawForm, fit: FitResult, boot: BootstrapFits) -> dict:
    """The part common to every fitted law: form, named parameters with intervals, status, draws."""
    parameters, draws = _intervals(form, fit, boot.thetas)
    return {
        "name": form.name,
        "equation": form.equation,
        "source": form.source,
        "covariates": list(form.covariates),
        "parameters": parameters,
        "status": fit.status,
        "objective": fit.objective,
        "optimizer_message": fit.message,
        "n_points": fit.n_points,
        "bootstrap": {"statuses": boot.status_counts(), "usable": boot.n_usable, "resamples": len(boot.statuses),
                      "converged_share": boot.converged_share, "draws": draws},
    }


def _allocation_json(
    laws: dict[str, tuple[LawForm, FitResult, BootstrapFits]], reference_compute: float, flops: FlopsModel
) -> dict:
    """Closed-form Chinchilla allocation and numeric allocation for the other laws, with intervals,
    under C = k·N^gamma·D (the sweep's own FLOPs per token)."""
    out: dict[str, Any] = {"flops_per_token": {"k": flops.k, "gamma": flops.gamma}}
    if "chinchilla" not in laws:
        out["chinchilla"] = {"method": "closed_form", "error": "the law is unidentified: not fitted"}
        return out
    form, fit, boot = laws["chinchilla"]
    try:
        closed = chinchilla_allocation(fit.parameters, flops)
    except ValueError as error:
        out["chinchilla"] = {"method": "closed_form", "error": str(error)}
    else:
        samples = {"a": [], "b": [], "G": []}
        for theta in boot.thetas:
            usable = np.isfinite(theta).all()
            p = form.to_parameters(theta) if usable else None
            draw = chinchilla_allocation(p, flops) if p is not None and p.alpha > 0 and p.beta > 0 else None
            for name in samples:
                samples[name].append(getattr(draw, name) if draw else math.nan)
        out["chinchilla"] = {"method": "closed_form", "equation": "N_opt = G (C/k)^a, D_opt = C / (k N_opt^gamma)"}
        for name, values in samples.items():
            low, high = percentile_interval(np.array(values))
            out["chinchilla"][name] = {"value": getattr(closed, name), "low": low, "high": high}
    for name, (form, fit, boot) in laws.items():
        if name == "chinchilla":
            continue
        point = allocation_exponents(form, fit.parameters, reference_compute, flops=flops)
        draws = np.array(
            [
                allocation_exponents(form, form.to_parameters(t), reference_compute, flops=flops)
                if np.isfinite(t).all()
                else (math.nan, math.nan)
                for t in boot.thetas
            ]
        ).reshape(-1, 2)
        low, high = percentile_interval(draws)
        out[name] = {
            "method": "numeric",
            "compute": reference_compute,
            "a": {"value": point[0], "low": low[0], "high": high[0]},
            "b": {"value": point[1], "low": low[1], "high": high[1]},
        }
    return out


def _compression_json(model: CompressionModel, boot: BootstrapFits) -> dict:
    form = (PRUNING_CANDIDATES if model.kind == "pruning" else INT8_CANDIDATES)[model.candidate]
    out = _fit_json(form, model.fit, boot)
    if boot.stability():  # a model whose intervals rest on a selected few resamples is not planned with
        out["status"], out["identification"] = "unstable", boot.stability()
    out.update(
        method=model.method,
        candidate=model.candidate,
        heldout_errors=model.heldout_errors,
        sparsity_heldout_errors=model.sparsity_heldout_errors,
        reason=model.reason,
        sparsities=model.sparsities,
    )
    if model.kind == "pruning":
        out["timing"] = timing_of(model.method)
    if out.get("timing") in TIMINGS:
        # Pruning while training is planned only from a model the sweep pins down: judge_identification
        # (no parameter on a bound, the sparsity exponent's interval within MAX_EXPONENT_SPAN).
        intervals = {name: (p["low"], p["high"]) for name, p in out["parameters"].items()}
        out["status"], out["identification"] = judge_identification(form, model.fit, intervals, ("gamma",), boot)
        if max(model.sparsities) - min(model.sparsities) < SAME_LEVEL:
            out["status"] = "unidentified"
            out["identification"] = f"trained at one sparsity ({model.sparsities[0]:g}) only, so gamma is not identified"
    return out


def _unfitted_law_json(form: LawForm, reason: str) -> dict:
    """A law the sweep's points cannot identify: named, with the reason, and nothing fitted."""
    return {
        "name": form.name,
        "equation": form.equation,
        "source": form.source,
        "covariates": list(form.covariates),
        "parameters": None,
        "status": "unidentified",
        "reason": reason,
        "optimizer_status": None,
        "objective": None,
        "optimizer_message": None,
        "n_points": 0,
        "bootstrap": None,
        "heldout": None,
        "heldout_reason": reason,
        "heldout_tokens": None,
        "residuals": {},
    }


def extrapolation_error(law: dict) -> float | None:
    """A fitted law's held-out error, for choosing between laws: the larger of its leave-largest-out
    and leave-longest-out errors, since a plan reaches past the sweep in N, in D or in both; None
    without either."""
    errors = [held["relative_error"] for held in (law.get("heldout"), law.get("heldout_tokens"))
              if isinstance(held, dict) and isinstance(held.get("relative_error"), (int, float))]
    return float(max(errors)) if errors else None


def preferred_law(laws_json: dict[str, dict]) -> dict:
    """The law to predict with, with the reason and the rule that decided.

    Among converged laws with an irreducible term E (laws without one only where none with one
    converged: they predict the loss falling forever, so past the fit set they run below any law with
    a floor, and at 300x past Gadre et al.'s fit set they ran 15% low), the lowest error on the compute
    hold-out (`scaling.selection`: refitted without the top decade of compute); without a compute
    hold-out, the lowest held-out error (`extrapolation_error`); else the first converged law
    (Chinchilla's form comes first); else none."""
    converged = [name for name, law in laws_json.items() if law["status"] == "converged"]
    floored = [name for name in converged if "E" in (laws_json[name].get("parameters") or {})]
    pool = floored or converged
    among = "converged laws with an irreducible term E" if floored else "converged laws (none has a floor E)"
    by_compute = {name: laws_json[name]["compute_holdout"]["rms_log_error"] for name in pool
                  if laws_json[name].get("compute_holdout")}
    if by_compute:
        name = min(by_compute, key=by_compute.get)
        return {"name": name, "rule": "compute_holdout",
                "reason": f"lowest error predicting the top decade of compute from the rest (rms "
                          f"{by_compute[name]:.4f} in log loss) of the {among}"}
    scored = {name: extrapolation_error(laws_json[name]) for name in pool}
    scored = {name: error for name, error in scored.items() if error is not None}
    if scored:
        name = min(scored, key=scored.get)
        return {"name": name, "rule": "heldout",
                "reason": f"lowest held-out error ({scored[name]:.4f}, the larger of leave-largest-out "
                          f"and leave-longest-out) of the {among}"}
    if pool:
        return {"name": pool[0], "rule": "first_converged",
                "reason": "converged; too few model sizes for a held-out comparison"}
    return {"name": None, "reason": "no law converged; see each law's status"}


def fit_sweep_observations(
    observations: SweepObservations, bootstrap: int = 200, seed: int = 0, final_only: bool = False
) -> dict:
    """Fit a sweep and return fit.json's content (JSON-clean: no NaN, only plain types).

    Fields: format; n_runs; n_points; final_only; points ("finished" or "all");
    identification_problems [why the points cannot identify L(N, D) at all]; flops {definition,
    equation, k, gamma, max_relative_error, note}: C = k·N^gamma·D fitted to the runs' own FLOPs
    per token, used by the allocation; huber_delta; bootstrap {resamples, seed,
    confidence, unit}; notes; runs [{run_id, params, n_points, final_tokens, final_train_flops,
    final_loss, finished_points, finished_tokens}]; laws {chinchilla, kaplan: {name, equation,
    source, covariates, parameters {name: {value, low, high}}, status, reason, optimizer_status
    (the optimiser's: converged, hit_bound, not_converged), objective, n_points, heldout
    (leave-largest-out, or null with heldout_reason), heldout_tokens (leave-longest-out: every
    run's longest finished point predicted by a refit without them, with the bias's sign; or
    null), residuals {run_id: {n_points, mean, rms, final}}, bootstrap {statuses, usable, draws
    {name: [per resample]}}}}; preferred_law {name, reason}; allocation
    {flops_per_token {k, gamma}, chinchilla {a, b, G}, kaplan {compute, a, b}}; learning_curves {equation, runs {run_id:
    {parameters, status} or null}}; loss_split (the preferred law fitted to the loss on targets seen
    earlier in their window and on the rest, scaling.loss_split; null for runs trained before the
    split was recorded); frontier {compute, loss, run_ids, fit}; compression
    {pruning {method: model}, int8: model or null (row-wise int8), quantization {"gptq-w4": model, ...}
    (weight-only quantizers by method and bits), skipped {method: reason}}.

    Each law's status is "converged", "unstable" (under 80% of the bootstrap refits converged:
    bootstrap {usable, resamples, converged_share} say how many), "unidentified" (a parameter on a bound, a 95% prediction
    interval one decade of compute past the fit set wider than the drop it predicts over that decade
    (decade_prediction), or too few distinct N, D or points to fit at all: then parameters,
    heldout and bootstrap are null) or "not_converged"; ``reason`` says why.
    """
    with reuse_fits():  # the held-out refits repeat one another on many sweeps (scaling.fitting.reuse_fits)
        return _fit_sweep_observations(observations, bootstrap, seed, final_only)


def _fit_sweep_observations(observations: SweepObservations, bootstrap: int, seed: int, final_only: bool) -> dict:
    table = observations.points(final_only)
    run_counts = resample_runs(len(observations.runs), bootstrap, seed)
    problems = observations.identification_problems(final_only)

    laws_json: dict[str, Any] = {}
    fitted: dict[str, tuple[LawForm, FitResult, BootstrapFits]] = {}
    for name, form in LAWS.items():
        if problems:
            laws_json[name] = _unfitted_law_json(form, "not fitted: " + "; ".join(problems))
            continue
        result: LawFit = fit_sweep_law(form, observations, run_counts, final_only)
        fitted[name] = (form, result.fit, result.bootstrap)
        law = _fit_json(form, result.fit, result.bootstrap)
        law["optimizer_status"] = law["status"]
        law["status"], law["reason"] = result.status, result.reason
        law["decade_prediction"] = result.prediction
        law["heldout"] = dataclasses.asdict(result.heldout) if result.heldout else None
        law["heldout_reason"] = None if result.heldout else "fewer than 3 model sizes remain without the largest"
        law["heldout_tokens"] = dataclasses.asdict(result.heldout_tokens) if result.heldout_tokens else None
        holdout = compute_holdout(form, observations, table)
        law["compute_holdout"] = holdout
        law["predictive"] = predictive_spread(form, result.fit, table, holdout)
        law["residuals"] = {
            r.run_id: {"n_points": r.n_points, "mean": r.mean, "rms": r.rms, "final": r.final}
            for r in result.residuals
        }
        laws_json[name] = law

    preferred = preferred_law(laws_json)
    final_compute = np.array([r.finished_flops.max() for r in observations.runs])
    reference_compute = float(np.exp(np.log(final_compute).mean()))
    sizes = [r.params for r in observations.runs]
    per_token = [r.finished_flops.max() / r.finished_tokens.max() for r in observations.runs]
    flops, flops_error = flops_model(sizes, per_token)

    curves = {}
    for run in observations.runs:
        curve = fit_learning_curve(run)
        curves[run.run_id] = (
            None if curve is None else {"parameters": dataclasses.asdict(curve.parameters), "status": curve.status}
        )
    frontier = compute_frontier(observations.runs)
    frontier_json: dict[str, Any] = {"equation": LEARNING_CURVE.equation, "source": LEARNING_CURVE.source}
    if len(frontier.loss) > len(LEARNING_CURVE.fitted):
        frontier_fit = fit_frontier(frontier)
        frontier_draws = bootstrap_frontier(observations.runs, run_counts, frontier_fit)
        frontier_json["parameters"], _ = _intervals(LEARNING_CURVE, frontier_fit, frontier_draws)
        frontier_json["status"] = frontier_fit.status
    else:  # runs whose compute ranges do not overlap the envelope's grid, e.g. one evaluation each
        frontier_json.update(parameters=None, status=None, reason=f"{len(frontier.loss)} envelope points; need 4")

    pruning, skipped, int8, quantization = {}, {}, None, {}
    for points in compression_points(observations):
        model = fit_compression_model(points)
        if isinstance(model, str):
            skipped[points.method] = model
            continue
        form = (PRUNING_CANDIDATES if points.kind == "pruning" else INT8_CANDIDATES)[model.candidate]
        boot = bootstrap_law(form, points.covariates, points.loss, points.run_index, run_counts, model.fit)
        if points.kind == "pruning":
            pruning[points.method] = _compression_json(model, boot)
        elif points.method == "int8":
            int8 = _compression_json(model, boot)
        else:  # a weight-only quantizer at one bit width, e.g. gptq-w4
            quantization[points.method] = _compression_json(model, boot)

    return json_clean(
        {
            "format": FORMAT,
            "n_runs": len(observations.runs),
            "n_points": len(table.loss),
            "final_only": final_only,
            "points": "finished" if final_only else "all",
            "identification_problems": problems,
            "flops": {
                "definition": "model",
                "equation": "C = k * N^gamma * D",
                "k": flops.k,
                "gamma": flops.gamma,
                "max_relative_error": flops_error,
                "note": FLOPS_NOTE,
            },
            "huber_delta": HUBER_DELTA,
            "bootstrap": {"resamples": bootstrap, "seed": seed, "confidence": CONFIDENCE, "unit": "run"},
            "notes": [FLOPS_NOTE] if final_only else [SCHEDULE_NOTE, FLOPS_NOTE],
            "runs": [
                {
                    "run_id": r.run_id,
                    "params": r.params,
                    "n_points": len(r.val_loss),
                    "final_tokens": r.final_tokens,
                    "final_train_flops": float(r.finished_flops.max()),
                    "final_loss": r.final_loss,
                    "finished_points": len(r.finished_loss),
                    "finished_tokens": [float(d) for d in r.finished_tokens],
                }
                for r in observations.runs
            ],
            "laws": laws_json,
            "preferred_law": preferred,
            "loss_split": fit_loss_split(LAWS[preferred["name"]], observations) if preferred["name"] else None,
            "allocation": _allocation_json(fitted, reference_compute, flops),
            "learning_curves": {"equation": LEARNING_CURVE.equation, "source": LEARNING_CURVE.source, "runs": curves},
            "frontier": {
                "compute": frontier.compute,
                "loss": frontier.loss,
                "run_ids": frontier.run_ids,
                "fit": frontier_json,
            },
            "compression": {"pruning": pruning, "int8": int8, "quantization": quantization, "skipped": skipped},
        }
    )



