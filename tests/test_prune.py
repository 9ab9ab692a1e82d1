"""Pruning patterns: exact sparsity, valid 2:4 masks, structured removal equal to its masks, and
masks that survive a DeepSpeed fine-tune."""

from __future__ import annotations

import copy

import pytest
import torch

from tlc.config import ModelShape, TrainSettings
from tlc.errors import UserError
from tlc.train.model import build_model
from tlc.compress.prune import (apply_masks, block_masks, check_block_size, count_sparsity, magnitude_masks, prunable_layers,
                       semi_structured_masks, weight_out_in)
from tlc.compress.structured import build_from_config, plan_masks, shrink, structured_plan

ARCHS = ("gpt2", "llama")


def tiny(arch: str, width: int = 32, heads: int = 2):
    return build_model(ModelShape(width, 2, heads, 32, 300, arch), seed=3).eval()


def ids(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 300, (n, 32), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.37])
def test_magnitude_per_layer_reaches_the_target_in_every_layer(arch, sparsity):
    model = tiny(arch)
    apply_masks(model, magnitude_masks(model, sparsity))
    for name, m in prunable_layers(model).items():
        assert int((m.weight == 0).sum()) == round(sparsity * m.weight.numel()), name
    # the survivors are the largest weights: nothing pruned is bigger than anything kept
    dense = tiny(arch)
    for name, m in prunable_layers(model).items():
        original = prunable_layers(dense)[name].weight.abs()
        assert original[m.weight == 0].max() <= original[m.weight != 0].min()


@pytest.mark.parametrize("arch", ARCHS)
def test_global_magnitude_reaches_the_target_overall_with_uneven_layers(arch):
    model = tiny(arch)
    masks = magnitude_masks(model, 0.75, scope="global")
    apply_masks(model, masks)
    zeros, total = count_sparsity(model)
    assert zeros == round(0.75 * total)
    per_layer = [float((m.weight == 0).float().mean()) for m in prunable_layers(model).values()]
    assert max(per_layer) - min(per_layer) > 0.01


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block_size", [16, 32])
def test_block_pruning_removes_whole_blocks_to_the_target(arch, block_size):
    model = tiny(arch)
    apply_masks(model, block_masks(model, 0.5, block_size=block_size))
    for name, m in prunable_layers(model).items():
        w = weight_out_in(m)
        blocks = w.reshape(w.shape[0] // block_size, block_size, w.shape[1] // block_size, block_size)
        nonzero_per_block = blocks.ne(0).sum(dim=(1, 3))
        assert set(nonzero_per_block.unique().tolist()) <= {0, block_size * block_size}, name
        assert int((nonzero_per_block == 0).sum()) == round(0.5 * nonzero_per_block.numel()), name


def test_block_size_that_does_not_divide_a_weight_is_a_user_error():
    with pytest.raises(UserError, match=r"--block-size: 64 does not divide .* valid for this model: 16, 32"):
        check_block_size(tiny("gpt2"), 64)
    with pytest.raises(UserError, match="--block-size: must be one of 16, 32, 64"):
        check_block_size(tiny("gpt2"), 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_two_four_masks_keep_exactly_two_of_every_four_inputs(arch):
    model = tiny(arch)
    masks = semi_structured_masks(model)
    for name, keep in masks.items():
        groups = keep.reshape(keep.shape[0], -1, 4)  # [out, in/4, 4]: groups along the input dimension
        assert bool((groups.sum(-1) == 2).all()), name
    apply_masks(model, masks)
    for name, m in prunable_layers(model).items():  # and the Conv1D [in, out] weights were masked along in
        w = weight_out_in(m)
        assert bool((w.reshape(w.shape[0], -1, 4).ne(0).sum(-1) == 2).all()), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_structured_model_computes_what_its_masked_model_computes(arch, sparsity, tmp_path):
    model = tiny(arch, width=64, heads=4)
    plan = structured_plan(model, sparsity, ids(4, seed=1))
    masked = apply_masks(copy.deepcopy(model), plan_masks(model, plan))
    small = shrink(copy.deepcopy(model), plan)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    zeros, total = count_sparsity(masked)
    assert zeros / total == pytest.approx(plan.sparsity)
    ffn_neuron_share = 2 * 64 / (12 * 64 * 64) if arch == "gpt2" else 3 * 64 / (4 * 64 * 64 + 3 * 64 * 256)
    assert abs(plan.sparsity - sparsity) <= ffn_neuron_share  # within one neuron of the target
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=x).logits, masked(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    small.save_pretrained(tmp_path)
    if arch == "llama":  # its config describes the smaller model completely
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    else:
        from safetensors.torch import load_file
        from transformers import AutoConfig

        reloaded = build_from_config(AutoConfig.from_pretrained(tmp_path)).eval()
        reloaded.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, small(input_ids=x).logits, rtol=0, atol=0)


def test_structured_pruning_keeps_a_head_per_layer_and_says_how_far_it_got():
    model = tiny("gpt2")  # 2 heads: at 0.9 one head must stay, so the FFN takes the rest
    plan = structured_plan(model, 0.9, ids(4))
    assert all(len(h) == 1 for h in plan.heads_removed)
    assert 0.8 < plan.sparsity <= 0.9


@pytest.fixture(scope="module")
def corpus_tokens(small_corpus):
    from tlc.train.data import load_corpus, load_tokens

    return load_tokens(load_corpus(str(small_corpus)), 300)


@pytest.mark.parametrize("scores", ["magnitude", "movement"])
def test_gradual_pruning_masks_survive_every_optimizer_step(corpus_tokens, scores):
    from tlc.compress.gradual import cubic_sparsity, gradual_prune, pruning_events

    model = tiny("gpt2")
    seen = []

    def check(step, m):
        layers = prunable_layers(m)
        for layer in layers.values():
            masked = layer.weight_mask == 0
            assert bool((layer.weight_orig[masked] == 0).all())  # exactly zero after the optimizer step
        seen.append(sum(int((layer.weight_mask == 0).sum()) for layer in layers.values()))

    train = TrainSettings(tokens=1, micro_batch=4, lr=3e-3, precision="fp32")
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    model, masks = gradual_prune(model, 0.8, corpus_tokens, 32, train, steps=10, scores=scores, on_step=check)
    assert len(seen) == 10 and seen == sorted(seen) and seen[0] < seen[-1]  # sparsity rose, masks only grew
    for name, m in prunable_layers(model).items():
        assert not hasattr(m, "weight_orig")  # made permanent
        w = weight_out_in(m)
        assert int((~masks[name]).sum()) == round(0.8 * w.numel())
        assert bool((w[~masks[name]] == 0).all())
        assert not torch.equal(m.weight[m.weight != 0], before[name][m.weight != 0])  # it did fine-tune
    every, events = pruning_events(10)
    assert cubic_sparsity(0, 0.8, every, events) == 0.0
    assert cubic_sparsity(every * events, 0.8, every, events) == pytest.approx(0.8)


def test_block_pruning_never_removes_a_whole_layer():
    # width 32 with 32x32 blocks: c_proj is a single block, c_attn three; 90% would round to all of them
    model = build_model(ModelShape(width=32, depth=1, heads=2, context=16, vocab_size=300))
    masks = block_masks(model, 0.9, block_size=32)
    assert all(bool(mask.any()) for mask in masks.values())
    apply_masks(model, masks)
    zeros, total = count_sparsity(model)
    assert 0 < zeros / total < 1
