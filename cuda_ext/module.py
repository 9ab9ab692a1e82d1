"""BlockSparseLinear: an nn.Linear replacement that stores its weight as BSR blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import crossover, ops
from .bsr_format import block_density, bsr_to_dense, check_block_size, check_bsr, dense_to_bsr

DENSE_CROSSOVER_DENSITY = 0.75
"""A fixed crossover, as measured on a 2-core AVX-512 Xeon with the earlier kernels (BENCHMARKS.md).

No longer the default: from_dense measures this machine's crossover per shape class (crossover.py),
because it moves with the kernel path and the dense GEMM (an AVX2 CPU's is not an AVX-512 CPU's).
Pass it as `dense_above` to keep the old fixed rule.
"""


class BlockSparseLinear(nn.Module):
    """y = x · Wᵀ + bias with W [out_features, in_features] kept as square blocks in BSR form.

    Sparse storage: `values` [nnz_blocks, bs, bs] is the trainable Parameter and `crow_indices`,
    `col_indices` are buffers, so training keeps the block pattern. Dense storage (chosen by
    from_dense above `dense_above`): `weight` [out, in] is the Parameter and the indices only
    record the pattern. `bsr_shape` = [out_features, in_features, block_size] lets
    load_block_sparse_state_dict rebuild the module from a state dict.
    """

    def __init__(self, in_features: int, out_features: int, block_size: int, crow_indices: torch.Tensor,
                 col_indices: torch.Tensor, bias: bool = True, *, dense: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        check_block_size(block_size)
        if in_features % block_size or out_features % block_size:
            raise ValueError(f"in_features ({in_features}) and out_features ({out_features}) must be multiples of "
                             f"block_size ({block_size})")
        if crow_indices.numel() != out_features // block_size + 1:
            raise ValueError(f"crow_indices must have out_features / block_size + 1 = {out_features // block_size + 1} "
                             f"entries, got {crow_indices.numel()}")
        self.in_features, self.out_features, self.block_size = in_features, out_features, block_size
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("crow_indices", crow_indices.to(device=device, dtype=torch.int64))
        self.register_buffer("col_indices", col_indices.to(device=device, dtype=torch.int64))
        self.register_buffer("bsr_shape", torch.tensor([out_features, in_features, block_size], device=device))
        nnz = col_indices.numel()
        if dense:
            self.weight = nn.Parameter(torch.zeros(out_features, in_features, **factory))
            self.values = None
        else:
            self.values = nn.Parameter(torch.zeros(nnz, block_size, block_size, **factory))
            self.weight = None
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        check_bsr(torch.empty(nnz, block_size, block_size, device="meta"), self.crow_indices, self.col_indices,
                  in_features)
        ops.available()  # build the kernels on first use, outside any torch.compile trace

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, block_size: int = 32, *,
                   dense_above: float | None = None, tokens: int = 256) -> BlockSparseLinear:
        """Build from a dense [out, in] weight, keeping every block that is not all zero.

        Stores the weight densely when its block density exceeds `dense_above`: by default the density
        at which dense F.linear overtakes the kernels on this machine for this shape class at `tokens`
        tokens per call (measured once and cached, see crossover.py); pass 1.0 to always store blocks.
        """
        values, crow, col = dense_to_bsr(weight.detach(), block_size)
        out_features, in_features = weight.shape
        if dense_above is None:
            dense_above = crossover.crossover_density(out_features, in_features, block_size, tokens, weight.dtype,
                                                      weight.device)
        dense = block_density(crow, in_features, block_size) > dense_above
        module = cls(in_features, out_features, block_size, crow, col, bias is not None, dense=dense,
                     device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            if dense:
                module.weight.copy_(weight)
            else:
                module.values.copy_(values)
            if bias is not None:
                module.bias.copy_(bias)
        return module

    @property
    def density(self) -> float:
        """Fraction of the weight's blocks that are stored."""
        return block_density(self.crow_indices, self.in_features, self.block_size)

    def dense_weight(self) -> torch.Tensor:
        """The [out, in] weight with zeros outside the stored blocks."""
        if self.weight is not None:
            return self.weight
        return bsr_to_dense(self.values, self.crow_indices, self.col_indices, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in_features] → [..., out_features]
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BlockSparseLinear expects x of shape [..., {self.in_features}] (in_features), "
                             f"got {tuple(x.shape)}")
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        return ops.bsr_linear(x, self.values, self.crow_indices, self.col_indices, self.bias)

    def extra_repr(self) -> str:
        storage = "dense" if self.weight is not None else "blocks"
        return (f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}, "
                f"density={self.density:.3f}, storage={storage}, bias={self.bias is not None}")
