"""Device placement on a CPU-only machine: the training step with masks, the evaluation, a gradual-pruning
recovery step and the block-sparse layer, run with the model on an emulated GPU (tests/cuda_emulation.py:
real values, cuda/cpu mixing refused) and collectives checked against NCCL's rule (CUDA tensors only).
Each test here failed before the device fixes of issue 33."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_emulation import (DeviceMismatchError, NcclDeviceError, OnCuda, deepspeed_on_emulated_cuda, emulated_cuda,
                            module_to_cuda, nccl_rules)

from tlc.config import ModelShape, PruneSettings, RunConfig, TrainSettings
from tlc.train.data import TokenData, val_offsets
from tlc.train.model import build_model

SHAPE = ModelShape(width=32, depth=2, heads=2, context=32, vocab_size=300)


@pytest.fixture(scope="module")
def tokens() -> TokenData:
    """Token streams: placement does not depend on the text, so random ids stand in for a corpus."""
    rng = np.random.default_rng(0)
    return TokenData(rng.integers(0, SHAPE.vocab_size, 20_000).astype(np.uint16),
                     rng.integers(0, SHAPE.vocab_size, 2_000).astype(np.uint16), 3.0, 0, None)


def test_emulation_refuses_what_a_gpu_refuses():
    with emulated_cuda() as cuda, nccl_rules():
        on_gpu = torch.ones(3, device=cuda)
        assert isinstance(on_gpu, OnCuda) and on_gpu.device == cuda and (on_gpu * torch.tensor(2.0)).is_cuda
        with pytest.raises(DeviceMismatchError):
            on_gpu + torch.ones(3)
        with pytest.raises(NcclDeviceError):
            torch.distributed.all_reduce(torch.ones(3))


def test_training_step_with_masks_and_its_evaluation_stay_on_the_gpu(tokens, tmp_path):
    """The loop's own step (train_run's _Session) as rank 0 of 2 through a DeepSpeed engine on cuda, with
    gradual-pruning masks made on the CPU before the engine moved the model, then its evaluation and log."""
    from tqdm import tqdm

    from tlc.train.engine import build_engine, init_distributed
    from tlc.train.loop import _Session, plan_run
    from tlc.train.sparsity import SparseTraining

    cfg = RunConfig(SHAPE, TrainSettings(tokens=6 * 16 * SHAPE.context, micro_batch=4, grad_accum=2, precision="fp32",
                                         prune=PruneSettings("magnitude", 0.5, 0.0, 0.5)))
    plan = plan_run(cfg, world_size=2)
    deepspeed, _, _ = init_distributed()
    model = build_model(SHAPE, seed=0)
    sparse = SparseTraining.before_engine(cfg.train.prune, model, tmp_path, plan.total_steps, False, None, 0, 0)
    with deepspeed_on_emulated_cuda() as cuda, nccl_rules() as collectives:
        module_to_cuda(model)  # the move DeepSpeed's CUDA accelerator makes (the process group here has one rank)
        engine, optimizer = build_engine(deepspeed, model, cfg.train, plan.global_batch // 2)
        sparse.after_engine()
        session = _Session(cfg, plan, Path(tmp_path), tokens, val_offsets(len(tokens.val), SHAPE.context, 256),
                           engine, optimizer, cuda, rank=0, world=2, bar=tqdm(disable=True), sparse=sparse)
        losses = [session.step(step, 1e-3) for step in range(plan.total_steps)]  # through every pruning event
        row = session.log(plan.total_steps, 1e-3, losses[-1], final=True)
    assert all(np.isfinite(losses)) and np.isfinite(row["val_loss"])
    assert row["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(k.is_cuda for k in sparse.keep.values())
    reduced = [device for name, device in collectives if name == "all_reduce"]
    assert len(reduced) >= plan.total_steps + 1 and all(d == cuda for d in reduced)  # steps' losses, eval sums


def test_evaluation_sums_are_reduced_on_the_gpu(tokens):
    from tlc.train.evaluation import evaluate

    model = build_model(SHAPE, seed=0)
    offsets = val_offsets(len(tokens.val), SHAPE.context, 512)
    expected = evaluate(model, tokens, offsets, SHAPE.context, 4, torch.device("cpu"))
    with emulated_cuda() as cuda, nccl_rules() as collectives:
        module_to_cuda(model)
        # one process of two: the group here has one, so only its own half of the windows is summed
        half = evaluate(model, tokens, offsets, SHAPE.context, 4, cuda, rank=0, world=2)
        whole = evaluate(model, tokens, offsets, SHAPE.context, 4, cuda)
    assert collectives == [("all_reduce", cuda)] and np.isfinite(half["val_loss"])
    assert whole == pytest.approx(expected)  # the same figures as on the CPU


def test_precision_choice_is_broadcast_on_the_ranks_gpu(tmp_path):
    from tlc.train.engine import init_distributed
    from tlc.train.precision import choose_for_run

    init_distributed()
    with emulated_cuda(), nccl_rules() as collectives:
        choice = choose_for_run("bf16", tmp_path, tmp_path, rank=0, world=2, device=torch.device("cuda", 1))
    assert choice.precision == "bf16"
    assert collectives == [("broadcast_object_list", torch.device("cuda", 1))]


def test_gradual_pruning_recovery_step_feeds_the_gpu(tokens):
    from tlc.compress.gradual import gradual_prune
    from tlc.compress.prune import prunable_layers

    model = build_model(SHAPE, seed=0)
    train = TrainSettings(tokens=1, micro_batch=2, lr=1e-3)
    seen = []
    with deepspeed_on_emulated_cuda(), nccl_rules() as collectives:
        module_to_cuda(model)
        pruned, masks = gradual_prune(model, 0.5, tokens, SHAPE.context, train, steps=2, scores="movement",
                                      on_step=lambda step, m: seen.append(next(m.parameters()).device))
    assert seen == [torch.device("cuda", 0)] * 2 and all(device.type == "cuda" for _, device in collectives)
    assert all(m.weight.is_cuda for m in prunable_layers(pruned).values())
    pruned = sum(int((~k).sum()) for k in masks.values()) / sum(k.numel() for k in masks.values())
    assert pruned == pytest.approx(0.5, abs=1e-3)


def _block_sparse_layer():
    from cuda_ext import BlockSparseLinear

    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    weight[:32, :32] = 0  # one block-row's first blocks empty: 75% of 16x16 blocks stored
    return BlockSparseLinear.from_dense(weight, torch.zeros(64), block_size=16, dense_above=1.0)


@pytest.mark.parametrize("cuda_kernels", [True, False], ids=["kernels", "emulator"])
def test_block_sparse_forward_and_backward_on_the_gpu(monkeypatch, cuda_kernels):
    """BlockSparseLinear moved to cuda: its values, indices and bias go with it, through the compiled op
    (as a CUDA build routes it; the CPU kernels compute here) or through the dense×mask emulator."""
    import cuda_ext
    from cuda_ext import _build

    layer = _block_sparse_layer()
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a graph would hold the parameters, which the move swaps
        expected = layer(x)
    monkeypatch.setattr(_build, "has_cuda_kernels", lambda: cuda_kernels and cuda_ext.available())
    with emulated_cuda() as cuda:
        module_to_cuda(layer)
        y = layer(x.to(cuda))
        y.sum().backward()
        assert y.is_cuda and layer.values.grad.is_cuda
        torch.testing.assert_close(y.detach().cpu(), expected)
        with pytest.raises(DeviceMismatchError):
            layer(x)  # the input left on the CPU is refused as a GPU would refuse it


def test_block_sparse_fake_kernels_place_outputs_and_refuse_mixed_devices():
    """Under FakeTensorMode (tensors that claim cuda, as torch.compile traces them) the ops' fake kernels
    put outputs on the inputs' device and refuse a cpu tensor beside cuda ones, as the C++ kernels do."""
    import cuda_ext
    from torch._subclasses.fake_tensor import FakeTensorMode

    if not cuda_ext.available():
        pytest.skip("the compiled kernels did not build here; the fake kernels are registered with them")
    layer = _block_sparse_layer()
    with FakeTensorMode():
        values = torch.empty(layer.values.shape, device="cuda")
        crow = torch.empty(layer.crow_indices.shape, dtype=torch.int64, device="cuda")
        col = torch.empty(layer.col_indices.shape, dtype=torch.int64, device="cuda")
        x = torch.empty(8, 64, device="cuda")
        assert torch.ops.tlc_bsr.bsr_linear(x, values, crow, col, None).device.type == "cuda"
        assert torch.ops.tlc_bsr.bsr_linear_grad_input(x, values, crow, col, 64).device.type == "cuda"
        assert torch.ops.tlc_bsr.bsr_linear_grad_values(x, x, crow, col, 16).device.type == "cuda"
        with pytest.raises(RuntimeError, match="one device"):
            torch.ops.tlc_bsr.bsr_linear(x, values, crow.cpu(), col, None)
        with pytest.raises(RuntimeError, match="one device"):
            torch.ops.tlc_bsr.bsr_linear_grad_values(x, torch.empty(8, 64), crow, col, 16)
