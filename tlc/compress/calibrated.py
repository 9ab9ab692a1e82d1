"""Calibrated one-shot compression: Wanda and SparseGPT pruning, GPTQ (and round-to-nearest) weight quantization.

All three look at what a layer is fed. For each prunable matrix W [out, in] (GPT-2's ``Conv1D``
stores [in, out]; everything here works on the [out, in] view) they use X, the layer's inputs over
the calibration tokens (training-split windows, never validation text), through
``X^T X`` [in, in]. Layers are compressed one at a time in model order, each calibrated on the
inputs the *already compressed* earlier layers produce (the sequential scheme of both papers), so
later layers correct for the error of earlier ones.

- Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs", eq. 1): score
  S_ij = |W_ij| · ||X_j||_2, compared within each output row (row i loses its lowest-scoring
  weights); for N:M, within each group of M consecutive inputs of a row. No weight update.
- SparseGPT (Frantar & Alistarh 2023, Algorithm 1): with H = X^T X + λI and U the upper Cholesky
  factor of H^-1, columns are visited left to right in blocks of B; at the start of a block the
  mask is chosen by w²/U_jj² (the error the optimal brain surgeon update pays for removing w;
  unstructured: the lowest fraction p of the block; N:M: per row in every M columns), and each
  removed weight's error (w - 0)/U_jj is pushed onto the columns not yet visited through row j of U.
- GPTQ (Frantar et al. 2022, Algorithm 1): the same column sweep with "prune" replaced by "round to
  the b-bit grid"; symmetric grids with one scale per output row and per group of ``group_size``
  inputs, the group's scale taken from the weights as updated when the sweep reaches the group.
  Round-to-nearest (``rtn``) is the same grid without the updates: GPTQ's baseline.

λ is 1% of the mean diagonal of X^T X (the papers' dampening). Inputs that never fire (a zero
diagonal) get weight 0 and a unit diagonal, as in the papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from tlc.compress.prune import prunable_layers, weight_out_in

DAMPING = 0.01  # λ as a fraction of the mean of diag(X^T X)
COLUMN_BLOCK = 128  # B: columns updated lazily together (Frantar & Alistarh's default)
CALIBRATION_BATCH = 16  # calibration windows per forward pass while collecting X^T X


@dataclass(frozen=True)
class Grid:
    """A symmetric b-bit grid per (row, group of inputs): q in [-2^(b-1), 2^(b-1) - 1], w ≈ q · scale."""

    bits: int  # 4 or 8
    group_size: int  # inputs sharing one scale per row; 0 means one scale per whole row

    @property
    def qmax(self) -> int:
        """Largest positive integer on the grid (7 for 4 bits, 127 for 8)."""
        return 2 ** (self.bits - 1) - 1

    def group_width(self, columns: int) -> int:
        """Columns per group for a matrix of ``columns`` inputs."""
        return columns if self.group_size <= 0 else min(self.group_size, columns)


def group_scales(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Scales [rows] for one group's weights w [rows, width]: absmax / qmax, rounded to fp16 as stored."""
    from tlc.compress.quantize import FP16_SMALLEST

    return (w.abs().amax(dim=1) / grid.qmax).half().float().clamp_min(FP16_SMALLEST)


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Integer codes of w [rows, k] on the grid with per-row ``scale`` [rows] (as float)."""
    return torch.round(w / scale[:, None]).clamp_(-grid.qmax - 1, grid.qmax)


@dataclass
class QuantizedMatrix:
    """A weight-only quantized [out, in] matrix: integer codes and one fp16-exact scale per (row, group)."""

    q: torch.Tensor  # int8 [out, in], values within the grid
    scale: torch.Tensor  # fp32 [out, groups], exactly representable in fp16
    grid: Grid

    def dequantize(self) -> torch.Tensor:
        """The fp32 [out, in] matrix the codes stand for."""
        width = self.grid.group_width(self.q.shape[1])
        return self.q.float() * self.scale.repeat_interleave(width, dim=1)[:, : self.q.shape[1]]


# ----------------------------------------------------------------------------------------------
# Per-layer algorithms on a [out, in] matrix and its X^T X


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S = |W| · ||X_j||_2 for W [out, in] and the inputs' column norms [in] (Sun et al. 2023, eq. 1)."""
    return weight.abs() * input_norms[None, :]


def row_keep_mask(scores: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None) -> torch.Tensor:
    """Keep-mask [out, in] removing, per output row, the round(sparsity · in) lowest scores; or with
    ``n_m`` = (n, m) keeping the n highest of every m consecutive inputs of a row."""
    out_f, in_f = scores.shape
    if n_m is not None:
        n, m = n_m
        groups = scores.reshape(out_f, in_f // m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1).indices, True)
        return keep.reshape(out_f, in_f)
    k = round(sparsity * in_f)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(1, scores.topk(k, dim=1, largest=False).indices, False)
    return keep


def _inverse_cholesky(xtx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of (X^T X + λI)^-1 (float64), zeroing ``weight``'s columns of dead inputs in place."""
    h = xtx.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h += DAMPING * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def _column_sweep(weight: torch.Tensor, xtx: torch.Tensor, choose: Callable, block: int = COLUMN_BLOCK) -> torch.Tensor:
    """The shared OBS column sweep of SparseGPT and GPTQ over W [out, in]; returns the new weights (float64).

    ``choose(w_block, u_diag, start)`` is called at the start of every column block and returns a function
    ``target(j, w_col) -> new column`` for column j of the block (pruned or rounded); the error of each
    column, divided by U_jj, is propagated to the block's later columns at once and to later blocks lazily.
    """
    w = weight.double().clone()
    u = _inverse_cholesky(xtx, w)
    columns = w.shape[1]
    for start in range(0, columns, block):
        end = min(start + block, columns)
        w_block, u_block = w[:, start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(w_block)
        target = choose(w_block, torch.diagonal(u_block), start)
        for j in range(end - start):
            column = w_block[:, j]
            new = target(j, w_block)
            error = (column - new) / u_block[j, j]
            w_block[:, j:] -= error[:, None] * u_block[j, j:][None, :]  # column j itself becomes `new`
            w_block[:, j] = new  # exactly, without the subtraction's rounding
            errors[:, j] = error
        w[:, start:end] = w_block
        w[:, end:] -= errors @ u[start:end, end:]
    return w


def sparsegpt_layer(weight: torch.Tensor, xtx: torch.Tensor, sparsity: float,
                    n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """SparseGPT on one [out, in] matrix: the pruned and updated weights (float32, exact zeros where pruned)."""
    def choose(w_block, u_diag, start):
        if n_m is not None:
            n, m = n_m
            pruned = torch.zeros_like(w_block, dtype=torch.bool)

            def target(j, w_now):
                if j % m == 0:  # mask of the next m columns, from their weights as updated so far
                    scores = w_now[:, j:j + m] ** 2 / u_diag[j:j + m][None, :] ** 2
                    drop = scores.topk(m - n, dim=1, largest=False).indices
                    pruned[:, j:j + m] = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, drop, True)
                return torch.where(pruned[:, j], 0.0, w_now[:, j])
            return target
        scores = w_block ** 2 / u_diag[None, :] ** 2
        pruned = ~_lowest_fraction_kept(scores, sparsity)

        def target(j, w_now):
            return torch.where(pruned[:, j], 0.0, w_now[:, j])
        return target

    return _column_sweep(weight, xtx, choose).float()


def _lowest_fraction_kept(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the round(sparsity · numel) lowest entries of ``scores`` (ties by position)."""
    from tlc.compress.prune import _bottom_k_mask

    return _bottom_k_mask(scores, round(sparsity * scores.numel()))


def gptq_layer(weight: torch.Tensor, xtx: torch.Tensor, grid: Grid) -> QuantizedMatrix:
    """GPTQ on one [out, in] matrix: integer codes and scales whose dequantized weights minimise ||WX - ŴX||."""
    columns = weight.shape[1]
    width = grid.group_width(columns)
    block = COLUMN_BLOCK - COLUMN_BLOCK % width if width <= COLUMN_BLOCK else width  # groups never straddle blocks
    scales = torch.zeros(weight.shape[0], -(-columns // width), dtype=torch.float32, device=weight.device)
    codes = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)

    def choose(w_block, u_diag, start):
        def target(j, w_now):
            column = start + j
            if column % width == 0:  # the group's scale from the weights as updated so far
                scales[:, column // width] = group_scales(w_now[:, j:j + width].float(), grid)
            scale = scales[:, column // width].double()
            codes[:, column] = quantize_to_grid(w_now[:, j:j + 1], scale, grid)[:, 0].float()
            return codes[:, column].double() * scale
        return target

    _column_sweep(weight, xtx, choose, block=block)
    return QuantizedMatrix(codes.to(torch.int8), scales, grid)


def rtn_layer(weight: torch.Tensor, grid: Grid) -> QuantizedMatrix:
    """Round-to-nearest on the same grid as GPTQ (no calibration, no updates): GPTQ's baseline."""
    columns = weight.shape[1]
    width = grid.group_width(columns)
    w = weight.detach().float()
    scales = torch.stack([group_scales(w[:, g:g + width], grid) for g in range(0, columns, width)], dim=1)
    per_element = scales.repeat_interleave(width, dim=1)[:, :columns]
    q = torch.round(w / per_element).clamp_(-grid.qmax - 1, grid.qmax)
    return QuantizedMatrix(q.to(torch.int8), scales, grid)


def layer_output_error(weight: torch.Tensor, new: torch.Tensor, xtx: torch.Tensor) -> float:
    """||W X^T - Ŵ X^T||_F² = tr((W - Ŵ) X^T X (W - Ŵ)^T): the error every method here minimises, per layer."""
    delta = (weight - new).double()
    return float(torch.einsum("oi,ij,oj->", delta, xtx.double(), delta))


# ----------------------------------------------------------------------------------------------
# Whole models, layer by layer


class _Captured(Exception):
    """Raised by the capture hook to stop a forward pass once the layer's input is seen."""


def layer_input_gram(model: nn.Module, layer: nn.Module, calibration: torch.Tensor,
                     batch: int = CALIBRATION_BATCH) -> torch.Tensor:
    """X^T X [in, in] (float64) of ``layer``'s inputs over every token of ``calibration`` (windows, context)."""
    gram: list[torch.Tensor] = []

    def capture(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        gram.append(x.T @ x)
        raise _Captured

    handle = layer.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for i in range(0, len(calibration), batch):
                try:
                    model(input_ids=calibration[i:i + batch])
                except _Captured:
                    pass
    finally:
        handle.remove()
    return torch.stack(gram).sum(dim=0)


def _set_weight(module: nn.Module, new_out_in: torch.Tensor) -> None:
    """Write a [out, in] matrix into the layer in its own layout."""
    with torch.no_grad():
        weight_out_in(module).copy_(new_out_in.to(module.weight.dtype))


def compress_layers(model: nn.Module, calibration: torch.Tensor,
                    compress: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> nn.Module:
    """Replace each prunable matrix W, in model order, by ``compress(W [out, in], X^T X)``, each layer's X taken
    from the model as compressed so far; in place, returns the model."""
    model.eval()
    for module in prunable_layers(model).values():
        xtx = layer_input_gram(model, module, calibration)
        _set_weight(module, compress(weight_out_in(module).detach().float(), xtx))
    return model


def wanda_prune(model: nn.Module, sparsity: float, calibration: torch.Tensor,
                n_m: tuple[int, int] | None = None) -> nn.Module:
    """Wanda to ``sparsity`` per output row (or N:M), in place."""
    def compress(w, xtx):
        norms = torch.diagonal(xtx).clamp_min(0).sqrt().float()  # ||X_j||_2 over all calibration tokens
        return w * row_keep_mask(wanda_scores(w, norms), sparsity, n_m)
    return compress_layers(model, calibration, compress)


def sparsegpt_prune(model: nn.Module, sparsity: float, calibration: torch.Tensor,
                    n_m: tuple[int, int] | None = None) -> nn.Module:
    """SparseGPT to ``sparsity`` (or N:M), in place."""
    return compress_layers(model, calibration, lambda w, xtx: sparsegpt_layer(w, xtx, sparsity, n_m))


def quantize_weights(model: nn.Module, grid: Grid, calibration: torch.Tensor | None,
                     method: str = "gptq") -> dict[str, QuantizedMatrix]:
    """GPTQ (``calibration`` given) or round-to-nearest every prunable matrix, in place: the model holds the
    dequantized weights afterwards; returns each layer's codes and scales by module name."""
    if method not in ("gptq", "rtn"):
        raise ValueError(f"method must be 'gptq' or 'rtn', got {method!r}")
    quantized: dict[str, QuantizedMatrix] = {}
    model.eval()
    for name, module in prunable_layers(model).items():
        w = weight_out_in(module).detach().float()
        if method == "gptq":
            quantized[name] = gptq_layer(w, layer_input_gram(model, module, calibration), grid)
        else:
            quantized[name] = rtn_layer(w, grid)
        _set_weight(module, quantized[name].dequantize())
    return quantized
