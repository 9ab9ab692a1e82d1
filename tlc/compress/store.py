"""Compressed artifacts on disk: safetensors that store sparse and 8-bit weights as what they are.

A variant folder holds ``config.json`` (the `transformers` config, shrunk shapes included),
``model.safetensors`` and ``manifest.json``. Each prunable matrix (and, for 8-bit, each
embedding table) is stored in the smallest of these encodings, in [out, in] orientation:

- ``dense``:   ``<key>`` as the model holds it (fp32), or ``<key>.q`` int8 + ``<key>.scale`` fp16 per row
- ``bitmask``: ``<key>.bitmask`` uint8 (one bit per element, row-major, ``numpy.packbits``) and
  ``<key>.values`` (the non-zeros in row-major order; int8 with ``<key>.scale`` for 8-bit)
- ``grouped``: weight-only quantized (gptq, rtn): ``<key>.q`` int8 codes for 8 bits, or ``<key>.q4``
  uint8 with two 4-bit codes per byte (element 2k in the low nibble, stored as code + 8) for 4 bits,
  and ``<key>.scale`` fp16 [out, groups], one per output row and group of ``group_size`` inputs
- ``bsr``:     block compressed sparse rows (``torch.Tensor.to_sparse_bsr``): ``<key>.bsr_values``
  [blocks, bs, bs], ``<key>.crow`` and ``<key>.col`` int32 (values int8 + ``<key>.scale`` for 8-bit)

The encoding of every key is in the safetensors metadata (``tlc_format``), so loading needs no
code from the run directory. "bytes" of a variant is the size of ``model.safetensors``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlc.compress.prune import is_conv1d, prunable_layers
from tlc.compress.quantize import INT8_PATHS, apply_int8, dequantize_rows, embedding_names, int8_weights
from tlc.io import atomic_replace_dir, atomic_write_json

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


def _encode(key: str, w: torch.Tensor, q_scale, kind: str, block_size: int) -> tuple[dict, dict]:
    """Tensors and a format record for one [out, in] matrix (fp32 ``w``, or int8 ``q_scale``)."""
    values = q_scale[0] if q_scale is not None else w.detach().float()
    extra = {f"{key}.scale": q_scale[1].half().contiguous()} if q_scale is not None else {}
    record = {"kind": kind, "shape": list(values.shape), "bits": 8 if q_scale is not None else 32}
    if kind == "dense":
        return {(f"{key}.q" if q_scale is not None else key): values.contiguous(), **extra}, record
    if kind == "bitmask":
        keep = values.ne(0).flatten()
        bits = np.packbits(keep.cpu().numpy())
        return {f"{key}.bitmask": torch.from_numpy(bits), f"{key}.values": values.flatten()[keep].contiguous(),
                **extra}, record
    if kind == "bsr":
        with warnings.catch_warnings():  # "sparse BSR support is in beta": we only use it to lay out blocks
            warnings.simplefilter("ignore", UserWarning)
            bsr = values.float().to_sparse_bsr((block_size, block_size))
        blocks = bsr.values().to(values.dtype).contiguous()
        record["block_size"] = block_size
        return {f"{key}.bsr_values": blocks, f"{key}.crow": bsr.crow_indices().to(torch.int32).contiguous(),
                f"{key}.col": bsr.col_indices().to(torch.int32).contiguous(), **extra}, record
    raise ValueError(f"unknown encoding {kind!r}")


def _encode_grouped(key: str, matrix) -> tuple[dict, dict]:
    """Tensors and a format record for a weight-only quantized matrix (tlc.compress.calibrated.QuantizedMatrix)."""
    q, grid = matrix.q, matrix.grid
    record = {"kind": "grouped", "shape": list(q.shape), "bits": grid.bits,
              "group_size": grid.group_width(q.shape[1])}
    scale = {f"{key}.scale": matrix.scale.half().contiguous()}
    if grid.bits == 8:
        return {f"{key}.q": q.contiguous(), **scale}, record
    codes = (q.flatten().to(torch.int16) + 8).to(torch.uint8)  # 0..15
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    return {f"{key}.q4": (codes[0::2] | (codes[1::2] << 4)).contiguous(), **scale}, record


def _grouped_codes(key: str, record: dict, tensors: dict) -> torch.Tensor:
    """The int8 [out, in] codes a ``grouped`` record stores (4-bit codes unpacked from two to a byte)."""
    rows, columns = record["shape"]
    if record["bits"] == 8:
        return tensors[f"{key}.q"]
    packed = tensors[f"{key}.q4"]
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[: rows * columns]
    return (codes.to(torch.int16) - 8).to(torch.int8).view(rows, columns)


def _decode_grouped(key: str, record: dict, tensors: dict) -> torch.Tensor:
    """The fp32 [out, in] matrix a ``grouped`` record stands for."""
    columns = record["shape"][1]
    scale = tensors[f"{key}.scale"].float().repeat_interleave(record["group_size"], dim=1)[:, :columns]
    return _grouped_codes(key, record, tensors).float() * scale


def _nbytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _decode(key: str, record: dict, tensors: dict) -> tuple[torch.Tensor, tuple | None]:
    """(fp32 [out, in] matrix, (q, scale) or None) from stored tensors."""
    shape, kind, int8 = record["shape"], record["kind"], record["bits"] == 8
    if kind == "grouped":
        return _decode_grouped(key, record, tensors), None
    if kind == "dense":
        values = tensors[f"{key}.q"] if int8 else tensors[key]
    elif kind == "bitmask":
        keep = torch.from_numpy(np.unpackbits(tensors[f"{key}.bitmask"].numpy())[: shape[0] * shape[1]].astype(bool))
        stored = tensors[f"{key}.values"]
        values = torch.zeros(shape[0] * shape[1], dtype=stored.dtype)
        values[keep] = stored
        values = values.view(shape)
    elif kind == "bsr":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            bsr = torch.sparse_bsr_tensor(tensors[f"{key}.crow"].long(), tensors[f"{key}.col"].long(),
                                          tensors[f"{key}.bsr_values"].float(), size=tuple(shape),
                                          check_invariants=True)  # indices come from a file: validate them
        values = bsr.to_dense().to(tensors[f"{key}.bsr_values"].dtype)
    else:
        raise ValueError(f"{key}: unknown encoding {kind!r} in {WEIGHTS}")
    if int8:
        scale = tensors[f"{key}.scale"].float()
        return dequantize_rows(values, scale), (values, scale)
    return values.float(), None


def save_variant(folder: Path, model: nn.Module, sparse_kind: str = "dense", block_size: int = 32,
                 bits: int = 32, int8_path: str | None = None, manifest: dict | None = None,
                 weight_only: dict | None = None) -> dict:
    """Write the (pruned or shrunk, fp32) ``model`` as a variant folder, 8-bit if ``bits == 8``.

    ``sparse_kind`` ("dense", "bitmask" or "bsr") is the preferred encoding of the prunable
    matrices; each falls back to dense where that is smaller. Returns ``{"bytes", "nonzeros"}``
    and the runtime model for 8-bit (``"model"``), built from exactly the stored int8 values.
    ``weight_only`` (layer name -> QuantizedMatrix, from gptq or rtn) stores those layers as codes and
    scales instead; ``model`` must hold their dequantized weights, which is also what runs.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    layers = prunable_layers(model)
    quantized = int8_weights(model) if bits == 8 else {}
    matrices = {f"{n}.weight": n for n in list(layers) + (embedding_names(model) if bits == 8 else [])}
    tensors, formats, seen = {}, {}, set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and ident in seen:
            continue  # a tied copy (GPT-2's lm_head is the token embedding)
        seen.add(ident)
        if key not in matrices:
            tensors[key] = tensor.detach().contiguous().clone()
            continue
        name = matrices[key]
        module = model.get_submodule(name)
        w = module.weight.t() if is_conv1d(module) else module.weight
        if weight_only and name in weight_only:
            chosen, record = _encode_grouped(key, weight_only[name])
            record["conv1d"] = is_conv1d(module)
            tensors.update(chosen)
            formats[key] = record
            continue
        options = ["dense"] + ([sparse_kind] if sparse_kind != "dense" and name in layers else [])
        if "bsr" in options and (w.shape[0] % block_size or w.shape[1] % block_size):
            options.remove("bsr")
        encoded = [_encode(key, w, quantized.get(name), kind, block_size) for kind in options]
        chosen, record = min(encoded, key=lambda e: _nbytes(e[0]))
        record["conv1d"] = is_conv1d(module)
        tensors.update(chosen)
        formats[key] = record
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"tlc_format": json.dumps(formats),
                                                    "int8_path": int8_path or ""})
    model.config.save_pretrained(tmp)
    # codes and scales of gptq/rtn run dequantized (no int8 runtime): the manifest says so
    grid_bits = next(iter(weight_only.values())).grid.bits if weight_only else bits
    atomic_write_json(tmp / MANIFEST, {**(manifest or {}), "bits": grid_bits, "weight_only": bool(weight_only),
                                       "int8_path": int8_path, "sparse_kind": sparse_kind, "weights": WEIGHTS})
    atomic_replace_dir(tmp, folder)
    result = {"bytes": (folder / WEIGHTS).stat().st_size}
    logical, int8 = read_weights(folder)
    result["nonzeros"] = sum(int(t.count_nonzero()) for t in logical.values())
    if bits == 8:
        runtime = _fp32_model_from(folder, logical).to(next(model.parameters()).device)
        result["model"] = apply_int8(runtime, int8, int8_path)
    return result


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, tuple]]:
    """The logical fp32 state dict of a variant (param layouts) and its int8 (q, scale) by module name."""
    from safetensors import safe_open

    path = Path(folder) / WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        formats = json.loads((f.metadata() or {}).get("tlc_format", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state, int8 = {}, {}
    encoded_keys = set()
    for key, record in formats.items():
        w, q_scale = _decode(key, record, tensors)
        state[key] = w.t().contiguous() if record.get("conv1d") else w
        if q_scale is not None:
            int8[key[: -len(".weight")]] = q_scale
        encoded_keys.update(k for k in tensors if k == key or k.startswith(key + "."))
    for key, tensor in tensors.items():
        if key not in encoded_keys:
            state[key] = tensor
    return state, int8


def stored_codes(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """The integer codes of every quantized matrix of a variant, as stored, by module name.

    Each is (q int8 [out, in], scale fp32 [out, groups], bits) with the matrix = q times its group's scale
    (groups of ``in / groups`` consecutive inputs; row-wise int8 has one group). Embedding tables are included;
    fp32 matrices are not.
    """
    from safetensors import safe_open

    with safe_open(str(Path(folder) / WEIGHTS), framework="pt") as f:
        formats = json.loads((f.metadata() or {}).get("tlc_format", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    codes = {}
    for key, record in formats.items():
        name = key[: -len(".weight")]
        if record["kind"] == "grouped":
            codes[name] = (_grouped_codes(key, record, tensors), tensors[f"{key}.scale"].float(), record["bits"])
        elif record["bits"] == 8:
            _, (q, scale) = _decode(key, record, tensors)
            codes[name] = (q, scale[:, None], 8)
    return codes


def _fp32_model_from(folder: Path, state: dict) -> nn.Module:
    from transformers import AutoConfig

    try:
        return model_from_state(AutoConfig.from_pretrained(str(folder)), state)
    except ValueError as error:
        raise ValueError(f"{folder}: {error}") from None


def model_from_state(config, state: dict) -> nn.Module:
    """The model ``config`` describes (shrunk GPT-2 heads included), holding ``state``; every parameter must be given."""
    from tlc.compress.structured import build_from_config

    model = build_from_config(config)
    result = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in result.missing_keys if k not in params or id(params[k]) not in loaded]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit the config (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval()


def load_variant(folder: Path, int8_path: str | None = None) -> nn.Module:
    """Rebuild a saved variant as a runnable model (8-bit variants on their stored int8 values).

    ``int8_path`` overrides the runtime recorded in the artifact (e.g. when loading elsewhere).
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    state, int8 = read_weights(folder)
    model = _fp32_model_from(folder, state)
    if manifest.get("bits") == 8 and not manifest.get("weight_only"):
        path = int8_path or manifest.get("int8_path") or INT8_PATHS[0]
        model = apply_int8(model, int8, path)
    return model


def load_fp32(folder: Path) -> nn.Module:
    """A saved variant as an fp32 model (8-bit weights dequantized), e.g. to quantize a pruned variant."""
    state, _ = read_weights(folder)
    return _fp32_model_from(Path(folder), state)


def is_saved(folder: Path) -> bool:
    """A variant folder is complete once it is in place (it is moved there whole)."""
    return (Path(folder) / MANIFEST).exists() and (Path(folder) / WEIGHTS).exists()
