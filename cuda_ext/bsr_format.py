"""The BSR (block compressed sparse row) layout used by every op in cuda_ext, and conversions.

A weight W of shape [out_features, in_features] with square blocks of size bs is stored as
  values        [nnz_blocks, bs, bs]      values[k] = W[r*bs:(r+1)*bs, c*bs:(c+1)*bs]
  crow_indices  [out_features/bs + 1]     int64; blocks of block-row r are crow[r] .. crow[r+1]-1
  col_indices   [nnz_blocks]              int64; block-column c of each block, increasing in a row
the same layout as torch.sparse_bsr_tensor, so `W.to_sparse_bsr((bs, bs))` yields the same arrays.
"""

from __future__ import annotations

import torch

BLOCK_SIZES = (16, 32, 64)


def check_block_size(block_size: int) -> None:
    """Raise ValueError unless block_size is one the kernels support."""
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size}")


def dense_to_bsr(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a dense [out, in] weight into (values, crow_indices, col_indices), keeping every block
    that has at least one non-zero element."""
    check_block_size(block_size)
    if weight.dim() != 2 or weight.shape[0] % block_size or weight.shape[1] % block_size:
        raise ValueError(
            f"weight must be 2-D with both dimensions multiples of block_size={block_size}, got shape {tuple(weight.shape)}"
        )
    rows, cols = weight.shape[0] // block_size, weight.shape[1] // block_size
    blocks = weight.reshape(rows, block_size, cols, block_size).transpose(1, 2)  # [rows, cols, bs, bs]
    keep = blocks.ne(0).flatten(2).any(-1)  # [rows, cols]
    values = blocks[keep].contiguous()  # row-major over (row, col): columns sorted within a row
    crow = torch.zeros(rows + 1, dtype=torch.int64, device=weight.device)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1].contiguous()
    return values, crow, col


def bsr_to_dense(values: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor,
                 in_features: int) -> torch.Tensor:
    """Rebuild the dense [out, in] weight (zeros outside the stored blocks); differentiable in values."""
    bs = values.shape[1]
    rows = crow_indices.numel() - 1
    row_of_block = torch.repeat_interleave(torch.arange(rows, device=values.device), crow_indices.diff())
    blocks = values.new_zeros(rows, in_features // bs, bs, bs)
    blocks = blocks.index_put((row_of_block, col_indices), values)
    return blocks.transpose(1, 2).reshape(rows * bs, in_features)


def block_density(crow_indices: torch.Tensor, in_features: int, block_size: int) -> float:
    """Fraction of the weight's blocks that are stored."""
    rows = crow_indices.numel() - 1
    total = rows * (in_features // block_size)
    return float(crow_indices[-1]) / total if total else 0.0


def check_bsr(values: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, in_features: int) -> None:
    """Raise ValueError naming the argument if the BSR arrays are inconsistent (the C++ ops check the same)."""
    if values.dim() != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"values must have shape [nnz_blocks, block_size, block_size], got {tuple(values.shape)}")
    bs = values.shape[1]
    check_block_size(bs)
    if in_features % bs:
        raise ValueError(f"in_features ({in_features}) must be a multiple of block_size ({bs})")
    if crow_indices.dtype != torch.int64 or col_indices.dtype != torch.int64:
        raise ValueError(f"crow_indices and col_indices must be int64, got {crow_indices.dtype} and {col_indices.dtype}")
    if crow_indices.dim() != 1 or crow_indices.numel() < 1 or col_indices.dim() != 1:
        raise ValueError("crow_indices and col_indices must be 1-D")
    nnz = values.shape[0]
    if col_indices.numel() != nnz:
        raise ValueError(f"col_indices must have one entry per block ({nnz}), got {col_indices.numel()}")
    crow, col = crow_indices.cpu(), col_indices.cpu()
    if crow[0] != 0 or crow[-1] != nnz or bool((crow.diff() < 0).any()):
        raise ValueError(f"crow_indices must start at 0, never decrease and end at nnz_blocks ({nnz})")
    n_cols = in_features // bs
    if nnz and (col.min() < 0 or col.max() >= n_cols):
        raise ValueError(f"col_indices must lie in 0 .. {n_cols - 1} (in_features / block_size)")
    row_of_block = torch.repeat_interleave(crow.diff())
    same_row = row_of_block[1:] == row_of_block[:-1]
    if nnz > 1 and bool((col.diff()[same_row] <= 0).any()):
        raise ValueError("col_indices must be strictly increasing within each block-row")
