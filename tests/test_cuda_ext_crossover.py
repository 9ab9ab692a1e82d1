"""cuda_ext: the dense-or-blocks choice comes from a per-machine measurement, cached on disk per shape class."""

from __future__ import annotations

import json

import pytest
import torch

import cuda_ext
from cuda_ext import crossover


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch, tmp_path):
    monkeypatch.setattr(crossover, "_memo", {})
    monkeypatch.setenv("TLC_CACHE", str(tmp_path))


def half_pruned(out_features=64, in_features=128):
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # 32×32 blocks, density 0.5
    return torch.randn(out_features, in_features) * keep.repeat_interleave(32, 0).repeat_interleave(32, 1)


def test_token_bucket_rounds_to_powers_of_two():
    assert [crossover.token_bucket(t) for t in (0, 1, 2, 3, 5, 6, 256, 300, 400, 10**6)] == \
        [1, 1, 2, 4, 4, 8, 256, 256, 512, 4096]


def test_measurement_gives_a_density_and_its_timings():
    record = crossover.measure_crossover(64, 128, 32, tokens=8, repeats=1)
    assert 0.0 <= record["crossover_density"] <= 1.0
    assert set(record["seconds"]) == {"dense", "bsr@0.25", "bsr@1.0"} and record["tokens"] == 8
    assert all(t > 0 for t in record["seconds"].values())


def test_crossover_is_measured_once_then_read_from_the_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(crossover, "measure_crossover",
                        lambda *a, **k: calls.append(a) or {"crossover_density": 0.42, "seconds": {}, "tokens": 8})
    assert crossover.crossover_density(64, 128, 32, tokens=8) == 0.42
    cached = json.loads(crossover.cache_path().read_text())
    key = crossover.shape_class_key(64, 128, 32, 8, torch.float32, torch.device("cpu"))
    assert cached[key]["crossover_density"] == 0.42 and len(calls) == 1
    monkeypatch.setattr(crossover, "_memo", {})  # a new process: only the file remains
    monkeypatch.setattr(crossover, "measure_crossover", lambda *a, **k: pytest.fail("measured again"))
    assert crossover.crossover_density(64, 128, 32, tokens=7) == 0.42  # 7 tokens fall in the 8 bucket
    assert "|64x128|" in key and "tokens=8" in key


@pytest.mark.parametrize("measured,storage", [(0.3, "dense"), (0.7, "blocks")])
def test_from_dense_follows_the_measured_crossover(monkeypatch, measured, storage):
    seen = []
    monkeypatch.setattr(crossover, "crossover_density", lambda *args: seen.append(args) or measured)
    weight = half_pruned()
    layer = cuda_ext.BlockSparseLinear.from_dense(weight, None, 32, tokens=64)
    assert f"storage={storage}" in layer.extra_repr()
    assert seen[0][:4] == (64, 128, 32, 64)
    x = torch.randn(3, 128)
    assert torch.allclose(layer(x), x @ weight.t(), atol=1e-5)
    assert cuda_ext.BlockSparseLinear.from_dense(weight, None, 32, dense_above=1.0).weight is None
