"""Pure-torch dense×mask emulator of the block-sparse linear, with the ops' interface.

It rebuilds the dense weight (zeros outside the stored blocks) and calls a dense matmul, so it
is slow but obviously right: tests check the fast kernels against it, gradcheck runs on it in
float64, and it is the fallback when the extension cannot be built. Autograd through it gives
the gradients for x, values and bias.
"""

from __future__ import annotations

import torch

from .bsr_format import bsr_to_dense, check_bsr


def block_mask(crow_indices: torch.Tensor, col_indices: torch.Tensor, block_size: int, in_features: int) -> torch.Tensor:
    """Boolean [out, in] mask that is True inside the stored blocks."""
    nnz = col_indices.numel()
    ones = torch.ones(nnz, block_size, block_size, dtype=torch.bool, device=col_indices.device)
    return bsr_to_dense(ones, crow_indices, col_indices, in_features)


def bsr_linear_reference(x: torch.Tensor, values: torch.Tensor, crow_indices: torch.Tensor,
                         col_indices: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · (W ⊙ mask)ᵀ + bias for x [..., in_features]; bf16 inputs are computed in fp32, as the kernels do."""
    in_features = x.shape[-1]
    check_bsr(values, crow_indices, col_indices, in_features)
    if x.dtype != values.dtype:
        raise ValueError(f"x and values must have the same dtype, got {x.dtype} and {values.dtype}")
    compute = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    bs = values.shape[1]
    weight = bsr_to_dense(values.to(compute), crow_indices, col_indices, in_features)
    weight = weight * block_mask(crow_indices, col_indices, bs, in_features)  # explicit mask: the emulator's contract
    y = torch.nn.functional.linear(x.to(compute), weight, None if bias is None else bias.to(compute))
    return y.to(x.dtype)
