"""Gradual pruning during a short recovery fine-tune through a DeepSpeed engine.

Sparsity follows the cubic schedule of Zhu & Gupta 2017 (eq. 1),
s_t = s_f + (s_i - s_f)(1 - (t - t_0) / (n Δt))^3, taken from ``torch.ao.pruning``'s CubicSL; it
rises from 0 in ``n`` pruning events every ``Δt`` steps over the first ~60% of the fine-tune and
the rest of the steps recover at the final sparsity. At each event every layer drops its
lowest-scoring still-active weights until it reaches round(s_t · numel) zeros (masks only grow).

Scores: ``magnitude`` is |W|; ``movement`` is Sanh et al. 2020's hard movement score,
S = -Σ_t (∂L/∂W) ⊙ W accumulated over the fine-tune's steps (weights moving away from zero score
high). Masks are attached with ``torch.nn.utils.prune.custom_from_mask`` (weight = weight_orig ·
mask), so pruned weights are exactly zero in every forward pass; weight_orig is also zeroed where
masked after every optimizer step, so AdamW's momentum and weight decay cannot leave anything
behind, and ``prune.remove`` makes the masks permanent at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from tlc.compress.prune import Masks, check_sparsity, is_conv1d, prunable_layers
from tlc.config import TrainSettings
from tlc.train.data import TokenData, train_offsets, windows

SCORES = ("magnitude", "movement")
RECOVERY_SEED = 7919  # data for recovery is drawn apart from the training run's own batches
PRUNE_FRACTION = 0.6  # share of the fine-tune's steps over which sparsity rises


def cubic_sparsity(step: int, final_sparsity: float, prune_every: int, events: int) -> float:
    """Target sparsity after ``step`` optimizer steps (Zhu & Gupta 2017, eq. 1, with s_i = 0, t_0 = 0)."""
    from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL

    return float(CubicSL.sparsity_compute_fn(0.0, final_sparsity, step, 0, prune_every, events))


def pruning_events(steps: int) -> tuple[int, int]:
    """(Δt, n): prune every Δt steps, n times, finishing by PRUNE_FRACTION of ``steps``."""
    span = max(1, int(PRUNE_FRACTION * steps))
    prune_every = max(1, span // 10)
    return prune_every, max(1, span // prune_every)


def _update_masks(model: nn.Module, sparsity: float, scores: dict[str, torch.Tensor]) -> None:
    """Grow each layer's mask (weight_mask, param layout) to round(sparsity · numel) zeros."""
    for name, module in prunable_layers(model).items():
        mask = module.weight_mask
        target = round(sparsity * mask.numel())
        extra = target - int((mask == 0).sum())
        if extra <= 0:
            continue
        score = scores[name].clone().flatten()
        score[mask.flatten() == 0] = float("inf")  # already pruned: not candidates, stay pruned
        drop = torch.topk(score, extra, largest=False, sorted=False).indices
        flat = mask.view(-1)
        flat[drop] = 0


def gradual_prune(model: nn.Module, sparsity: float, tokens: TokenData, context: int, train: TrainSettings,
                  steps: int, scores: str = "magnitude", seed: int = 0,
                  on_step: Callable[[int, nn.Module], None] | None = None) -> tuple[nn.Module, Masks]:
    """Prune ``model`` gradually to ``sparsity`` over a ``steps``-step fine-tune; returns it (weights
    now permanently sparse) and its keep-masks ([out, in]).

    Fine-tunes with the run's own settings (micro-batch, weight decay, clipping) in fp32, ZeRO 0,
    at a third of its peak learning rate with warmup and cosine decay. ``on_step(step, model)``
    is called after every optimizer step (tests check the zeros there).
    """
    import torch.nn.utils.prune as prune

    from tlc.train.engine import build_engine, init_distributed
    from tlc.train.evaluation import lm_loss
    from tlc.train.loop import get_lr

    check_sparsity(sparsity)
    if scores not in SCORES:
        raise ValueError(f"scores must be one of {SCORES}, got {scores!r}")
    deepspeed, _, _ = init_distributed()
    layers = prunable_layers(model)
    model.float().train()
    for module in layers.values():
        prune.custom_from_mask(module, "weight", torch.ones_like(module.weight))
    settings = dataclasses.replace(train, precision="fp32", zero_stage=0, grad_accum=1)
    engine, optimizer = build_engine(deepspeed, model, settings, settings.micro_batch)
    device = next(engine.module.parameters()).device  # where the engine put the model (a rank's GPU)
    movement = {name: torch.zeros_like(m.weight_orig) for name, m in layers.items()}  # on that device too
    prune_every, events = pruning_events(steps)
    peak_lr = train.lr / 3

    def current_scores() -> dict[str, torch.Tensor]:
        if scores == "magnitude":
            return {n: m.weight_orig.detach().abs() for n, m in layers.items()}
        return movement

    for step in range(steps):
        if step % prune_every == 0 and step // prune_every <= events:
            _update_masks(model, cubic_sparsity(step, sparsity, prune_every, events), current_scores())
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, steps, peak_lr, 0.1, 0.1)
        offsets = train_offsets(len(tokens.train), context, settings.micro_batch, seed + RECOVERY_SEED, step)
        batch = torch.from_numpy(windows(tokens.train, offsets, context)).to(device)
        loss, _ = lm_loss(engine, batch)
        engine.backward(loss)
        if scores == "movement":
            with torch.no_grad():
                for name, m in layers.items():
                    if m.weight_orig.grad is not None:
                        movement[name] -= m.weight_orig.grad * m.weight_orig  # Sanh et al. 2020, eq. 6
        engine.step()
        with torch.no_grad():
            for m in layers.values():
                m.weight_orig.mul_(m.weight_mask)
        if on_step is not None:
            on_step(step, model)
    _update_masks(model, sparsity, current_scores())  # reach the final level even for very short fine-tunes
    masks = {}
    for name, module in layers.items():
        with torch.no_grad():
            module.weight_orig.mul_(module.weight_mask)
        keep = module.weight_mask.detach().bool()
        masks[name] = keep.t().contiguous() if is_conv1d(module) else keep
        prune.remove(module, "weight")
    return model.eval(), masks
