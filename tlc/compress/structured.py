"""Structured pruning: whole attention heads and FFN neurons, scored on calibration data and then
physically removed, so the result is a smaller dense model.

Every layer loses the same number of heads and of neurons, chosen so that the removed share of
the prunable weights is as close to the target as one neuron allows (at least one head stays
in each layer, so a model with few heads may stop short of a high target: the achieved sparsity
is what :func:`structured_plan` reports).

Scores are activation-aware (in the spirit of Michel et al. 2019 and of Wanda): a head's score is
the mean squared norm of its contribution to the attention output projection, a neuron's is
E[a_j^2] * ||W_out[:, j]||^2 with a_j its activation entering the FFN output projection.

Reloading: Llama's config describes the smaller model completely (num_attention_heads,
head_dim, intermediate_size), so ``from_pretrained`` loads it. GPT-2 in transformers 5 no longer
has ``prune_heads``/``config.pruned_heads`` and ties head size to n_embd / n_head, so fewer heads
are recorded in ``config.tlc_pruned_heads`` and :func:`build_from_config` re-creates the smaller
attention before the weights are loaded; its FFN width is plain ``n_inner``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tlc.compress.prune import Masks, check_sparsity, is_conv1d, prunable_layers, set_submodule, weight_out_in


@dataclass(frozen=True)
class BlockLayers:
    """The names of one transformer block's prunable layers, grouped by role."""

    attn_in: tuple[str, ...]  # layers whose outputs are per-head (c_attn, or q/k/v_proj)
    attn_out: str  # c_proj / o_proj: its inputs are per-head
    mlp_in: tuple[str, ...]  # c_fc, or gate_proj/up_proj: outputs are per-neuron
    mlp_out: str  # mlp.c_proj / down_proj: inputs are per-neuron


@dataclass(frozen=True)
class StructuredPlan:
    """What to remove: the same number of heads and neurons in every layer."""

    heads_removed: tuple[tuple[int, ...], ...]  # per layer, head indices
    neurons_removed: tuple[tuple[int, ...], ...]  # per layer, FFN neuron indices
    sparsity: float  # achieved share of the prunable weights' elements removed


def _arch(model: nn.Module) -> str:
    return "gpt2" if model.config.model_type == "gpt2" else "llama"


def _block_layers(model: nn.Module) -> list[BlockLayers]:
    names = prunable_layers(model)
    if _arch(model) == "gpt2":
        prefix = "transformer.h"
        blocks = [BlockLayers((f"{prefix}.{i}.attn.c_attn",), f"{prefix}.{i}.attn.c_proj", (f"{prefix}.{i}.mlp.c_fc",),
                              f"{prefix}.{i}.mlp.c_proj") for i in range(model.config.n_layer)]
    else:
        prefix = "model.layers"
        blocks = [BlockLayers(tuple(f"{prefix}.{i}.self_attn.{p}_proj" for p in "qkv"),
                              f"{prefix}.{i}.self_attn.o_proj",
                              (f"{prefix}.{i}.mlp.gate_proj", f"{prefix}.{i}.mlp.up_proj"),
                              f"{prefix}.{i}.mlp.down_proj")
                  for i in range(model.config.num_hidden_layers)]
    assert all(n in names for b in blocks for n in (*b.attn_in, b.attn_out, *b.mlp_in, b.mlp_out))
    return blocks


def _heads_and_dim(model: nn.Module, layer: int) -> tuple[int, int]:
    """(heads, head size) of one layer as it is now (GPT-2 layers may already be smaller)."""
    block = _get_block(model, layer)
    attn = block.attn if _arch(model) == "gpt2" else block.self_attn
    if _arch(model) == "gpt2":
        return attn.split_size // attn.head_dim, attn.head_dim
    if model.config.num_key_value_heads != model.config.num_attention_heads:
        raise ValueError("structured pruning needs as many key/value heads as query heads (no grouped-query attention)")
    return model.config.num_attention_heads, attn.head_dim


def _get_block(model: nn.Module, layer: int) -> nn.Module:
    return model.transformer.h[layer] if _arch(model) == "gpt2" else model.model.layers[layer]


# ----------------------------------------------------------------------------------------------
# Scores and plan


def unit_scores(model: nn.Module, calibration: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: head scores [heads] and neuron scores [ffn], from a (B, T) calibration batch."""
    blocks = _block_layers(model)
    layers = prunable_layers(model)
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for b in blocks:
        for name in (b.attn_out, b.mlp_out):
            def hook(module, args, name=name):
                captured[name] = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            hooks.append(layers[name].register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=calibration)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    head_scores, neuron_scores = [], []
    for i, b in enumerate(blocks):
        heads, head_dim = _heads_and_dim(model, i)
        x = captured[b.attn_out]  # (tokens, heads*hd)
        w = weight_out_in(layers[b.attn_out]).detach().float()  # (d, heads*hd)
        cols = [slice(h * head_dim, (h + 1) * head_dim) for h in range(heads)]
        per_head = [(x[:, c] @ w[:, c].t()).pow(2).sum(1).mean() for c in cols]  # ||head's share of the output||^2
        head_scores.append(torch.stack(per_head))
        a = captured[b.mlp_out]  # (tokens, ffn)
        w_out = weight_out_in(layers[b.mlp_out]).detach().float()  # (d, ffn)
        neuron_scores.append(a.pow(2).mean(0) * w_out.pow(2).sum(0))
    return head_scores, neuron_scores


def _counts(model: nn.Module, sparsity: float) -> tuple[int, int, float]:
    """(heads, neurons) to remove per layer, and the achieved sparsity, nearest the target."""
    layers = prunable_layers(model)
    b = _block_layers(model)[0]
    heads, _ = _heads_and_dim(model, 0)
    ffn = weight_out_in(layers[b.mlp_out]).shape[1]
    attn_elems = sum(layers[n].weight.numel() for n in (*b.attn_in, b.attn_out))
    mlp_elems = sum(layers[n].weight.numel() for n in (*b.mlp_in, b.mlp_out))
    total = attn_elems + mlp_elems
    per_head, per_neuron = attn_elems / heads, mlp_elems / ffn
    target = sparsity * total
    best = None
    for h in range(heads):  # at most heads - 1: every layer keeps one head
        n = int(min(ffn - 1, max(0, round((target - h * per_head) / per_neuron))))
        error = abs(h * per_head + n * per_neuron - target)
        key = (round(error, 6), abs(h / heads - sparsity))
        if best is None or key < best[0]:
            best = (key, h, n)
    _, h, n = best
    return h, n, (h * per_head + n * per_neuron) / total


def structured_plan(model: nn.Module, sparsity: float, calibration: torch.Tensor) -> StructuredPlan:
    """The lowest-scoring heads and neurons of every layer, as many as the target needs."""
    check_sparsity(sparsity)
    h, n, achieved = _counts(model, sparsity)
    head_scores, neuron_scores = unit_scores(model, calibration)
    heads = tuple(tuple(sorted(torch.topk(s, h, largest=False).indices.tolist())) for s in head_scores)
    neurons = tuple(tuple(sorted(torch.topk(s, n, largest=False).indices.tolist())) for s in neuron_scores)
    return StructuredPlan(heads, neurons, achieved)


def _head_rows(heads: tuple[int, ...], head_dim: int) -> torch.Tensor:
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def plan_masks(model: nn.Module, plan: StructuredPlan) -> Masks:
    """The plan as keep-masks over the unshrunk model: the masked model computes what the shrunk one does."""
    layers = prunable_layers(model)
    masks = {name: torch.ones_like(weight_out_in(m), dtype=torch.bool) for name, m in layers.items()}
    for i, b in enumerate(_block_layers(model)):
        heads, head_dim = _heads_and_dim(model, i)
        rows = _head_rows(plan.heads_removed[i], head_dim)
        for name in b.attn_in:
            sections = masks[name].shape[0] // (heads * head_dim)  # 3 for GPT-2's fused q|k|v, else 1
            for s in range(sections):
                masks[name][s * heads * head_dim + rows] = False
        masks[b.attn_out][:, rows] = False
        neurons = torch.tensor(plan.neurons_removed[i], dtype=torch.long)
        for name in b.mlp_in:
            masks[name][neurons] = False
        masks[b.mlp_out][:, neurons] = False
    return masks


def structured_masks(model: nn.Module, sparsity: float, calibration: torch.Tensor) -> Masks:
    """Pattern signature of structured pruning: head and neuron removal expressed as masks."""
    return plan_masks(model, structured_plan(model, sparsity, calibration))


# ----------------------------------------------------------------------------------------------
# Physical removal


def _slice_layer(module: nn.Module, keep: torch.Tensor, dim_out_in: int) -> nn.Module:
    """A new layer keeping ``keep`` along its output (0) or input (1) dimension, [out, in] terms."""
    w = weight_out_in(module).detach()
    w = w[keep] if dim_out_in == 0 else w[:, keep]
    bias = module.bias
    if bias is not None and dim_out_in == 0:
        bias = bias[keep]
    if is_conv1d(module):
        new = type(module)(w.shape[0], w.shape[1])  # Conv1D(nf=out, nx=in)
        new.weight = nn.Parameter(w.t().contiguous())
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        new.weight = nn.Parameter(w.contiguous())
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().clone())
    return new.to(module.weight.device, module.weight.dtype)


def shrink(model: nn.Module, plan: StructuredPlan) -> nn.Module:
    """Remove the plan's heads and neurons in place and update the config to the new sizes."""
    layers = prunable_layers(model)
    blocks = _block_layers(model)
    for i, b in enumerate(blocks):
        heads, head_dim = _heads_and_dim(model, i)
        kept_heads = [h for h in range(heads) if h not in plan.heads_removed[i]]
        rows = _head_rows(tuple(kept_heads), head_dim)
        for name in b.attn_in:
            sections = weight_out_in(layers[name]).shape[0] // (heads * head_dim)
            keep = torch.cat([s * heads * head_dim + rows for s in range(sections)])
            set_submodule(model, name, _slice_layer(layers[name], keep, 0))
        set_submodule(model, b.attn_out, _slice_layer(layers[b.attn_out], rows, 1))
        ffn = weight_out_in(layers[b.mlp_out]).shape[1]
        kept = torch.tensor([j for j in range(ffn) if j not in set(plan.neurons_removed[i])], dtype=torch.long)
        for name in b.mlp_in:
            set_submodule(model, name, _slice_layer(layers[name], kept, 0))
        set_submodule(model, b.mlp_out, _slice_layer(layers[b.mlp_out], kept, 1))
        if _arch(model) == "gpt2":
            attn = _get_block(model, i).attn
            attn.split_size = len(kept_heads) * head_dim
            attn.num_heads = len(kept_heads)
    removed_h, removed_n = len(plan.heads_removed[0]), len(plan.neurons_removed[0])
    cfg = model.config
    if _arch(model) == "gpt2":
        cfg.n_inner = (cfg.n_inner or 4 * cfg.n_embd) - removed_n
        if removed_h:
            previous = dict(getattr(cfg, "tlc_pruned_heads", None) or {})
            for i, heads in enumerate(plan.heads_removed):
                previous[str(i)] = sorted(set(previous.get(str(i), [])) | set(heads))  # indices of the original heads
            cfg.tlc_pruned_heads = previous
    else:
        head_dim = _get_block(model, 0).self_attn.head_dim
        cfg.head_dim = head_dim
        cfg.num_attention_heads -= removed_h
        cfg.num_key_value_heads -= removed_h
        cfg.intermediate_size -= removed_n
        for block in model.model.layers:
            block.self_attn.config = cfg
    return model


def build_from_config(config) -> nn.Module:
    """An (uninitialised-weights) model of exactly the shapes ``config`` describes, shrunk GPT-2 heads included."""
    from tlc.architecture import auto_model_class, config_objective

    pruned = getattr(config, "tlc_pruned_heads", None) or {}
    if pruned:
        config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "tlc_pruned_heads"})
    model = auto_model_class(config_objective(config)).from_config(config, attn_implementation="sdpa")
    if pruned:
        heads = tuple(tuple(pruned.get(str(i), [])) for i in range(config.n_layer))
        shrink(model, StructuredPlan(heads, tuple(() for _ in heads), 0.0))
    return model
