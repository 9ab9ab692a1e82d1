"""Parameter and FLOPs counts against the built model and DeepSpeed's FLOPs profiler."""

from __future__ import annotations

import os

import pytest
import torch

from tlc.config import ModelShape
from tlc.shapes import flops_per_token, param_counts
from tlc.train.model import build_model

SHAPES = [
    ModelShape(width=64, depth=2, heads=2, context=128, vocab_size=1024),
    ModelShape(width=128, depth=3, heads=4, context=64, vocab_size=2048),
    ModelShape(width=192, depth=4, heads=6, context=256, vocab_size=512),
    ModelShape(width=96, depth=2, heads=4, context=64, vocab_size=1024, arch="llama"),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.arch}-w{s.width}-d{s.depth}")
def test_param_counts_match_the_built_model(shape):
    model = build_model(shape)
    counts = param_counts(shape)
    assert sum(p.numel() for p in model.parameters()) == counts.total  # parameters() skips the tied head
    emb = model.get_input_embeddings().weight.numel()
    pos = model.transformer.wpe.weight.numel() if shape.arch == "gpt2" else 0
    assert counts.non_embedding == counts.total - emb - pos


def test_build_is_seeded():
    shape = SHAPES[0]
    a, b = build_model(shape, seed=1), build_model(shape, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.arch}-w{s.width}-d{s.depth}")
def test_training_flops_match_deepspeed_profiler(shape):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.profiling.flops_profiler import get_model_profile

    model = build_model(shape)
    batch = 2
    ids = torch.randint(0, shape.vocab_size, (batch, shape.context))
    forward_flops, _, _ = get_model_profile(model, kwargs={"input_ids": ids}, print_profile=False, as_string=False)
    measured_train = 3 * forward_flops / (batch * shape.context)  # backward = 2x forward
    analytic = flops_per_token(shape)
    assert abs(analytic - measured_train) / measured_train < 0.10, (analytic, measured_train)
