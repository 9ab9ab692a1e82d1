"""Inference cost of a planned model: non-zero parameters, bytes on disk, latency on a device.

Pruning removes a fraction s of the non-embedding weights (the law's N); embeddings stay
dense, so a model of E embedding and N non-embedding parameters keeps

    nonzeros = E + (1 - s)·N.

Bytes, per (pruning method, int8) group g, are linear in the non-zeros and the dense size P = E + N:

    bytes = v_g·nonzeros + m_g·P

v_g is bytes per stored value and m_g the per-weight overhead of the sparse format (a bitmask
costs 1/8 byte per weight). Both are fitted, non-negative, to the variants `tlc compress`
measured (compress.jsonl's nonzeros and bytes, config.json's params.total), or with a single
measured size the ratio bytes/nonzeros alone (m_g = 0). Groups never measured get defaults:
v = 4 for fp32 or 1 for 8-bit values (bits/8 + 2/group for weight-only codes), m = 1/8 for
unstructured sparsity stored as a bitmask (magnitude, 2:4, gradual, movement), 0 for dense,
block-sparse and structured models.

Latency, per device and batch size, is a log-linear fit to compress.jsonl's measurements:

    log latency = a_g + b·log(E + N) + c_g·log(1 - s)

with g the (method, int8) group, b shared by all groups (how latency grows with the dense model
size) and c_g (how much sparsity speeds group g up) fitted only for groups measured at two or
more sparsities (otherwise 0). Only measured groups can be predicted. Each variant's latency is
the fastest runtime measured for it: torch, or ONNX Runtime int8 for 8-bit variants where
`tlc compress` timed that too.

Weight-only quantizers (gptq, rtn) form groups of their own, named as fit.json names their loss
models ("gptq-w4": method and bits), never pruned and never int8. Their bytes are the encoding
`tlc compress` stores (`tlc.artifact`: 4-bit codes two to a byte, or int8 codes, plus an fp16
scale per output row and group of inputs; embeddings fp32) at the bits and group size measured.
They run dequantized, as dense fp32 matrices (no int4 or int8 kernel on CPU), so their latency is
only what compress.jsonl measured for them; no speedup is assumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaling.compression_fit import TIMINGS, timing_of
from tlc.errors import UserError
from tlc.io import list_runs, read_jsonl

VALUE_BYTES = {False: 4.0, True: 1.0}  # fp32 weights (compress.jsonl's dense rows are 32-bit), 8-bit weights
LATENCY_BATCHES = (1, 32)
WEIGHT_ONLY = ("gptq", "rtn")  # tlc.compress.variants.QUANTIZERS: weight-only codes, priced as groups of their own
WEIGHT_ONLY_LATENCY = ("measured as stored runs it: codes dequantized to dense fp32 matrices (no int4/int8 kernel), "
                       "so no speedup over dense is assumed")


def weight_only_key(method: str, bits: int) -> str:
    """A weight-only quantizer at a bit width as fit.json's quantization models name it: "gptq-w4"."""
    return f"{method}-w{int(bits)}"


@dataclass(frozen=True)
class WeightOnly:
    """A weight-only quantizer as `tlc compress` measured it: method, bits, inputs per scale (0: one per row)."""

    method: str
    bits: int
    group_size: int
    calibration: dict | None = None  # compress.jsonl's {split, sequences, tokens} for gptq; None for rtn

    @property
    def key(self) -> str:
        """fit.json's name of its loss model, e.g. "gptq-w4"."""
        return weight_only_key(self.method, self.bits)


# A model trained sparse (pruning at init or during training) is stored as it is: global magnitude pruning
# at its sparsity finds exactly the zeros its masks left (tlc.plan.recipe), so it is priced as that method.
STORE_SPARSE = "magnitude-global"


def stored_method(method: str) -> str:
    """The compression method whose encoding stores a model pruned with ``method``."""
    return STORE_SPARSE if timing_of(method) in TIMINGS else method


def default_overhead(method: str) -> float:
    """Bytes per dense weight of a sparse format, m_g of the module docstring, for a method never measured."""
    name = method.lower()
    if name == "none" or "block" in name or "struct" in name:
        return 0.0
    return 0.125  # a bitmask over the weights


def _group(row: dict) -> tuple[str, bool]:
    if row.get("method") in WEIGHT_ONLY:
        return weight_only_key(row["method"], row.get("bits") or 32), False
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


def fastest_latency(row: dict, batch: int) -> float | None:
    """A compress.jsonl row's ms per token at ``batch`` on the fastest runtime measured: torch, or ONNX
    Runtime int8 where ``tlc compress`` timed it (8-bit variants, onnxruntime installed)."""
    measured = [row.get(f"latency_ms_b{batch}"), row.get(f"latency_ms_b{batch}_ort_int8")]
    measured = [float(v) for v in measured if isinstance(v, (int, float)) and v > 0]
    return min(measured) if measured else None


def read_measurements(runs_dir: Path) -> list[MeasuredVariant]:
    """Every compressed variant under ``runs_dir`` (``<run>/compress.jsonl``), with its model's size."""
    variants = []
    for run_dir in [p for p in list_runs(runs_dir) if (p / "compress.jsonl").is_file()]:
        try:
            params = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("params") or {}
        except (OSError, json.JSONDecodeError):
            params = {}
        total = params.get("total")
        for row in read_jsonl(run_dir / "compress.jsonl"):
            if not isinstance(row.get("method"), str):
                continue
            latency = {b: fastest_latency(row, b) for b in LATENCY_BATCHES}
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
        """Latency in ms; NaN for a group that was not measured (not in ``offsets``)."""
        if group not in self.offsets:
            return np.full(np.shape(np.asarray(params_total) + np.asarray(sparsity)), np.nan)
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
    """Fit `LatencyModel` to the variants measured on ``device`` at ``batch``; UserError if it cannot be fitted.

    ``device`` is a device name as compress.jsonl writes it ("cpu:x86_64:16threads", "cuda:NVIDIA H100 ...")
    or a prefix that names exactly one of them ("cpu", "cuda").
    """
    measured = sorted({str(v.device) for v in variants if batch in v.latency_ms})
    matches = [d for d in measured if d == device] or [d for d in measured if d.startswith(device)]
    if len(matches) != 1:
        valid = f"devices measured: {', '.join(measured)}" if measured else "no latency was measured at all"
        problem = "names several devices" if matches else f"no latency at batch {batch} measured on it"
        raise UserError(f"--device: {device!r} {problem} in compress.jsonl; {valid}")
    device = matches[0]
    rows = [v for v in variants if v.device == device and batch in v.latency_ms and math.isfinite(v.params_total)]
    if not rows:
        raise UserError(f"--device: the runs measured on {device!r} have no params.total in config.json")
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


def shape_of(template: dict, N, embedding) -> tuple[np.ndarray, np.ndarray]:
    """(width, depth) of shapes of ``template`` from their (N, embedding): the inverse of `tlc.shapes.param_counts`."""
    from tlc.architecture import shape_from_counts

    return shape_from_counts(template, N, embedding)


@dataclass(frozen=True)
class CostModel:
    """Non-zeros, bytes and (where fitted) latency of a model, vectorised over N, embeddings and sparsity.

    With a shape ``template`` (a sweep's arch, context, vocabulary), non-zeros and bytes come from
    the storage encoding itself (`tlc.artifact`: an upper bound, so a carried-out plan stays inside
    its budget); without one (a published law's continuous N) from the fitted or default
    coefficients of the module docstring.
    """

    bytes_fits: dict  # {(method, int8): (v_g, m_g)} fitted to compress.jsonl
    latency: LatencyModel | None = None
    template: dict | None = None  # arch, context, vocab_size, ffn_mult
    blocks: dict = field(default_factory=dict)  # {method: block size} measured (block pruning)
    weight_only: dict = field(default_factory=dict)  # {"gptq-w4": WeightOnly} measured (gptq, rtn)

    def grouped(self, weight_only: str | None) -> tuple[int, int] | None:
        """(bits, group size) of a weight-only quantizer's encoding; None for pruning and int8 groups."""
        if weight_only is None:
            return None
        measured = self.weight_only[weight_only]
        return measured.bits, measured.group_size

    def _encoded(self, N, embedding, sparsity, method: str, int8: bool,
                 weight_only: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        from tlc.artifact import header_bytes, sizes
        from tlc.config import ModelShape

        width, depth = shape_of(self.template, N, embedding)
        method = stored_method(method)
        block = self.blocks.get(method)
        grouped = self.grouped(weight_only)
        data, nonzeros = sizes(self.template, width, depth, method, sparsity, int8, block, grouped)
        t = self.template
        header = np.vectorize(lambda w, d, s: header_bytes(
            ModelShape(int(w), int(d), 1, t["context"], t["vocab_size"], t["arch"], t["ffn_mult"],
                       t.get("objective", "clm")),
            method if s > 0 else "none", int8, block, grouped=grouped), otypes=[float])
        return data + header(width, depth, np.broadcast_to(sparsity, np.shape(width))), nonzeros

    def nonzeros(self, N, embedding, sparsity, method: str = "magnitude") -> np.ndarray:
        """Non-zero parameters: dense embeddings, biases and norms, plus the kept prunable weights."""
        if self.template is not None:
            return self._encoded(N, embedding, sparsity, method, False)[1].astype(float)
        return np.asarray(embedding) + (1.0 - np.asarray(sparsity)) * np.asarray(N)

    def bytes_coefficients(self, method: str, int8: bool, weight_only: str | None = None) -> tuple[float, float]:
        """(v_g, m_g) for a group: fitted, else the documented defaults."""
        if weight_only is not None:
            bits, group = self.grouped(weight_only)
            fitted = self.bytes_fits.get((weight_only, False))
            return fitted if fitted is not None else (bits / 8 + (2 / group if group > 0 else 0.0), 0.0)
        method = stored_method(method)
        fitted = self.bytes_fits.get((method, int8))
        return fitted if fitted is not None else (VALUE_BYTES[int8], default_overhead(method))

    def bytes(self, N, embedding, sparsity, method: str, int8: bool, weight_only: str | None = None) -> np.ndarray:
        """Artifact size in bytes (module docstring); ``weight_only`` names a quantizer ("gptq-w4") instead."""
        if self.template is not None:
            return self._encoded(N, embedding, sparsity, method, int8, weight_only)[0].astype(float)
        v, m = self.bytes_coefficients(method, int8, weight_only)
        return v * self.nonzeros(N, embedding, sparsity) + m * (np.asarray(embedding) + np.asarray(N))

    def latency_group(self, method: str, int8: bool, weight_only: str | None = None) -> tuple[str, bool]:
        """The measured (method, int8) group whose latency a category has: its own (a weight-only quantizer's
        is ("gptq-w4", False)), and for a model trained sparse its storage method's, else that of magnitude
        pruning (both run as dense matrices with zeros)."""
        if weight_only is not None:
            return weight_only, False
        if timing_of(method) not in TIMINGS:
            return method, int8
        measured = self.latency.offsets if self.latency is not None else {}
        return next((g for g in ((STORE_SPARSE, int8), ("magnitude", int8)) if g in measured), (STORE_SPARSE, int8))

    def latency_ms(self, N, embedding, sparsity, method: str, int8: bool, weight_only: str | None = None) -> np.ndarray:
        """Predicted latency in ms on the fitted device (NaN when no latency model, or the group was not measured)."""
        if self.latency is None:
            return np.full(np.shape(np.asarray(N) + np.asarray(sparsity)), np.nan)
        return self.latency.predict(np.asarray(embedding) + np.asarray(N), sparsity,
                                    self.latency_group(method, int8, weight_only))

    def describe(self) -> dict:
        """JSON-ready summary for plan.json."""
        if self.template is not None:
            return {
                "nonzeros": "embeddings, biases and norms, plus each matrix's numel - floor(sparsity * numel)",
                "bytes": "the storage encoding of tlc.compress.store counted from the shape (tlc.artifact), "
                         "an upper bound: each matrix in its cheapest encoding, the header at its longest",
                "blocks": self.blocks,
                **self._describe_weight_only(),
                "latency": self.latency.describe() if self.latency else None,
            }
        return {
            "nonzeros": "embedding + (1 - sparsity) * N",
            "bytes": "v_g * nonzeros + m_g * (embedding + N), g = (method, int8)",
            "bytes_fitted": [
                {"method": m, "int8": q, "v": v, "m": o} for (m, q), (v, o) in sorted(self.bytes_fits.items())
            ],
            "bytes_default": "v = 4 (fp32) or 1 (int8), bits/8 + 2/group (weight-only codes); m = 1/8 for "
                             "bitmask-stored unstructured sparsity, else 0",
            **self._describe_weight_only(),
            "latency": self.latency.describe() if self.latency else None,
        }

    def _describe_weight_only(self) -> dict:
        if not self.weight_only:
            return {}
        return {"weight_only": {key: {"method": w.method, "bits": w.bits, "group_size": w.group_size,
                                      "calibration": w.calibration,
                                      "bytes": "codes (bits/8 bytes per weight, 4-bit codes two to a byte) plus an "
                                               "fp16 scale per output row and group of inputs; embeddings fp32",
                                      "latency": WEIGHT_ONLY_LATENCY}
                                for key, w in sorted(self.weight_only.items())}}


def fit_bytes(variants: list[MeasuredVariant]) -> dict:
    """(v_g, m_g) per group by non-negative least squares on the measured variants (module docstring)."""
    from scipy.optimize import nnls

    fits = {}
    groups = {v.group for v in variants if v.nonzeros and v.bytes}
    for group in sorted(groups):
        rows = [v for v in variants if v.group == group and v.nonzeros and v.bytes]
        nonzeros = np.array([v.nonzeros for v in rows], dtype=float)
        size = np.array([v.bytes for v in rows], dtype=float)
        total = np.array([v.params_total for v in rows], dtype=float)
        X = np.stack([nonzeros, total], axis=1)
        if np.isfinite(total).all() and np.linalg.matrix_rank(X / X.max(axis=0)) == 2:
            coefficients, _ = nnls(X / X.max(axis=0), size)
            fits[group] = (float(coefficients[0] / X[:, 0].max()), float(coefficients[1] / X[:, 1].max()))
        else:
            fits[group] = (float(np.median(size / nonzeros)), 0.0)
    return fits


def build_cost_model(runs_dir: Path | None, device: str | None, batch: int, latency_flag: str | None,
                     template: dict | None = None) -> CostModel:
    """The cost model for a law: bytes calibrated from compress.jsonl, latency fitted when ``latency_flag``
    (the flag that asked for latency: --max-latency-ms or --device) is given."""
    variants = read_measurements(runs_dir) if runs_dir is not None else []
    latency = None
    if latency_flag:
        if not variants:
            where = f"under {runs_dir}" if runs_dir is not None else "for a law given without a sweep"
            raise UserError(f"{latency_flag}: no compress.jsonl {where}; latency comes from measurements "
                            "(run tlc compress on the sweep and plan with --runs), or use --max-params/--max-bytes")
        if not device:
            devices = sorted({str(v.device) for v in variants if v.latency_ms})
            raise UserError(f"--device: required with --max-latency-ms; measured: {', '.join(devices) or 'none'}")
        latency = fit_latency(variants, device, batch)
    blocks, weight_only = {}, {}
    for run_dir in list_runs(runs_dir) if runs_dir is not None else []:
        for row in read_jsonl(run_dir / "compress.jsonl"):
            if isinstance(row.get("block"), int) and isinstance(row.get("method"), str):
                blocks.setdefault(row["method"], row["block"])
            if row.get("method") in WEIGHT_ONLY and isinstance(row.get("bits"), int):
                calibration = row.get("calibration") if isinstance(row.get("calibration"), dict) else None
                measured = WeightOnly(row["method"], row["bits"], int(row.get("group_size") or 0), calibration)
                weight_only.setdefault(measured.key, measured)  # one group size per quantizer, as compressed
    return CostModel(bytes_fits=fit_bytes(variants), latency=latency, template=template, blocks=blocks,
                     weight_only=weight_only)
