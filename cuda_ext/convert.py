"""Swap a model's dense linear layers for BlockSparseLinear, and save/load the converted model.

Handles nn.Linear and GPT-2's transformers.pytorch_utils.Conv1D (weight stored [in, out]),
recognised by class name and attributes so that this package never imports transformers.
"""

from __future__ import annotations

import torch
from torch import nn

from .module import BlockSparseLinear


def _dense_weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [out, in], bias) of a layer computing x · Wᵀ + b, or None for any other module."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        if module.weight.dim() == 2 and module.weight.shape[1] == module.nf:  # GPT-2 Conv1D: x · weight + bias
            return module.weight.t(), module.bias
    return None


def _tied_parameter_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, count in seen.items() if count > 1}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def convert_block_sparse(model: nn.Module, block_size: int = 32, min_sparsity: float = 0.0, *,
                         dense_above: float | None = None, tokens: int = 256,
                         skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace, in place, every nn.Linear / GPT-2 Conv1D whose block sparsity is at least
    `min_sparsity` with a BlockSparseLinear of the same outputs; returns the model.

    Skipped: layers named in `skip`, layers whose weight is tied to another module (e.g. GPT-2's
    lm_head, which shares the embedding), and layers whose dimensions are not multiples of
    `block_size`. Block sparsity = fraction of block_size × block_size blocks that are all zero.
    `dense_above` and `tokens` go to BlockSparseLinear.from_dense: by default each layer is stored
    densely where this machine's measured crossover says dense F.linear is faster at `tokens` tokens.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be within [0, 1], got {min_sparsity}")
    tied = _tied_parameter_ids(model)
    for name, module in list(model.named_modules()):
        found = _dense_weight_and_bias(module)
        if found is None or name in skip or id(module.weight) in tied:
            continue
        weight, bias = found
        if weight.shape[0] % block_size or weight.shape[1] % block_size:
            continue
        blocks = weight.detach().reshape(weight.shape[0] // block_size, block_size, -1, block_size)
        sparsity = 1.0 - blocks.ne(0).any(dim=3).any(dim=1).float().mean().item()
        if sparsity < min_sparsity:
            continue
        new = BlockSparseLinear.from_dense(weight.detach(), None if bias is None else bias.detach(), block_size,
                                           dense_above=dense_above, tokens=tokens)
        _replace(model, name, new)
    return model


def block_sparse_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as plain contiguous tensors with tied duplicates dropped, ready for
    safetensors.torch.save_file."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and ident in seen:
            continue
        seen.add(ident)
        out[key] = tensor.detach().contiguous().clone()
    return out


def load_block_sparse_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a state dict saved from a converted model into a freshly built dense model of the same
    architecture: layers that were converted (marked by `<prefix>.bsr_shape`) are rebuilt as
    BlockSparseLinear first. Keys missing because their weight is tied to a loaded one are fine."""
    for key in [k for k in state_dict if k.endswith(".bsr_shape")]:
        prefix = key[: -len(".bsr_shape")]
        out_features, in_features, block_size = (int(v) for v in state_dict[key].tolist())
        old = model.get_submodule(prefix)
        reference = next(old.parameters())
        new = BlockSparseLinear(in_features, out_features, block_size, state_dict[prefix + ".crow_indices"],
                                state_dict[prefix + ".col_indices"], bias=prefix + ".bias" in state_dict,
                                dense=prefix + ".weight" in state_dict, device=reference.device,
                                dtype=reference.dtype)
        _replace(model, prefix, new)
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"state_dict has keys the model does not: {result.unexpected_keys[:5]}")
    loaded = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in state_dict}
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [k for k in result.missing_keys if k not in params or id(params[k]) not in loaded]
    if missing:
        raise ValueError(f"state_dict lacks keys the model needs: {missing[:5]}")
    return model
