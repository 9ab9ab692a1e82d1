"""Bytes and non-zeros of a compressed artifact, from the shape alone: the storage encoding of
`tlc.compress.store`, counted without building the model (no torch), so the planner can price
shapes it never built and a carried-out plan never exceeds the bytes it was promised.

`tlc compress` stores each prunable matrix in the smallest of its encodings (dense, bitmask or
block-sparse rows) and every other tensor as the model holds it, with 8-bit weights as int8
plus one fp16 scale per row (embedding tables included), in one safetensors file: an 8-byte
length, a JSON header (tensor names, dtypes, shapes, offsets, and the ``tlc_format`` metadata)
padded to 8 bytes, then the data.

What is predicted is an upper bound that is tight in practice:

- each layer keeps ``numel - floor(s * numel)`` weights (pruning removes round(s * numel) per
  layer; magnitude, gradual and movement), or ``blocks - floor(s * blocks)`` blocks (block
  pruning), or a share ``1 - s`` of its rows and columns' weights (structured, stored dense);
- a matrix costs the cheapest encoding open to it, as `store.save_variant` chooses;
- the header is sized with the longest encoding record and the widest offsets each tensor could
  have.

Weight-only quantized variants (gptq, rtn at ``bits`` with ``group_size`` inputs per scale) store
every prunable matrix as codes, bits/8 bytes per weight (4-bit codes two to a byte), plus one fp16
scale per output row and group of inputs; everything else stays fp32 (`store._encode_grouped`).

A test saves real variants and checks predicted >= measured, within 0.5%.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tlc.architecture import ModelShape, Tensor, layout_counts, model_tensors

DTYPE_BYTES = {"F32": 4, "F16": 2, "I8": 1, "U8": 1, "I32": 4}
UNSTRUCTURED = ("magnitude", "magnitude-global", "gradual", "movement", "2:4")


def prunable_params(shape: ModelShape) -> int:
    """Weights of the attention and MLP matrices: what a pruning sparsity is a share of."""
    return sum(math.prod(t.shape) for t in model_tensors(shape) if t.role == "matrix")


def _entries(t: Tensor, kind: str, int8: bool, kept: int, block: int) -> tuple[list[tuple[str, str, tuple]], dict]:
    """(safetensors entries [(name, dtype, shape)], tlc_format record) of one encoded matrix."""
    rows, cols = t.shape
    value = "I8" if int8 else "F32"
    scale = [(f"{t.name}.scale", "F16", (rows,))] if int8 else []
    record = {"kind": kind, "shape": [rows, cols], "bits": 8 if int8 else 32}
    if kind == "dense":
        entries = [(f"{t.name}.q" if int8 else t.name, value, (rows, cols))]
    elif kind == "bitmask":
        entries = [(f"{t.name}.bitmask", "U8", (math.ceil(rows * cols / 8),)), (f"{t.name}.values", value, (kept,))]
    else:  # bsr: kept is a count of blocks
        record["block_size"] = block
        entries = [(f"{t.name}.bsr_values", value, (kept, block, block)), (f"{t.name}.crow", "I32", (rows // block + 1,)),
                   (f"{t.name}.col", "I32", (kept,))]
    if t.role == "matrix":
        record["conv1d"] = t.conv1d
    return entries + scale, record


def _grouped_entries(t: Tensor, bits: int, group_size: int) -> tuple[list[tuple[str, str, tuple]], dict]:
    """(safetensors entries, tlc_format record) of one weight-only quantized matrix (`store._encode_grouped`)."""
    rows, cols = t.shape
    width = cols if group_size <= 0 else min(group_size, cols)
    codes = [(f"{t.name}.q", "I8", (rows, cols))] if bits == 8 else [(f"{t.name}.q4", "U8", (-(-(rows * cols) // 2),))]
    record = {"kind": "grouped", "shape": [rows, cols], "bits": bits, "group_size": width, "conv1d": t.conv1d}
    return codes + [(f"{t.name}.scale", "F16", (rows, -(-cols // width)))], record


def _header_bytes(entries: list[tuple[str, str, tuple]], formats: dict, int8_path: str, data_bytes: int) -> int:
    """Length of the safetensors header (JSON, padded to 8) plus its 8-byte length prefix; offsets at their widest."""
    widest = data_bytes
    header = {"__metadata__": {"tlc_format": json.dumps(formats), "int8_path": int8_path}}
    for name, dtype, shape in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [widest, widest]}
    length = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return 8 + length + (-length) % 8


def grouped_bytes(rows, cols, bits: int, group_size: int):
    """Bytes of one weight-only quantized [rows, cols] matrix: its codes (4-bit codes two to a byte, the last
    byte padded) and fp16 scales [rows, groups] with groups of ``group_size`` inputs (0: one per row)."""
    width = np.minimum(group_size, cols) if group_size > 0 else cols
    codes = rows * cols if bits == 8 else -(-(rows * cols) // 2)
    return codes + 2 * rows * -(-cols // width)


def sizes(template: dict, width, depth, method: str, sparsity, int8: bool, block: int | None = None,
          grouped: tuple[int, int] | None = None):
    """(data bytes, non-zeros), vectorised over arrays of width, depth and sparsity (broadcast together).

    ``template``: arch, context, vocab_size, ffn_mult and optionally objective. Data bytes exclude the safetensors header
    (`header_bytes`); both follow the module docstring's rules. ``grouped``: (bits, group_size) of a weight-only
    quantized variant (method "none", not int8).
    """
    d, L, s = np.broadcast_arrays(*(np.asarray(v) for v in (width, depth, sparsity)))
    d, L, s = d.astype(np.int64), L.astype(np.int64), s.astype(float)
    layout = layout_counts(template, d, L)
    vb = 1 if int8 else 4
    sparse = (s > 0) & (method != "none")
    bs = block or 32
    others = layout.others
    data = 4 * others
    nonzeros = others.copy()
    for rows in layout.embedding_rows:
        data = data + (rows * d + 2 * rows if int8 else 4 * rows * d)
        nonzeros = nonzeros + rows * d
    for count, rows, cols in layout.matrices:
        numel = rows * cols
        if grouped is not None:
            data = data + count * L * grouped_bytes(rows, cols, *grouped)
            nonzeros = nonzeros + count * L * numel
            continue
        scales = 2 * rows if int8 else 0
        dense = vb * numel + scales
        kept = numel - np.floor(s * numel).astype(np.int64)
        if method == "structured":
            cost, kept_weights = np.where(sparse, vb * kept + scales, dense), np.where(sparse, kept, numel)
        elif method == "block":
            fits = (rows % bs == 0) & (cols % bs == 0)
            blocks = numel // (bs * bs)
            kept_blocks = blocks - np.minimum(np.floor(s * blocks).astype(np.int64), blocks - 1)
            bsr = kept_blocks * (bs * bs * vb + 4) + 4 * (rows // bs + 1) + scales
            use = sparse & fits
            cost = np.where(use, np.minimum(dense, bsr), dense)
            kept_weights = np.where(use, kept_blocks * bs * bs, numel)
        else:
            bitmask = -(-numel // 8) + vb * kept + scales
            cost = np.where(sparse, np.minimum(dense, bitmask), dense)
            kept_weights = np.where(sparse, kept, numel)
        data = data + count * L * cost
        nonzeros = nonzeros + count * L * kept_weights
    return data, nonzeros


def header_bytes(shape: ModelShape, method: str, int8: bool, block: int | None = None,
                 int8_path: str = "torch_dynamic", grouped: tuple[int, int] | None = None) -> int:
    """An upper bound on the safetensors header of a variant: every encoding a matrix could take is
    sized at its longest, every number with as many digits as the widest width of ``shape``'s digit
    count (a width of 10^k - 1) can give, every offset as wide as that model's data."""
    return _header_bound(shape.arch, shape.context, shape.vocab_size, shape.ffn_mult, len(str(shape.width)),
                         shape.depth, method, int8, block or 32, int8_path if int8 else "", shape.objective,
                         grouped)


@lru_cache(maxsize=4096)
def _header_bound(arch: str, context: int, vocab_size: int, ffn_mult: int, width_digits: int, depth: int,
                  method: str, int8: bool, block: int, int8_path: str, objective: str = "clm",
                  grouped: tuple[int, int] | None = None) -> int:
    widest = ModelShape(10**width_digits - 1, depth, 1, context, vocab_size, arch, ffn_mult, objective)
    entries_all: list = []
    formats: dict = {}
    for t in model_tensors(widest):
        numel = math.prod(t.shape)
        if t.role == "other" or (t.role == "embedding" and not int8):
            entries_all.append((t.name, "F32", t.shape))
            continue
        if grouped is not None:
            if t.role != "matrix":  # embeddings of a weight-only variant stay fp32
                entries_all.append((t.name, "F32", t.shape))
                continue
            entries, record = _grouped_entries(t, *grouped)
            entries_all += entries
            formats[t.name] = record
            continue
        kinds = ["dense"]
        if t.role == "matrix" and method in UNSTRUCTURED:
            kinds.append("bitmask")
        elif t.role == "matrix" and method == "block":
            kinds.append("bsr")
        encoded = [_entries(t, kind, int8, numel, block) for kind in kinds]
        entries_all += max((e for e, _ in encoded), key=lambda e: len(json.dumps(e)))
        formats[t.name] = max((r for _, r in encoded), key=lambda r: len(json.dumps(r)))
    data = 8 * sum(math.prod(t.shape) for t in model_tensors(widest)) + 10**6
    return _header_bytes(entries_all, formats, int8_path, data)


@dataclass(frozen=True)
class ArtifactSize:
    """Predicted size of a variant: bytes of model.safetensors (an upper bound) and non-zero parameters."""

    bytes: int
    nonzeros: int


def artifact_size(shape: ModelShape, method: str, sparsity: float, int8: bool, block: int | None = None,
                  int8_path: str = "torch_dynamic", grouped: tuple[int, int] | None = None) -> ArtifactSize:
    """Bytes and non-zeros of ``shape`` pruned with ``method`` to ``sparsity`` (of the prunable
    weights) and/or 8-bit, or weight-only quantized at ``grouped`` (bits, group_size), as `tlc compress`
    stores it (module docstring)."""
    template = {"arch": shape.arch, "context": shape.context, "vocab_size": shape.vocab_size,
                "ffn_mult": shape.ffn_mult, "objective": shape.objective}
    data, nonzeros = sizes(template, shape.width, shape.depth, method, sparsity, int8, block, grouped)
    header = header_bytes(shape, method if sparsity > 0 else "none", int8, block, int8_path, grouped)
    return ArtifactSize(bytes=int(data) + header, nonzeros=int(nonzeros))
