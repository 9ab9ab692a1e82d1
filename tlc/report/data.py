"""What a report reads from a run directory: runs, fit, compression and plan — and what is missing.

The report never trains or compresses anything; it reads the files the other stages wrote and
works with whatever is there.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tlc.errors import UserError
from tlc.io import list_runs, read_jsonl


@dataclass
class RunData:
    run_id: str
    config: dict
    metrics: list[dict]
    compress: list[dict]

    @property
    def non_embedding(self) -> int:
        return int(self.config.get("params", {}).get("non_embedding", 0))

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


@dataclass
class SweepData:
    sweep_dir: Path
    name: str
    runs: list[RunData]
    fit: dict | None = None
    plan: dict | None = None
    missing: list[str] = field(default_factory=list)
    when_to_prune: dict | None = None  # bench/when_to_prune.py's when_to_prune.json, where it was run
    validations: list[dict] = field(default_factory=list)  # validation.json's entries (tlc validate)
    plan_sha256: str | None = None  # of plan.json, to find its validation

    @property
    def objective(self) -> str:
        """The runs' training objective: clm (causal) or mlm (masked LM); "mixed" when both are present."""
        seen = {(r.config.get("shape") or {}).get("objective", "clm") for r in self.runs} or {"clm"}
        return seen.pop() if len(seen) == 1 else "mixed"

    @property
    def compressed_runs(self) -> list[RunData]:
        return [r for r in self.runs if r.compress]


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"RUNS_DIR: {str(path)!r} is unreadable ({e}); run its stage again to rewrite it") from None


METRIC_NUMBERS = ("step", "tokens", "flops", "wall_s", "val_loss", "val_bpb", "val_acc")  # every line has these
COMPRESS_NUMBERS = ("sparsity", "bits", "nonzeros", "bytes", "val_loss", "val_bpb", "val_acc")  # when present


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_run(run_dir: Path, config, metrics: list, compress: list) -> None:
    """Refuse, in one line naming the file and field, what the figures and tables would trip over."""
    params = config.get("params", {}) if isinstance(config, dict) else None
    if not isinstance(params, dict) or not _is_number(params.get("non_embedding", 0)):
        raise UserError(f"RUNS_DIR: {str(run_dir / 'config.json')!r} must be an object whose params holds counts; "
                        "run tlc train again to rewrite it")
    files = ((run_dir / "metrics.jsonl", metrics, True), (run_dir / "compress.jsonl", compress, False))
    for path, rows, required in files:
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise UserError(f"RUNS_DIR: {str(path)!r} row {i}: expected a JSON object, got {type(row).__name__}")
            for name in METRIC_NUMBERS if required else COMPRESS_NUMBERS:
                if (required or name in row) and not _is_number(row.get(name)):
                    raise UserError(f"RUNS_DIR: {str(path)!r} row {i}: {name} must be a finite number, "
                                    f"got {row.get(name)!r}")
            buckets = row.get("loss_by_freq_bucket", [])  # None marks a bucket without tokens
            if not required and (not isinstance(row.get("method"), str) or not isinstance(buckets, list)
                                 or not all(b is None or _is_number(b) for b in buckets)):
                raise UserError(f"RUNS_DIR: {str(path)!r} row {i}: method must be text and "
                                "loss_by_freq_bucket a list of numbers")


def _check_fit_and_plan(sweep_dir: Path, fit, plan) -> None:
    """fit.json and plan.json must be objects, with the laws, frontier and Pareto front the report reads in their
    shapes."""
    for name, doc in (("fit.json", fit), ("plan.json", plan)):
        if doc is not None and not isinstance(doc, dict):
            raise UserError(f"RUNS_DIR: {str(sweep_dir / name)!r} must hold a JSON object; run its stage again")
    laws, frontier = (fit or {}).get("laws") or {}, (fit or {}).get("frontier") or {}
    ok = isinstance(laws, dict) and isinstance(frontier, dict) and all(
        isinstance(law, dict) and isinstance(law.get("parameters") or {}, dict)
        and all(isinstance(v, dict) for v in (law.get("parameters") or {}).values()) for law in laws.values())
    if not ok:
        raise UserError(f"RUNS_DIR: {str(sweep_dir / 'fit.json')!r} does not hold laws and frontier as tlc fit writes "
                        "them; run tlc fit again")
    front = (plan or {}).get("pareto_front")
    if front is not None and not isinstance(front, list):
        raise UserError(f"RUNS_DIR: {str(sweep_dir / 'plan.json')!r}: pareto_front must be a list of plans as tlc plan "
                        f"writes it, got {type(front).__name__}; run tlc plan again")


def _validations(sweep_dir: Path) -> list[dict]:
    """validation.json's entries whose points carry predicted and measured losses (others are refused)."""
    doc = _read_json(sweep_dir / "validation.json")
    if doc is None:
        return []
    entries = doc.get("validations") if isinstance(doc, dict) else None
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("points"), dict) and all(
            isinstance(p, dict) and _is_number((p.get("measured") or {}).get("loss"))
            and _is_number(((p.get("predicted") or {}).get("loss") or {}).get("mean")) for p in e["points"].values())
        for e in entries)
    if not ok:
        raise UserError(f"RUNS_DIR: {str(sweep_dir / 'validation.json')!r} is not as tlc validate writes it; "
                        "remove it and run tlc validate again")
    return entries


def collect(sweep_dir: Path) -> SweepData:
    """Read every stage's output under ``sweep_dir`` (a ``runs/<sweep>`` folder)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"RUNS_DIR: {str(sweep_dir)!r} is not a folder; give a sweep's run directory such as runs/tiny")
    runs = []
    for run_dir in list_runs(sweep_dir):
        cfg_path = run_dir / "config.json"
        config = _read_json(cfg_path) or {}
        metrics = read_jsonl(cfg_path.parent / "metrics.jsonl")
        if not metrics:
            continue
        compress = read_jsonl(cfg_path.parent / "compress.jsonl")
        _check_run(cfg_path.parent, config, metrics, compress)
        runs.append(RunData(cfg_path.parent.name, config, metrics, compress))
    if not runs:
        raise UserError(f"RUNS_DIR: {str(sweep_dir)!r} holds no trained runs (no <run>/metrics.jsonl); run tlc sweep first")
    runs.sort(key=lambda r: (r.non_embedding, r.run_id))
    fit, plan = _read_json(sweep_dir / "fit.json"), _read_json(sweep_dir / "plan.json")
    _check_fit_and_plan(sweep_dir, fit, plan)
    data = SweepData(sweep_dir, sweep_dir.name, runs, fit, plan,
                     when_to_prune=_read_json(sweep_dir / "when_to_prune.json"))
    data.validations = _validations(sweep_dir)
    if plan is not None:
        data.plan_sha256 = hashlib.sha256((sweep_dir / "plan.json").read_bytes()).hexdigest()
    incomplete = [r.run_id for r in runs if not (sweep_dir / r.run_id / "model" / "config.json").exists()]
    if incomplete:
        data.missing.append(f"runs still training or stopped early: {', '.join(incomplete)} (tlc sweep resumes them)")
    if not data.compressed_runs:
        data.missing.append("no compression results yet: run tlc compress " + str(sweep_dir))
    if data.fit is None:
        data.missing.append("no scaling-law fit yet: run tlc fit " + str(sweep_dir))
    if data.plan is None:
        data.missing.append(f"no plan yet: run tlc plan --runs {sweep_dir} --budget FLOPS")
    return data


def _load_fit(fit: dict | None):
    """fit.json's content as a `scaling.FittedSweep`; None where it cannot be read as one."""
    import scaling

    try:
        return scaling.load_fit(fit)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def fitted_curve(fit: dict | None):
    """(law name, loss(run, tokens)) for the L(N, D) law fit.json prefers, with each run's N counted as
    the fit counted it (every parameter, or the non-embedding ones); None without a usable law."""
    fitted = _load_fit(fit)
    if fitted is None:
        return None
    name = fitted.preferred_law
    if name not in fitted.laws:
        return None
    law = fitted.laws[name]

    def loss(run: RunData, tokens):
        n = float((run.config.get("params") or {}).get(fitted.size) or 0)
        return law.form.predict(law.parameters, N=n, D=tokens) if n > 0 else None

    return name, loss


def fitted_pruning(fit: dict | None) -> dict:
    """{method: (form name, added(run, sparsity) -> dL)} for each pruning model fit.json chose: the loss
    pruning to ``sparsity`` adds to the run's model, at its N as the fit counted it and its tokens per
    parameter; {} without a usable fit."""
    from scaling.compression import added_loss

    fitted = _load_fit(fit)
    if fitted is None:
        return {}

    def curve(model):
        def added(run: RunData, sparsity):
            n = float((run.config.get("params") or {}).get(fitted.size) or 0)
            tokens = float(run.final.get("tokens") or 0)
            if n <= 0 or tokens <= 0:
                return None
            covariates = {"sparsity": sparsity, "N": n, "tokens_per_param": tokens / n}
            return added_loss(model.form, model.parameters, 1.0,
                              **{k: v for k, v in covariates.items() if k in model.form.covariates})

        return model.form.name, added

    return {method: curve(model) for method, model in fitted.pruning.items()}


def dense_row(run: RunData) -> dict | None:
    """The compression stage's row for the unmodified model, when it wrote one."""
    for row in run.compress:
        if row.get("method") in ("none", "dense") and int(row.get("bits", 32)) == 32 and not row.get("sparsity"):
            return row
    return None


def variant_label(row: dict) -> str:
    method = row.get("method", "?")
    if method in ("gptq", "rtn"):  # weight-only quantization: bits and group size, no sparsity
        return f"{method} {int(row.get('bits', 32))}-bit g{row.get('group_size') or 'row'}"
    parts = [] if method in ("none", "dense") else [f"{method} {float(row.get('sparsity', 0)):.0%}"]
    if int(row.get("bits", 32)) == 8:
        parts.append("int8")
    return " + ".join(parts) or "dense"
