"""Bytes and non-zeros predicted from the storage encoding against variants really saved by `tlc compress`'s store."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tlc.artifact import artifact_size, prunable_params, sizes
from tlc.compress.prune import PATTERNS, apply_masks, prunable_layers
from tlc.compress.store import save_variant
from tlc.config import ModelShape
from tlc.plan.cost import shape_of
from tlc.shapes import param_counts
from tlc.train.model import build_model

CASES = [("none", 0.0, "dense"), ("magnitude", 0.63, "bitmask"), ("magnitude", 0.1, "bitmask"),
         ("magnitude", 0.02, "bitmask"), ("block", 0.5, "bsr")]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_predicted_bytes_bound_what_the_store_writes(tmp_path, arch):
    shape = ModelShape(64, 2, 2, 32, 300, arch)
    model = build_model(shape, eot_id=0, seed=0)
    assert sum(m.weight.numel() for m in prunable_layers(model).values()) == prunable_params(shape)
    for method, sparsity, kind in CASES:
        pruned = copy.deepcopy(model)
        if method != "none":
            apply_masks(pruned, PATTERNS[method](pruned, sparsity, None, block_size=32))
        for bits in (32, 8):
            path = "torch_dynamic" if bits == 8 else None
            saved = save_variant(tmp_path / f"{method}-{sparsity}-{bits}", pruned, kind, 32, bits, path, {})
            predicted = artifact_size(shape, method, sparsity, bits == 8, 32)
            where = f"{arch} {method} {sparsity} {bits}-bit"
            assert saved["bytes"] <= predicted.bytes <= saved["bytes"] * 1.015, where
            assert saved["nonzeros"] <= predicted.nonzeros, where


def test_shapes_are_recovered_from_their_parameter_counts():
    template = {"arch": "gpt2", "context": 128, "vocab_size": 1024, "ffn_mult": 4}
    for arch in ("gpt2", "llama"):
        template["arch"] = arch
        widths, depths = np.array([32, 64, 96, 512, 4096]), np.array([1, 2, 7, 24, 96])
        counts = [param_counts(ModelShape(int(w), int(d), 1, 128, 1024, arch)) for w, d in zip(widths, depths)]
        width, depth = shape_of(template, [c.non_embedding for c in counts], [c.embedding for c in counts])
        assert width.tolist() == widths.tolist() and depth.tolist() == depths.tolist()


def test_bytes_fall_as_sparsity_rises():
    template = {"arch": "gpt2", "context": 128, "vocab_size": 1024, "ffn_mult": 4}
    levels = np.linspace(0, 0.95, 40)
    for method in ("magnitude", "block", "structured"):
        for int8 in (False, True):
            data, nonzeros = sizes(template, 128, 4, method, levels, int8, 32)
            assert (np.diff(data) <= 0).all() and (np.diff(nonzeros) <= 0).all(), (method, int8)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_predicted_bytes_bound_weight_only_codes_as_stored(tmp_path, arch):
    from tlc.compress.calibrated import Grid, quantize_weights

    shape = ModelShape(64, 2, 2, 32, 300, arch)
    model = build_model(shape, eot_id=0, seed=0)
    for bits, group in ((4, 32), (8, 32), (4, 0), (4, 48)):  # 48 does not divide 64: a short last group
        quantized = copy.deepcopy(model)
        codes = quantize_weights(quantized, Grid(bits, group), None, "rtn")
        saved = save_variant(tmp_path / f"rtn-{bits}-{group}", quantized, "dense", 32, 32, None, {}, weight_only=codes)
        predicted = artifact_size(shape, "none", 0.0, False, grouped=(bits, group))
        where = f"{arch} rtn {bits}-bit g{group}"
        assert saved["bytes"] <= predicted.bytes <= saved["bytes"] * 1.015, where
        assert saved["nonzeros"] <= predicted.nonzeros, where
    dense = artifact_size(shape, "none", 0.0, False).bytes
    assert artifact_size(shape, "none", 0.0, False, grouped=(4, 32)).bytes < 0.5 * dense
