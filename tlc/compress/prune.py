"""One-shot pruning patterns: masks over the attention and MLP weights of GPT-2 and Llama models.

A pattern is a function ``(model, sparsity, calibration) -> Masks``; ``Masks`` maps a layer's
name to a boolean keep-mask in the layer's **[out, in]** orientation (GPT-2's ``Conv1D``
stores its weight [in, out]; :func:`weight_out_in` and :func:`apply_masks` hide that).
Prunable layers are the matrices inside the transformer blocks (q/k/v/o or c_attn/c_proj and
the FFN matrices); embeddings, the tied LM head, norms and biases are never pruned, and
"sparsity" always means the fraction of zeros among the prunable weights' elements.

Every pattern reaches its target exactly up to rounding to one element (magnitude, 2:4) or
one block (block magnitude) per layer: the k lowest scores are removed with ``topk``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tlc.architecture import PRUNABLE_SUFFIXES
from tlc.errors import UserError

Masks = dict[str, torch.Tensor]  # layer name -> bool keep-mask, shape [out, in]

BLOCK_SIZES = (16, 32, 64)
def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: y = x @ weight + bias with weight [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Attention and MLP matrices of every transformer block (`tlc.architecture.PRUNABLE_SUFFIXES`), by module
    name, in model order."""
    layers = {name: m for name, m in model.named_modules()
              if name.endswith(PRUNABLE_SUFFIXES) and (isinstance(m, nn.Linear) or is_conv1d(m))}
    if not layers:
        raise UserError("RUNS_DIR: the model has no GPT-2, Llama or BERT attention/MLP layers that tlc knows how to prune")
    return layers


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a [out, in] view (no copy)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of the submodule at dotted ``name`` (e.g. ``transformer.h.0.mlp.c_fc``)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def to_param_layout(module: nn.Module, mask_out_in: torch.Tensor) -> torch.Tensor:
    """A [out, in] tensor in the layout of ``module.weight`` (transposed for Conv1D)."""
    return mask_out_in.t().contiguous() if is_conv1d(module) else mask_out_in.contiguous()


def count_sparsity(model: nn.Module) -> tuple[int, int]:
    """(zeros, elements) over the prunable weights."""
    zeros = total = 0
    for module in prunable_layers(model).values():
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    return zeros, total


def nonzero_params(model: nn.Module) -> int:
    """Non-zero parameters of the whole model, tied tensors counted once."""
    return sum(int(p.count_nonzero()) for p in model.parameters())


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero the masked weights in place and make it permanent (``torch.nn.utils.prune``)."""
    import torch.nn.utils.prune as prune

    layers = prunable_layers(model)
    for name, keep in masks.items():
        module = layers[name]
        prune.custom_from_mask(module, "weight", to_param_layout(module, keep).to(module.weight.device))
        prune.remove(module, "weight")
    return model


def _bottom_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of ``scores``' shape with exactly its k lowest entries removed (ties by position)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.topk(scores.flatten(), k, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def check_sparsity(sparsity: float) -> None:
    """Raise a UserError naming --sparsity unless 0 <= sparsity < 1."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity: each level must be in [0, 1), got {sparsity}")


# ----------------------------------------------------------------------------------------------
# Patterns


def magnitude_masks(model: nn.Module, sparsity: float, calibration=None, scope: str = "layer") -> Masks:
    """Unstructured magnitude pruning: remove the smallest |w|, per layer or over all layers at once.

    ``scope="layer"`` removes round(sparsity * numel) weights from every layer; ``"global"``
    ranks all prunable weights together, so layers end up with different sparsities.
    """
    check_sparsity(sparsity)
    layers = prunable_layers(model)
    if scope == "layer":
        return {name: _bottom_k_mask(weight_out_in(m).detach().abs(), round(sparsity * m.weight.numel()))
                for name, m in layers.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    flat = torch.cat([weight_out_in(m).detach().abs().flatten() for m in layers.values()])
    keep = _bottom_k_mask(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for name, m in layers.items():
        shape = weight_out_in(m).shape
        masks[name] = keep[start : start + m.weight.numel()].view(shape)
        start += m.weight.numel()
    return masks


def check_block_size(model: nn.Module, block_size: int) -> None:
    """Raise a UserError naming --block-size unless it is supported and divides every prunable weight."""
    if block_size not in BLOCK_SIZES:
        raise UserError(f"--block-size: must be one of {', '.join(map(str, BLOCK_SIZES))}, got {block_size}")
    for name, m in prunable_layers(model).items():
        out_f, in_f = weight_out_in(m).shape
        if out_f % block_size or in_f % block_size:
            valid = [b for b in BLOCK_SIZES if all(d % b == 0 for mm in prunable_layers(model).values()
                                                    for d in weight_out_in(mm).shape)]
            hint = f"valid for this model: {', '.join(map(str, valid))}" if valid else "no supported size divides it"
            raise UserError(f"--block-size: {block_size} does not divide the {out_f}x{in_f} weight of {name}; {hint}")


def block_scores(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Frobenius norm of each block_size x block_size block of a [out, in] weight: [out/bs, in/bs]."""
    rows, cols = weight.shape[0] // block_size, weight.shape[1] // block_size
    return weight.reshape(rows, block_size, cols, block_size).pow(2).sum(dim=(1, 3)).sqrt()


def expand_blocks(block_keep: torch.Tensor, block_size: int) -> torch.Tensor:
    """[rows, cols] block keep-mask -> [rows*bs, cols*bs] element keep-mask."""
    return block_keep.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)


def block_masks(model: nn.Module, sparsity: float, calibration=None, block_size: int = 32) -> Masks:
    """Block magnitude pruning: remove round(sparsity * blocks) lowest-norm square blocks per layer.

    Blocks tile the [out, in] weight, the layout `cuda_ext` multiplies in BSR form. Every layer
    keeps at least one block, so a small layer of a few blocks is never removed whole: there the
    achieved sparsity falls short of the target (the compression row records what was reached).
    """
    check_sparsity(sparsity)
    check_block_size(model, block_size)
    masks = {}
    for name, m in prunable_layers(model).items():
        scores = block_scores(weight_out_in(m).detach(), block_size)
        removed = min(round(sparsity * scores.numel()), scores.numel() - 1)
        masks[name] = expand_blocks(_bottom_k_mask(scores, removed), block_size)
    return masks


def semi_structured_masks(model: nn.Module, sparsity: float = 0.5, calibration=None, n: int = 2, m: int = 4) -> Masks:
    """N:M pruning (2:4 by default): in every group of m consecutive inputs of an output row, keep
    the n largest |w|. The sparsity is fixed at 1 - n/m; ``sparsity`` is accepted for the common
    signature and must equal it."""
    if abs(sparsity - (1 - n / m)) > 1e-9:
        raise ValueError(f"{n}:{m} pruning has sparsity {1 - n / m}, not {sparsity}")
    masks = {}
    for name, layer in prunable_layers(model).items():
        weight = weight_out_in(layer).detach().abs()
        out_f, in_f = weight.shape
        if in_f % m:
            raise UserError(f"--methods: 2:4 needs input widths divisible by {m}; {name} has {in_f} inputs")
        groups = weight.reshape(out_f, in_f // m, m)  # (out, groups, m)
        top = groups.topk(n, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        masks[name] = keep.reshape(out_f, in_f)
    return masks


PATTERNS: dict[str, Callable[..., Masks]] = {
    "magnitude": lambda model, s, calib=None, **kw: magnitude_masks(model, s, calib, scope="layer"),
    "magnitude-global": lambda model, s, calib=None, **kw: magnitude_masks(model, s, calib, scope="global"),
    "block": lambda model, s, calib=None, block_size=32, **kw: block_masks(model, s, calib, block_size),
    "2:4": lambda model, s, calib=None, **kw: semi_structured_masks(model, s, calib),
}
"""One-shot mask patterns by method name (structured and gradual methods live in their own modules)."""
