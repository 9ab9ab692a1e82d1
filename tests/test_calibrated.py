"""Wanda, SparseGPT and GPTQ against direct references on small layers: Wanda's scores, the reconstruction
error of SparseGPT and GPTQ below magnitude's and round-to-nearest's, the exact sparsity and pattern asked
for (GPT-2's Conv1D layers included), and weight-only codes that survive saving and loading."""

from __future__ import annotations

import argparse

import pytest
import torch

from tlc.compress.calibrated import (
    Grid,
    gptq_layer,
    layer_input_gram,
    layer_output_error,
    quantize_weights,
    row_keep_mask,
    rtn_layer,
    sparsegpt_layer,
    wanda_prune,
)
from tlc.compress.prune import prunable_layers, weight_out_in
from tlc.compress.variants import VariantSpec, build_pruned
from tlc.config import ModelShape
from tlc.errors import UserError
from tlc.train.model import build_model


def tiny(arch: str = "gpt2", width: int = 32):
    return build_model(ModelShape(width, 2, 2, 32, 300, arch), seed=3).eval()


def ids(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 300, (n, 32), generator=torch.Generator().manual_seed(seed))


def correlated_layer(out_f: int = 48, in_f: int = 64, tokens: int = 1024):
    """A weight and inputs whose features are correlated and unevenly scaled, as a trained layer's are."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(in_f, in_f, generator=g) / in_f**0.5
    x = (torch.randn(tokens, in_f, generator=g) @ mix) * (0.2 + 3 * torch.rand(in_f, generator=g))
    weight = torch.randn(out_f, in_f, generator=g)
    return weight, x.double().T @ x.double(), x


def magnitude_row_pruned(weight, sparsity, n_m=None):
    return weight * row_keep_mask(weight.abs(), sparsity, n_m)


def test_wanda_scores_are_weight_times_input_norm_on_a_conv1d_layer():
    model, calibration = tiny("gpt2"), ids()
    layer = model.transformer.h[0].attn.c_attn  # Conv1D, weight [in, out]; its inputs are the same before pruning
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calibration)
    handle.remove()
    x = torch.cat(seen)
    assert torch.allclose(layer_input_gram(model, layer, calibration), x.double().T @ x.double(), rtol=1e-9, atol=1e-9)
    w = layer.weight.detach().t().clone()  # [out, in]
    direct = w.abs() * x.norm(dim=0)[None, :]  # |W_ij| · ||X_j||_2, from the inputs themselves
    keep = torch.ones_like(direct, dtype=torch.bool)
    keep.scatter_(1, direct.topk(w.shape[1] // 2, dim=1, largest=False).indices, False)
    wanda_prune(model, 0.5, calibration)
    assert torch.equal(weight_out_in(layer) != 0, keep)
    assert not torch.equal(keep, row_keep_mask(w.abs(), 0.5, None))  # the input norms changed the choice


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_sparsegpt_reconstructs_the_layer_better_than_magnitude_and_wanda(n_m):
    weight, xtx, x = correlated_layer()
    pruned = sparsegpt_layer(weight, xtx, 0.5, n_m)
    assert int((pruned == 0).sum()) == weight.numel() // 2
    if n_m:
        assert ((pruned.reshape(-1, 4) != 0).sum(dim=1) == 2).all()  # every group of 4 inputs keeps exactly 2
    error = layer_output_error(weight, pruned, xtx)
    wanda = weight * row_keep_mask(weight.abs() * x.norm(dim=0), 0.5, n_m)
    assert error < 0.9 * layer_output_error(weight, magnitude_row_pruned(weight, 0.5, n_m), xtx)
    assert error < layer_output_error(weight, wanda, xtx)


@pytest.mark.parametrize("bits,group", [(4, 0), (4, 32), (4, 24), (8, 32)])
def test_gptq_reconstructs_the_layer_better_than_round_to_nearest(bits, group):
    weight, xtx, _ = correlated_layer()
    grid = Grid(bits, group)
    gptq, rtn = gptq_layer(weight, xtx, grid), rtn_layer(weight, grid)
    groups = -(-weight.shape[1] // grid.group_width(weight.shape[1]))
    for q in (gptq, rtn):
        assert q.scale.shape == (weight.shape[0], groups)
        assert torch.equal(q.scale, q.scale.half().float())  # stored in fp16 without loss
        assert int(q.q.min()) >= -(2 ** (bits - 1)) and int(q.q.max()) <= 2 ** (bits - 1) - 1
    assert layer_output_error(weight, gptq.dequantize(), xtx) < 0.9 * layer_output_error(weight, rtn.dequantize(), xtx)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method,sparsity", [("wanda", 0.5), ("wanda", 0.7), ("sparsegpt", 0.5), ("sparsegpt", 0.3),
                                             ("wanda-2:4", 0.5), ("sparsegpt-2:4", 0.5)])
def test_calibrated_pruning_reaches_the_requested_sparsity_and_pattern(arch, method, sparsity):
    dense = tiny(arch)
    model, achieved = build_pruned(VariantSpec(method, sparsity, 32), dense, ids(), None)
    for name, layer in prunable_layers(model).items():
        w = weight_out_in(layer)
        zeros = int((w == 0).sum())
        if method.endswith("2:4"):
            assert ((w.reshape(-1, 4) == 0).sum(dim=1) == 2).all(), name
        elif method == "wanda":  # per output row
            assert ((w == 0).sum(dim=1) == round(sparsity * w.shape[1])).all(), name
        else:  # per column block of SparseGPT's sweep: rounding of at most one weight per block
            assert abs(zeros - sparsity * w.numel()) <= -(-w.shape[1] // 128), name
    assert achieved == pytest.approx(sparsity, abs=0.5 / 32)  # a row of 32 inputs rounds to a whole weight
    assert prunable_layers(dense)["transformer.h.0.attn.c_attn" if arch == "gpt2" else
                                  "model.layers.0.self_attn.q_proj"].weight.count_nonzero() > 0.99 * 32 * 32


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_weight_only_variant_saves_packed_and_loads_the_same_model(tmp_path, method):
    from tlc.compress.store import load_variant, save_variant

    model, calibration = tiny("gpt2"), ids()
    dense_bytes = save_variant(tmp_path / "dense", model)["bytes"]
    quantized = quantize_weights(model, Grid(4, 16), calibration if method == "gptq" else None, method)
    saved = save_variant(tmp_path / "w4", model, weight_only=quantized)
    matrix_elements = sum(q.q.numel() for q in quantized.values())
    groups = sum(q.scale.numel() for q in quantized.values())
    # each matrix element goes from 4 bytes to half a byte, plus an fp16 scale per 16 elements
    assert dense_bytes - saved["bytes"] == pytest.approx(matrix_elements * 3.5 - groups * 2, abs=2048)
    loaded = load_variant(tmp_path / "w4")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=calibration).logits, model(input_ids=calibration).logits)


def test_quant_flags_are_checked():
    from tlc.compress.command import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flags, name in [(["--quant-bits", "3"], "--quant-bits"), (["--group-size", "-1"], "--group-size"),
                        (["--calibration-sequences", "0"], "--calibration-sequences")]:
        with pytest.raises(UserError, match=name):
            settings_from_args(parser.parse_args(["runs", "--no-ort-latency", *flags]))
    settings = settings_from_args(parser.parse_args(["runs", "--no-ort-latency", "--quant-bits", "4",
                                                     "--group-size", "64", "--methods", "gptq,wanda"]))
    assert (settings.quant_bits, settings.group_size, settings.methods) == ((4,), 64, ("gptq", "wanda"))


def test_fit_gives_weight_only_quantizers_their_own_model_apart_from_int8():
    from scaling.compression_fit import compression_points
    from scaling.observations import CompressedVariant, RunCurve, SweepObservations

    runs = [RunCurve(f"r{n}", n, [1e6], [6e12], [4.0]) for n in (1e5, 2e5, 4e5)]
    variants = [v for r in runs for v in (
        CompressedVariant(r.run_id, "none", 0.0, 8, 4.01), CompressedVariant(r.run_id, "gptq", 0.0, 4, 4.05),
        CompressedVariant(r.run_id, "gptq", 0.0, 8, 4.001), CompressedVariant(r.run_id, "wanda", 0.5, 32, 4.2))]
    groups = {(p.kind, p.method): p.loss.tolist() for p in compression_points(SweepObservations(runs, variants))}
    assert groups == {("int8", "int8"): [4.01] * 3, ("int8", "gptq-w4"): [4.05] * 3,
                      ("int8", "gptq-w8"): [4.001] * 3, ("pruning", "wanda"): [4.2] * 3}
