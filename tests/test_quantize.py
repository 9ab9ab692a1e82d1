"""8-bit weights and compressed artifacts: error bound, size, exact reload, the measured runtime choice."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from tlc.compress.store import load_variant, read_weights, save_variant
from tlc.config import ModelShape
from tlc.train.model import build_model
from tlc.compress.prune import apply_masks, block_masks, magnitude_masks, semi_structured_masks
from tlc.compress.quantize import INT8_PATHS, apply_int8, choose_int8_path, dequantize_rows, int8_weights, quantize_rows

INT8_MAX_RELATIVE_ERROR = 0.05  # ||logits_int8 - logits_fp32|| / ||logits_fp32||, measured ~0.01-0.02

warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")


def smallest_tiny_shape():
    """A tiny-sweep shape: w64-d2, context 128, vocabulary 1024."""
    return build_model(ModelShape(64, 2, 2, 128, 1024, "gpt2"), seed=5).eval()


def ids(vocab: int = 1024, n: int = 2, t: int = 32) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_row_quantization_round_trips_within_half_a_step():
    w = torch.randn(48, 40) * torch.linspace(0.1, 3, 48)[:, None]
    w[3, :7] = 0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,)
    assert bool((q[3, :7] == 0).all())  # zeros stay zero
    assert bool(((dequantize_rows(q, scale) - w).abs() <= scale[:, None] / 2 + 1e-7).all())
    assert int(q.abs().amax(dim=1).min()) >= 126  # every row uses the full range


def test_a_pruned_away_row_and_a_tiny_row_keep_a_finite_scale():
    """A row pruned to zeros (block or structured pruning at 90%) once got an fp16 scale of 0 and q = 0/0."""
    w = torch.randn(4, 16)
    w[1] = 0.0
    w[2] = torch.linspace(-1e-6, 1e-6, 16)  # its max / 127 underflows fp16
    q, scale = quantize_rows(w)
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert scale.half().float().tolist() == scale.tolist()  # what is stored in fp16 is what quantized
    assert bool((q[1] == 0).all())
    back = dequantize_rows(q, scale)
    assert bool(torch.isfinite(back).all())
    assert bool(((back - w).abs() <= scale[:, None] / 2 + 1e-12).all())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("path", INT8_PATHS)
def test_int8_outputs_stay_within_the_stated_error_of_fp32(arch, path):
    model = build_model(ModelShape(64, 2, 2, 32, 300, arch), seed=1).eval()
    x = ids(300)
    reference = logits(model, x)
    quantized = apply_int8(copy.deepcopy(model), int8_weights(model), path)
    error = float((logits(quantized, x) - reference).norm() / reference.norm())
    assert 0 < error < INT8_MAX_RELATIVE_ERROR


@pytest.mark.parametrize("path", INT8_PATHS)
def test_int8_alone_shrinks_the_artifact_at_least_3_5x_and_reloads_exactly(tmp_path, path):
    model = smallest_tiny_shape()
    dense = save_variant(tmp_path / "dense", model)
    int8 = save_variant(tmp_path / "int8", model, bits=8, int8_path=path)
    assert dense["bytes"] / int8["bytes"] >= 3.5
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size == int8["bytes"]
    x = ids()
    torch.testing.assert_close(logits(load_variant(tmp_path / "int8"), x), logits(int8["model"], x), rtol=0, atol=0)
    torch.testing.assert_close(logits(load_variant(tmp_path / "dense"), x), logits(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("kind, masks", [
    ("bitmask", lambda m: magnitude_masks(m, 0.9)),
    ("bitmask", lambda m: semi_structured_masks(m)),
    ("bsr", lambda m: block_masks(m, 0.75, block_size=32)),
])
@pytest.mark.parametrize("bits", [32, 8])
def test_sparse_artifacts_store_only_what_is_kept_and_reload_to_the_same_outputs(tmp_path, kind, masks, bits):
    model = smallest_tiny_shape()
    dense_bytes = save_variant(tmp_path / "dense", model)["bytes"]
    pruned = apply_masks(copy.deepcopy(model), masks(model))
    saved = save_variant(tmp_path / "v", pruned, kind, 32, bits, "torch_dynamic" if bits == 8 else None)
    formats = json.loads(_metadata(tmp_path / "v" / "model.safetensors")["tlc_format"])
    assert {f["kind"] for f in formats.values()} >= {kind}
    assert saved["bytes"] < (dense_bytes if bits == 32 else save_variant(tmp_path / "i8", model, bits=8,
                                                                         int8_path="torch_dynamic")["bytes"])
    state, _ = read_weights(tmp_path / "v")
    assert saved["nonzeros"] == sum(int(t.count_nonzero()) for t in state.values())
    x = ids()
    expected = logits(saved.get("model", pruned), x)
    torch.testing.assert_close(logits(load_variant(tmp_path / "v"), x), expected, rtol=0, atol=0)


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_cpu_int8_path_is_measured_once_and_cached(isolated_cache, monkeypatch):
    import tlc.compress.quantize as quantize

    calls = []

    def fake_measure(width, device):
        calls.append(width)
        return {"torch_dynamic": 2.0, "bitsandbytes": 1.0}

    monkeypatch.setattr(quantize, "measure_int8_paths", fake_measure)
    path, record = choose_int8_path(torch.device("cpu"), 12345)
    assert path == "bitsandbytes" and record["seconds"]["bitsandbytes"] == 1.0  # the faster one wins
    assert choose_int8_path(torch.device("cpu"), 12345)[0] == "bitsandbytes"
    assert calls == [12345]  # the second answer came from the cache
    cached = json.loads((isolated_cache / "int8_path.json").read_text())
    assert any(k.endswith("width=12345") for k in cached)


def test_both_cpu_int8_paths_really_run_and_are_timed():
    from tlc.compress.quantize import measure_int8_paths

    timings = measure_int8_paths(64, torch.device("cpu"), tokens=64, layers=2)
    assert set(timings) == set(INT8_PATHS) and all(t > 0 for t in timings.values())
