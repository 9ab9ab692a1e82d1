"""Inference cost of a planned model: non-zero parameters, bytes on disk, latency on a device.

Pruning removes a fraction s of the non-embedding weights (the law's N); embeddings stay
dense, so a model of E embedding and N non-embedding parameters keeps

    nonzeros = E + (1 - s)·N.

Bytes are nonzeros × bytes per non-zero, one figure per (pruning method, int8): the median of
bytes/nonzeros over the variants `tlc compress` measured (compress.jsonl), or where none was
measured a default of 4 bytes per fp32 value or 1 per 8-bit value, plus index overhead: none for
dense, structured and block-sparse storage (one index per 32x32 block), 2 bits per kept
value for 2:4 metadata, 2 bytes (an int16 column index) for unstructured sparsity.

Latency, per device and batch size, is a log-linear fit to compress.jsonl's measurements:

    log latency = a_g + b·log(E + N) + c_g·log(1 - s)

with g the (method, int8) group, b shared by all groups (how latency grows with the dense model
size) and c_g (how much sparsity speeds group g up) fitted only for groups measured at two or
more sparsities (otherwise 0). Only measured groups can be predicted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlc.errors import UserError
from tlc.io import read_jsonl

VALUE_BYTES = {False: 4.0, True: 1.0}  # fp32 weights (compress.jsonl's dense rows are 32-bit), 8-bit weights
LATENCY_BATCHES = (1, 32)


def default_index_bytes(method: str) -> float:
    """Index bytes per kept value assumed for a pruning method never measured (module docstring)."""
    name = method.lower()
    if name == "none" or "block" in name or "struct" in name or "head" in name or "neuron" in name:
        return 0.0
    if "2:4" in name or "2_4" in name or "n:m" in name:
        return 0.25
    return 2.0


def _group(row: dict) -> tuple[str, bool]:
    sparsity = float(row.get("sparsity") or 0.0)
    method = "none" if sparsity <= 0 else str(row["method"])
    return method, float(row.get("bits") or 32) <= 8


@dataclass(frozen=True)
class MeasuredVariant:
    """One row of compress.jsonl with its model's dense parameter count (config.json params.total)."""

    run_id: str
    group: tuple[str, bool]
    sparsity: float
    params_total: float
    nonzeros: float | None
    bytes: float | None
    latency_ms: dict  # {batch: ms}
    device: str | None


def read_measurements(runs_dir: Path) -> list[MeasuredVariant]:
    """Every compressed variant under ``runs_dir`` (``<run>/compress.jsonl``), with its model's size."""
    variants = []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if (p / "compress.jsonl").is_file()):
        try:
            params = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("params") or {}
        except (OSError, json.JSONDecodeError):
            params = {}
        total = params.get("total")
        for row in read_jsonl(run_dir / "compress.jsonl"):
            if not isinstance(row.get("method"), str):
                continue
            latency = {b: row.get(f"latency_ms_b{b}") for b in LATENCY_BATCHES}
            variants.append(MeasuredVariant(
                run_id=run_dir.name,
                group=_group(row),
                sparsity=float(row.get("sparsity") or 0.0),
                params_total=float(total) if isinstance(total, (int, float)) and total > 0 else math.nan,
                nonzeros=row.get("nonzeros") if isinstance(row.get("nonzeros"), (int, float)) else None,
                bytes=row.get("bytes") if isinstance(row.get("bytes"), (int, float)) else None,
                latency_ms={b: float(v) for b, v in latency.items() if isinstance(v, (int, float)) and v > 0},
                device=row.get("device"),
            ))
    return variants


@dataclass(frozen=True)
class LatencyModel:
    """The per-device log-linear latency fit of the module docstring."""

    device: str
    batch: int
    offsets: dict  # {(method, int8): a_g}
    size_exponent: float  # b
    sparsity_exponents: dict  # {(method, int8): c_g}
    n_points: int
    rms_log_error: float  # in-sample RMS of log latency residuals

    def predict(self, params_total: np.ndarray, sparsity: np.ndarray, group: tuple[str, bool]) -> np.ndarray:
        """Latency in ms; only groups in ``offsets`` were measured."""
        a, c = self.offsets[group], self.sparsity_exponents.get(group, 0.0)
        return np.exp(a + self.size_exponent * np.log(params_total) + c * np.log1p(-np.asarray(sparsity)))

    def describe(self) -> dict:
        """JSON-ready summary for plan.json."""
        return {
            "device": self.device,
            "batch": self.batch,
            "equation": "log latency_ms = a_g + b*log(params_total) + c_g*log(1 - sparsity), g = (method, int8)",
            "b": self.size_exponent,
            "groups": [
                {"method": m, "int8": q, "a": a, "c": self.sparsity_exponents.get((m, q), 0.0)}
                for (m, q), a in sorted(self.offsets.items())
            ],
            "n_points": self.n_points,
            "rms_log_error": self.rms_log_error,
        }


def fit_latency(variants: list[MeasuredVariant], device: str, batch: int) -> LatencyModel:
    """Fit `LatencyModel` to the variants measured on ``device`` at ``batch``; UserError if it cannot be fitted."""
    rows = [v for v in variants if v.device == device and batch in v.latency_ms and math.isfinite(v.params_total)]
    if not rows:
        devices = sorted({str(v.device) for v in variants if v.latency_ms})
        valid = f"devices measured: {', '.join(devices)}" if devices else "no latency was measured at all"
        raise UserError(f"--device: no latency at batch {batch} measured on {device!r} in compress.jsonl; {valid}")
    if len({v.params_total for v in rows}) < 2:
        raise UserError(f"--max-latency-ms: latency on {device!r} was measured for one model size only; "
                        "the size dependence needs two (run tlc compress on another run)")
    groups = sorted({v.group for v in rows})
    sparse_groups = [g for g in groups if len({v.sparsity for v in rows if v.group == g}) >= 2]
    X = np.zeros((len(rows), len(groups) + 1 + len(sparse_groups)))
    y = np.log([v.latency_ms[batch] for v in rows])
    for i, v in enumerate(rows):
        X[i, groups.index(v.group)] = 1.0
        X[i, len(groups)] = math.log(v.params_total)
        if v.group in sparse_groups:
            X[i, len(groups) + 1 + sparse_groups.index(v.group)] = math.log1p(-v.sparsity)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ coef
    return LatencyModel(
        device=device,
        batch=batch,
        offsets={g: float(coef[i]) for i, g in enumerate(groups)},
        size_exponent=float(coef[len(groups)]),
        sparsity_exponents={g: float(coef[len(groups) + 1 + i]) for i, g in enumerate(sparse_groups)},
        n_points=len(rows),
        rms_log_error=float(np.sqrt(np.mean(residuals**2))),
    )


@dataclass(frozen=True)
class CostModel:
    """Non-zeros, bytes and (where fitted) latency of a model, vectorised over N, embeddings and sparsity."""

    bytes_per_nonzero: dict  # {(method, int8): measured median bytes/nonzeros}
    latency: LatencyModel | None = None

    def nonzeros(self, N, embedding, sparsity) -> np.ndarray:
        """Non-zero parameters: dense embeddings plus the kept fraction of the non-embedding weights."""
        return np.asarray(embedding) + (1.0 - np.asarray(sparsity)) * np.asarray(N)

    def bytes_ratio(self, method: str, int8: bool) -> float:
        """Bytes per non-zero for a (method, int8) group: measured, else the documented default."""
        measured = self.bytes_per_nonzero.get((method, int8))
        return measured if measured is not None else VALUE_BYTES[int8] + default_index_bytes(method)

    def bytes(self, N, embedding, sparsity, method: str, int8: bool) -> np.ndarray:
        """Artifact size in bytes (module docstring)."""
        return self.nonzeros(N, embedding, sparsity) * self.bytes_ratio(method, int8)

    def latency_ms(self, N, embedding, sparsity, method: str, int8: bool) -> np.ndarray:
        """Predicted latency in ms on the fitted device (NaN when no latency model)."""
        if self.latency is None:
            return np.full(np.shape(np.asarray(N) + np.asarray(sparsity)), np.nan)
        return self.latency.predict(np.asarray(embedding) + np.asarray(N), sparsity, (method, int8))

    def describe(self) -> dict:
        """JSON-ready summary for plan.json."""
        return {
            "nonzeros": "embedding + (1 - sparsity) * N",
            "bytes": "nonzeros * bytes_per_nonzero(method, int8)",
            "bytes_per_nonzero_measured": [
                {"method": m, "int8": q, "value": v} for (m, q), v in sorted(self.bytes_per_nonzero.items())
            ],
            "bytes_per_nonzero_default": "4 (fp32) or 1 (int8) + index bytes: 0 dense/block/structured, 0.25 2:4, 2 unstructured",
            "latency": self.latency.describe() if self.latency else None,
        }


def build_cost_model(runs_dir: Path | None, device: str | None, batch: int, need_latency: bool) -> CostModel:
    """The cost model for a law: bytes calibrated from compress.jsonl, latency fitted when asked."""
    variants = read_measurements(runs_dir) if runs_dir is not None else []
    ratios: dict[tuple[str, bool], list[float]] = {}
    for v in variants:
        if v.nonzeros and v.bytes:
            ratios.setdefault(v.group, []).append(v.bytes / v.nonzeros)
    latency = None
    if need_latency:
        if not variants:
            where = f"under {runs_dir}" if runs_dir is not None else "for a law given without a sweep"
            raise UserError(f"--max-latency-ms: no compress.jsonl {where}; latency comes from measurements "
                            "(run tlc compress on the sweep and plan with --runs), or use --max-params/--max-bytes")
        if not device:
            devices = sorted({str(v.device) for v in variants if v.latency_ms})
            raise UserError(f"--device: required with --max-latency-ms; measured: {', '.join(devices) or 'none'}")
        latency = fit_latency(variants, device, batch)
    return CostModel(bytes_per_nonzero={g: float(np.median(r)) for g, r in ratios.items()}, latency=latency)
