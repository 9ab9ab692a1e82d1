"""The loss law the planner searches: a sweep's fit.json, a JSON file, or a published law.

A `PlanLaw` predicts the loss of a model of N parameters trained on D tokens (N counts what the
law was fitted on: every parameter, or those outside the embeddings; `PlanLaw.size`),
then pruned to sparsity s with a method and/or made 8-bit: vectorised point estimates for the
search (`loss`), and (mean, low, high) with the bootstrap interval for the answers
(`interval`, from `scaling.FittedSweep.predict_loss`). It also knows the ranges of sizes,
tokens and sparsities behind the law, so the planner can warn when it extrapolates.

Published laws (Hoffmann et al. 2022 approach 3 and Besiroglu et al. 2024's refit) carry no
compression model: the planner then searches dense models only and refuses compression flags.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import scaling
from scaling.compression_fit import TIMINGS, sparsity_levels, timing_of
from scaling.fitted import FittedLaw, FittedSweep
from scaling.sweep_fit import FORMAT as FIT_FORMAT, extrapolation_error
from scaling.forms import LAWS, PUBLISHED_BESIROGLU, PUBLISHED_CHINCHILLA, ChinchillaParameters
from tlc.errors import UserError
from tlc.io import list_runs, read_jsonl

# Hoffmann et al. 2022 trained "over 400 models ranging from 70 million to over 16 billion
# parameters on 5 to 500 billion tokens" (sec. 3); Besiroglu et al. 2024 refit the same data.
_CHINCHILLA_RANGES = {"N": (7e7, 1.6e10), "D": (5e9, 5e11)}
PUBLISHED_LAWS = {
    "chinchilla": (PUBLISHED_CHINCHILLA, "Hoffmann et al. 2022, approach 3 (eq. 10)"),
    "besiroglu": (
        PUBLISHED_BESIROGLU,
        "Besiroglu et al. 2024, Chinchilla scaling: a replication attempt (their refit of approach 3)",
    ),
}


@dataclass(frozen=True)
class MeasuredRanges:
    """What the law was fitted on: [low, high] of N, of final training tokens, and of sparsity per method."""

    N: tuple[float, float] | None = None
    D: tuple[float, float] | None = None
    sparsity: dict[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""  # where the ranges come from
    # width / depth and depth of the sweep's shapes: the laws see only N, so a shape of another aspect or depth
    # is an extrapolation
    aspect: tuple[float, float] | None = None
    depth: tuple[int, int] | None = None
    # (N, longest finished-point tokens) of each run: which D the sweep reached at which size
    reach: tuple[tuple[float, float], ...] = ()
    compute: float | None = None  # training FLOPs of the sweep's largest run (config.json train_flops)


@dataclass(frozen=True)
class PlanLaw:
    """A fitted or published law, ready for the planner (see the module docstring)."""

    source: str  # what the user named: a fit.json path or a published law's name
    description: str
    fitted: FittedSweep
    law: str  # which L(N, D) law of `fitted` is used ("chinchilla" when present)
    ranges: MeasuredRanges
    runs_dir: Path | None = None  # where <run>/config.json and compress.jsonl live, if known
    shape_template: dict | None = None  # arch, context, vocab_size, ffn_mult of the sweep's models
    choice: dict = field(default_factory=dict)  # why this law: status, held-out error, the candidates
    size: str = "total"  # what the law's N counts: "total" (embeddings included) or "non_embedding"
    # pruning-while-training models fit.json marks unidentified: {method: why}; never planned with
    withheld: dict[str, str] = field(default_factory=dict)
    # each pruning model's checks from fit.json: {method: {candidate, error (the held-out error it was chosen
    # by), levels (sparsity levels measured)}}, for the planner's warnings
    pruning_checks: dict[str, dict] = field(default_factory=dict)

    def law_params(self, N, embedding=0.0):
        """The law's N of models with ``N`` non-embedding and ``embedding`` embedding parameters."""
        return np.asarray(N, dtype=float) + (np.asarray(embedding, dtype=float) if self.size == "total" else 0.0)

    @property
    def methods(self) -> tuple[str, ...]:
        """Pruning methods with a fitted model of the loss they add that the planner may use: after-training
        methods, and pruning at init or during training where its model is identified (`withheld`)."""
        return tuple(m for m in self.fitted.methods if m not in self.withheld)

    @property
    def quantizers(self) -> tuple[str, ...]:
        """Weight-only quantizers by method and bits ("gptq-w4") with a fitted model of the loss they add."""
        return tuple(k for k in sorted(self.fitted.quantization) if k not in self.withheld)

    @property
    def has_int8(self) -> bool:
        """Whether the fit holds a model of the loss added by 8-bit weights."""
        return self.fitted.int8 is not None

    @property
    def parameters(self) -> dict[str, float]:
        """The L(N, D) law's named parameters."""
        p = self.fitted.laws[self.law].parameters
        return {name: float(getattr(p, name)) for name in p.__dataclass_fields__}

    def loss(self, N, D, method: str, sparsity, int8: bool, embedding=0.0,
             weight_only: str | None = None) -> np.ndarray:
        """Point-estimate loss, vectorised over N, D and sparsity (broadcast together), nats per token.

        N is non-embedding parameters and ``embedding`` the rest (see `law_params`); ``weight_only`` a
        quantization model ("gptq-w4") whose added loss counts too. Compression models with a
        tokens-per-parameter term see D/N: over-trained models compress worse."""
        N = self.law_params(N, embedding)
        N, D, sparsity = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in (N, D, sparsity)))
        law = self.fitted.laws[self.law]
        log_dense, _ = law.form.log_loss(law.form.to_theta(law.parameters), {"N": N, "D": D}, jacobian=False)
        loss = np.exp(log_dense)
        pruned = sparsity > 0
        if method != "none" and pruned.any():
            added = _added_loss(self.fitted.pruning[method], N=N, sparsity=np.where(pruned, sparsity, 0.5),
                                tokens_per_param=D / N)
            loss = loss + np.where(pruned, added, 0.0)
        if int8:
            loss = loss + _added_loss(self.fitted.int8, N=N, tokens_per_param=D / N)
        if weight_only is not None:
            loss = loss + _added_loss(self.fitted.quantization[weight_only], N=N, tokens_per_param=D / N)
        return loss

    def added_loss(self, N: float, D: float, weight_only: str, embedding: float = 0.0) -> float:
        """The loss a weight-only quantizer adds to a model of (N, D), at its point estimate (nats per token)."""
        N = self.law_params(N, embedding)
        return float(_added_loss(self.fitted.quantization[weight_only], N=np.atleast_1d(N),
                                 tokens_per_param=np.atleast_1d(D / N))[0])

    def loss_draws(self, N: float, D: float, method: str, sparsity: float, int8: bool,
                   embedding: float = 0.0, weight_only: str | None = None) -> np.ndarray:
        """Loss per bootstrap draw (R,), NaN for unusable draws; empty for a law without draws.

        Draw k of every model was fitted to the same resample of runs, so draws of two plans can be
        subtracted draw by draw for an interval on their difference (as `predict_loss` sums them).
        """
        N = float(self.law_params(N, embedding))
        _, log_draws = self.fitted.laws[self.law].log_loss(N=N, D=D)
        draws = np.exp(log_draws)
        if len(draws) and method != "none" and sparsity > 0:
            draws = draws + np.expm1(self.fitted.pruning[method].log_loss(dense_loss=1.0, sparsity=sparsity, N=N,
                                                                          tokens_per_param=D / N)[1])
        if len(draws) and int8:
            draws = draws + np.expm1(self.fitted.int8.log_loss(dense_loss=1.0, N=N, tokens_per_param=D / N)[1])
        if len(draws) and weight_only is not None:
            model = self.fitted.quantization[weight_only]
            draws = draws + np.expm1(model.log_loss(dense_loss=1.0, N=N, tokens_per_param=D / N)[1])
        return draws

    def interval(self, N: float, D: float, method: str, sparsity: float, int8: bool,
                 embedding: float = 0.0, weight_only: str | None = None) -> tuple[float, float, float]:
        """(mean, low, high) from the bootstrap draws in fit.json; low and high are NaN without draws."""
        N = float(self.law_params(N, embedding))
        pruning = method if (method != "none" and sparsity > 0) else None
        return self.fitted.predict_loss(N, D, pruning, sparsity if pruning else 0.0, int8, law=self.law,
                                        weight_only=weight_only)


def _added_loss(model: FittedLaw, **covariates: np.ndarray) -> np.ndarray:
    """dL of a compression model at its point estimate (forms predict log(dense + dL); dense = 1)."""
    n = len(next(iter(covariates.values())))
    x = {name: np.asarray(covariates.get(name, np.ones(n)), dtype=float) for name in model.form.covariates}
    log_total, _ = model.form.log_loss(model.form.to_theta(model.parameters), x, jacobian=False)
    return np.expm1(log_total)


def _published(name: str) -> PlanLaw:
    parameters, citation = PUBLISHED_LAWS[name]
    law = FittedLaw(form=LAWS["chinchilla"], parameters=parameters, status="converged", draws=np.empty((0, 5)))
    ranges = MeasuredRanges(N=_CHINCHILLA_RANGES["N"], D=_CHINCHILLA_RANGES["D"], note=f"{citation}: its training runs")
    return PlanLaw(
        source=name,
        description=f"{name}: {citation}",
        fitted=FittedSweep(laws={"chinchilla": law}, pruning={}, int8=None),
        law="chinchilla",
        ranges=ranges,
        choice={"name": "chinchilla", "status": "published", "reason": None, "heldout_error": None,
                "why": f"--law {name}: {citation}", "candidates": []},
    )


def _parameters_file(path: Path, data: dict) -> PlanLaw:
    """A small JSON of {E, A, B, alpha, beta}: a Chinchilla-form law with no intervals and no compression."""
    names = ("E", "A", "B", "alpha", "beta")
    values = {}
    for name in names:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"--law {path}: {name} must be a finite number; the file needs {', '.join(names)}")
        values[name] = float(value)
    for name in ("A", "B", "alpha", "beta"):
        if values[name] <= 0:
            raise UserError(f"--law {path}: {name} must be > 0, got {values[name]}")
    law = FittedLaw(form=LAWS["chinchilla"], parameters=ChinchillaParameters(**values), status="converged",
                    draws=np.empty((0, 5)))
    return PlanLaw(
        source=str(path),
        description=f"{path}: L = E + A/N^alpha + B/D^beta from the file",
        fitted=FittedSweep(laws={"chinchilla": law}, pruning={}, int8=None),
        law="chinchilla",
        ranges=MeasuredRanges(note="the file records no measured ranges"),
        choice={"name": "chinchilla", "status": "given", "reason": None, "heldout_error": None,
                "why": f"--law {path}: parameters given in the file", "candidates": []},
    )


def _sweep_details(runs_dir: Path, fit: dict) -> tuple[MeasuredRanges, dict | None]:
    """Measured ranges (N and finished-point tokens from fit.json's runs; sparsities from compress.jsonl) and the
    shape template."""
    runs = fit.get("runs") or []
    # per run: the law's N (older fits: non_embedding_params) and every finished point's tokens (a WSD run's
    # branch ends too; fits before they were listed: the run's last)
    measured = [(r.get("params") or r.get("non_embedding_params"),
                 [d for d in (r.get("finished_tokens") or [r.get("final_tokens")]) if d]) for r in runs]
    sizes = [n for n, _ in measured if n]
    tokens = [d for _, ds in measured for d in ds]
    reach = [(n, max(ds)) for n, ds in measured if n and ds]
    sparsity: dict[str, list[float]] = {}
    for method, entry in ((fit.get("compression") or {}).get("pruning") or {}).items():
        if timing_of(method) in TIMINGS and isinstance(entry, dict) and entry.get("sparsities"):
            sparsity[method] = [float(v) for v in entry["sparsities"]]  # sparse runs: no compress.jsonl rows
    template, aspects, depths, computes = None, [], [], []
    for run_dir in list_runs(runs_dir):
        for row in read_jsonl(run_dir / "compress.jsonl"):
            s = row.get("sparsity")
            if isinstance(s, (int, float)) and s > 0 and isinstance(row.get("method"), str):
                sparsity.setdefault(row["method"], []).append(float(s))
        try:
            config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            config = {}
        shape = config.get("shape") if isinstance(config, dict) else None
        if not (isinstance(shape, dict) and {"context", "vocab_size"} <= shape.keys()):
            continue
        computes += [config["train_flops"]] if isinstance(config.get("train_flops"), (int, float)) else []
        if isinstance(shape.get("width"), int) and isinstance(shape.get("depth"), int) and shape["depth"] > 0:
            aspects.append(shape["width"] / shape["depth"])
            depths.append(shape["depth"])
        template = template or {
            "arch": shape.get("arch", "gpt2"),
            "context": int(shape["context"]),
            "vocab_size": int(shape["vocab_size"]),
            "ffn_mult": int(shape.get("ffn_mult", 4)),
            "objective": shape.get("objective", "clm"),
        }
    ranges = MeasuredRanges(
        N=(min(sizes), max(sizes)) if sizes else None,
        D=(min(tokens), max(tokens)) if tokens else None,
        sparsity={m: (min(v), max(v)) for m, v in sparsity.items()},
        note="sizes and finished-point tokens of the runs in fit.json; sparsities from the runs' compress.jsonl "
             "(pruning at init or during training: from fit.json)",
        aspect=(min(aspects), max(aspects)) if aspects else None,
        depth=(min(depths), max(depths)) if depths else None,
        reach=tuple(reach),
        compute=max(computes) if computes else None,
    )
    return ranges, template


# Statuses fit.json gives a law the fit cannot defend: a parameter at a bound or an interval too
# wide to pin it (issue 12's "unidentified"; older fits say "hit_bound"), intervals resting on under 80%
# of the bootstrap refits ("unstable"), or no convergence at all.
UNDEFENDED = ("unidentified", "unstable", "hit_bound", "not_converged", "failed")


_DEFAULT_REASONS = {  # for fits written before fit.json gave reasons
    "hit_bound": "a parameter sits at its bound, so the data do not pin it down",
    "not_converged": "the optimiser stopped without meeting its tolerances",
}


def _law_candidates(data: dict) -> list[dict]:
    """Each L(N, D) law of fit.json: name, status, the fit's reason, leave-largest-out error."""
    out = []
    for name, entry in (data.get("laws") or {}).items():
        if name not in LAWS or not isinstance(entry, dict):
            continue
        heldout = entry.get("heldout") if isinstance(entry.get("heldout"), dict) else {}
        error = heldout.get("relative_error")
        longest = entry.get("heldout_tokens")
        out.append({
            "name": name,
            "status": str(entry.get("status", "converged")),
            "reason": entry.get("reason") or _DEFAULT_REASONS.get(entry.get("status")),
            "heldout_error": float(error) if isinstance(error, (int, float)) else None,
            "extrapolation_error": extrapolation_error(entry),
            "heldout_tokens": {k: longest.get(k) for k in ("tokens_ratio", "relative_error", "bias")}
            if isinstance(longest, dict) and isinstance(longest.get("bias"), (int, float)) else None,
        })
    return out


def choose_law(data: dict, law_form: str | None, flag: str, path: Path) -> dict:
    """The L(N, D) law to plan with and why (plan.json's law.choice); UserError when none is defensible.

    Among laws fit.json does not mark unidentified (`UNDEFENDED`), the lowest held-out error wins (the
    larger of leave-largest-out and leave-longest-out: `scaling.sweep_fit.extrapolation_error`);
    without held-out errors, the first such law (Chinchilla's form comes first).
    ``law_form`` (--law-form) picks one by name, which must itself be defensible.
    """
    candidates = _law_candidates(data)
    usable = [c for c in candidates if c["status"] not in UNDEFENDED]

    def problem(c: dict) -> str:
        return f"{c['name']} is {c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")

    if law_form is not None:
        named = [c for c in candidates if c["name"] == law_form]
        if not named:
            valid = ", ".join(c["name"] for c in candidates) or "none"
            raise UserError(f"--law-form: {law_form!r} is not fitted in {path}; valid: {valid}")
        if named[0] not in usable:
            raise UserError(f"--law-form {law_form}: {problem(named[0])} in {path}; the sweep's design cannot "
                            "defend it: change the sweep (train.cooldowns or train.budgets), refit, or plan with "
                            f"--law {'|'.join(PUBLISHED_LAWS)}")
        return {**named[0], "why": "named by --law-form", "candidates": candidates}
    if not usable:
        problems = "; ".join(problem(c) for c in candidates) or "fit.json holds no L(N, D) law"
        raise UserError(f"{flag} {path}: no law the fit can defend: {problems}; change the sweep's design as "
                        "tlc fit says (more D per size: train.cooldowns or train.budgets; a loss floor: longer runs or "
                        f"larger shapes) and refit, or plan with --law {'|'.join(PUBLISHED_LAWS)}")
    preferred = (data.get("preferred_law") or {})
    chosen = [c for c in usable if c["name"] == preferred.get("name")]
    if chosen and preferred.get("rule"):  # fits that record their rule (tlc fit since issue 30) choose for the plan too
        return {**chosen[0], "why": f"fit.json's preferred law: {preferred.get('reason')}", "candidates": candidates}
    scored = [c for c in usable if c["extrapolation_error"] is not None]
    if scored:
        best = min(scored, key=lambda c: c["extrapolation_error"])
        longest = (best["heldout_tokens"] or {}).get("relative_error")
        parts = [f"leave-largest-out {best['heldout_error']:.4f}" if best["heldout_error"] is not None else None,
                 f"leave-longest-out {longest:.4f}" if isinstance(longest, (int, float)) else None]
        why = (f"lowest held-out error ({best['extrapolation_error']:.4f}: the larger of "
               f"{' and '.join(p for p in parts if p)}) of the laws the fit does not mark unidentified")
    else:
        best = usable[0]
        why = "the first law the fit does not mark unidentified (no held-out errors: too few model sizes)"
    return {**best, "why": why, "candidates": candidates}


def _fit_file(path: Path, data: dict, flag: str, law_form: str | None = None) -> PlanLaw:
    if data.get("format") != FIT_FORMAT:
        raise UserError(f"{flag} {path}: fit.json: format must be {FIT_FORMAT!r}, got {data.get('format')!r}; "
                        "rerun `tlc fit`")
    choice = choose_law(data, law_form, flag, path)  # before load_fit: an unidentified law gets the design problem
    try:
        fitted = scaling.load_fit(data)
    except ValueError as error:
        raise UserError(f"{flag} {path}: {error}") from None
    law = choice["name"]
    if law not in fitted.laws:  # load_fit leaves out what did not converge; choose_law refuses those too
        raise UserError(f"{flag} {path}: law {law} could not be read back; rerun `tlc fit`")
    runs_dir = path.parent
    ranges, template = _sweep_details(runs_dir, data)
    withheld = {
        method: f"{entry.get('status')}: {entry.get('identification') or entry.get('reason')}"
        for method, entry in ((data.get("compression") or {}).get("pruning") or {}).items()
        if isinstance(entry, dict) and (timing_of(method) in TIMINGS and entry.get("status") in UNDEFENDED
                                        or entry.get("status") == "unstable")  # any method: its intervals are unsound
    }
    withheld.update({
        key: f"{entry.get('status')}: {entry.get('reason')}"
        for key, entry in ((data.get("compression") or {}).get("quantization") or {}).items()
        if isinstance(entry, dict) and entry.get("status") == "unstable"
    })
    pruning_checks = {
        method: {"candidate": entry.get("candidate"),
                 "error": (entry.get("heldout_errors") or {}).get(entry.get("candidate")),
                 "levels": int(sparsity_levels(np.array(entry["sparsities"], dtype=float)).max()) + 1}
        for method, entry in ((data.get("compression") or {}).get("pruning") or {}).items()
        if isinstance(entry, dict) and entry.get("sparsities")
    }
    has_runs = bool(list_runs(runs_dir))
    return PlanLaw(
        source=str(path),
        description=f"{path}: {law} law fitted to {data.get('n_runs', '?')} runs ({choice['status']})",
        fitted=fitted,
        law=law,
        ranges=ranges,
        runs_dir=runs_dir if has_runs else None,
        shape_template=template,
        choice=choice,
        size=fitted.size,
        withheld=withheld,
        pruning_checks=pruning_checks,
    )


def _read_json(path: Path, flag: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{flag}: {path} not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{flag}: cannot read {path} as JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag}: {path} must hold a JSON object (a fit.json or {{E, A, B, alpha, beta}})")
    return data


def load_plan_law(runs: Path | None, law: str | None, law_form: str | None = None) -> PlanLaw:
    """The law named by ``--runs DIR`` (its fit.json) or ``--law NAME|FILE.json``; exactly one must be given.

    From a fit.json the planner takes the law `choose_law` picks (``law_form``: --law-form).
    """
    if runs is not None and law is not None:
        raise UserError("--runs and --law: give one law, not both (--runs uses RUNS_DIR/fit.json)")
    if runs is None and law is None:
        valid = ", ".join(PUBLISHED_LAWS)
        raise UserError(f"--runs or --law: no law given; pass --runs RUNS_DIR (after tlc fit) "
                        f"or --law {{{valid}, FILE.json}}")
    if runs is not None:
        runs = Path(runs)
        if not runs.is_dir():
            raise UserError(f"--runs: {runs} is not a directory; give the sweep's folder, e.g. runs/tiny")
        path = runs / "fit.json"
        if not path.exists():
            raise UserError(f"--runs: {path} not found; run `tlc fit {runs}` first")
        return _fit_file(path, _read_json(path, "--runs"), "--runs", law_form)
    if law_form is not None and (law in PUBLISHED_LAWS or "format" not in _read_json(Path(law), "--law")):
        raise UserError(f"--law-form: chooses among the laws of a fit.json; --law {law} has only its own form")
    if law in PUBLISHED_LAWS:
        return _published(law)
    path = Path(law)
    if path.suffix.lower() != ".json" and not path.exists():
        valid = ", ".join(PUBLISHED_LAWS)
        raise UserError(f"--law: unknown law {law!r}; valid: {valid}, or a path to a fit.json "
                        "or {E, A, B, alpha, beta} JSON file")
    data = _read_json(path, "--law")
    if "format" in data:
        return _fit_file(path, data, "--law", law_form)
    return _parameters_file(path, data)
