"""cuda_ext: BlockSparseLinear, the model converter on a tiny GPT-2, and safetensors round trips."""

from __future__ import annotations

import pytest
import torch

import cuda_ext


def block_prune_(weight: torch.Tensor, block_size: int, sparsity: float) -> None:
    """Zero the `sparsity` fraction of blocks with the smallest L2 norm, in place."""
    rows, cols = weight.shape[0] // block_size, weight.shape[1] // block_size
    norms = weight.reshape(rows, block_size, cols, block_size).norm(dim=(1, 3))
    drop = norms.flatten().argsort()[: int(sparsity * norms.numel())]
    keep = torch.ones(rows * cols, dtype=torch.bool)
    keep[drop] = False
    weight.mul_(keep.reshape(rows, cols).repeat_interleave(block_size, 0).repeat_interleave(block_size, 1))


def test_from_dense_keeps_nonzero_blocks():
    weight = torch.randn(64, 96)
    weight[:32, 32:64] = 0
    weight[32:, :32] = 0
    layer = cuda_ext.BlockSparseLinear.from_dense(weight, None, block_size=32, dense_above=1.0)
    assert layer.values.shape == (4, 32, 32) and layer.density == pytest.approx(4 / 6)
    assert torch.equal(layer.dense_weight(), weight)
    assert dict(layer.named_parameters()).keys() == {"values"}
    dense = cuda_ext.BlockSparseLinear.from_dense(weight, torch.zeros(64), block_size=32, dense_above=0.5)
    assert dense.weight is not None and dense.values is None
    x = torch.randn(7, 96)
    assert torch.allclose(layer(x), x @ weight.t(), atol=1e-5) and torch.allclose(dense(x), layer(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[\.\.\., 96\] \(in_features\)"):
        layer(torch.randn(7, 64))


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=256, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def pruned_gpt2():
    model = tiny_gpt2()
    with torch.no_grad():
        for block in model.transformer.h:
            for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                block_prune_(conv.weight, 32, 0.5)
    return model


@pytest.mark.parametrize("dense_above", [cuda_ext.DENSE_CROSSOVER_DENSITY, 0.0], ids=["blocks", "dense"])
def test_gpt2_converter_same_logits_and_safetensors_round_trip(tmp_path, dense_above):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = pruned_gpt2()
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected = model(tokens).logits
    cuda_ext.convert_block_sparse(model, block_size=32, min_sparsity=0.4, dense_above=dense_above)
    converted = [m for m in model.modules() if isinstance(m, cuda_ext.BlockSparseLinear)]
    assert len(converted) == 8  # 4 Conv1D per layer; lm_head is tied to the embedding and stays
    assert all((m.weight is None) == (dense_above > 0) for m in converted)
    assert type(model.lm_head).__name__ == "Linear"
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, expected, atol=1e-4)

    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(cuda_ext.block_sparse_state_dict(model), str(path))
    rebuilt = cuda_ext.load_block_sparse_state_dict(tiny_gpt2(), safetensors_torch.load_file(str(path)))
    assert sum(isinstance(m, cuda_ext.BlockSparseLinear) for m in rebuilt.modules()) == 8
    with torch.no_grad():
        assert torch.allclose(rebuilt(tokens).logits, expected, atol=1e-4)


def test_converter_respects_min_sparsity_and_skip():
    model = pruned_gpt2()
    cuda_ext.convert_block_sparse(model, block_size=32, min_sparsity=0.6)
    assert not any(isinstance(m, cuda_ext.BlockSparseLinear) for m in model.modules())
    cuda_ext.convert_block_sparse(model, block_size=32, skip=("transformer.h.0.attn.c_attn",))
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert isinstance(model.transformer.h[1].attn.c_attn, cuda_ext.BlockSparseLinear)
    with pytest.raises(ValueError, match="min_sparsity"):
        cuda_ext.convert_block_sparse(model, min_sparsity=1.5)


def test_training_step_keeps_block_pattern():
    weight = torch.randn(64, 64)
    weight[:32, :32] = 0
    layer = cuda_ext.BlockSparseLinear.from_dense(weight, torch.zeros(64), block_size=32, dense_above=1.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(8, 64)).pow(2).mean().backward()
    optimizer.step()
    assert torch.equal(layer.dense_weight()[:32, :32], torch.zeros(32, 32))
    assert not torch.equal(layer.dense_weight()[32:], weight[32:])


def test_a_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    import os
    import time

    from cuda_ext import _build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "tlc_bsr_test" / "lock"
    lock.parent.mkdir()
    lock.touch()  # a build running now
    assert _build.clear_stale_lock("tlc_bsr_test") is False and lock.exists()
    old = time.time() - _build.STALE_LOCK_S - 60  # a build killed long ago
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="did not finish"):
        assert _build.clear_stale_lock("tlc_bsr_test") is True
    assert not lock.exists()
    assert _build.clear_stale_lock("tlc_bsr_test") is False  # nothing left to remove
