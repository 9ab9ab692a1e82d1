"""The tlc_bsr operators: typed Python wrappers and fake (meta) kernels.

The schemas, the CPU/CUDA kernels and the autograd formula live in C++ (csrc/); this module
builds them on first use (see _build.py) and registers the fake kernels torch.compile needs. When the build fails the
wrappers route to the pure-torch emulator in reference.py, with the same results.
"""

from __future__ import annotations

import torch

from . import _build
from .reference import bsr_linear_reference

_registered = False


def available() -> bool:
    """True if the compiled block-sparse kernels loaded (building them on the first call)."""
    global _registered
    if _registered:
        return _build.load()
    if not _build.load():
        return False
    _register_python_side()
    _registered = True
    return True


def cpu_kernel_isa() -> str | None:
    """CPU kernel path in use: "avx512-bf16", "avx512", "avx2" or "portable"; None without the compiled kernels.

    The best path this CPU can run, chosen at run time, unless the environment variable TLC_BSR_ISA
    names one (read at the first kernel call); naming an unknown path or one the CPU lacks raises
    RuntimeError here and at every kernel call.
    """
    return torch.ops.tlc_bsr.cpu_kernel_isa() if available() else None


def cpu_kernel_isas() -> list[str]:
    """Every CPU kernel path this CPU can run, best first (empty without the compiled kernels)."""
    return list(torch.ops.tlc_bsr.cpu_kernel_isas()) if available() else []


def bsr_linear(x: torch.Tensor, values: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Wᵀ + bias with W in BSR form (see bsr_format.py); x is [..., in_features].

    Differentiable in x, values and bias. Uses the compiled kernels when available() (and, for
    CUDA tensors, when they were built with CUDA), else the pure-torch emulator.
    """
    if not available() or (x.is_cuda and not _build.has_cuda_kernels()):
        return bsr_linear_reference(x, values, crow_indices, col_indices, bias)
    if x.dim() == 2:
        return torch.ops.tlc_bsr.bsr_linear(x, values, crow_indices, col_indices, bias)
    y = torch.ops.tlc_bsr.bsr_linear(x.reshape(-1, x.shape[-1]), values, crow_indices, col_indices, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def bsr_linear_grad_input(grad_y: torch.Tensor, values: torch.Tensor, crow_indices: torch.Tensor,
                          col_indices: torch.Tensor, in_features: int) -> torch.Tensor:
    """grad_x [tokens, in] = grad_y [tokens, out] · W (the transposed BSR product). Needs available()."""
    return torch.ops.tlc_bsr.bsr_linear_grad_input(grad_y, values, crow_indices, col_indices, in_features)


def bsr_linear_grad_values(grad_y: torch.Tensor, x: torch.Tensor, crow_indices: torch.Tensor,
                           col_indices: torch.Tensor, block_size: int) -> torch.Tensor:
    """grad_values[k] = grad_y[:, rows of block k]ᵀ · x[:, cols of block k]. Needs available()."""
    return torch.ops.tlc_bsr.bsr_linear_grad_values(grad_y, x, crow_indices, col_indices, block_size)


def _check_same_device(op: str, **tensors) -> None:
    """The kernels' device check (csrc/bsr_ops.cpp), made where no kernel runs: under FakeTensorMode and
    torch.compile a cuda x beside cpu indices would otherwise trace and fail only on the GPU."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    torch._check(len(set(devices.values())) == 1, lambda: f"{op}: all tensors must be on one device, got "
                 + ", ".join(f"{name} on {device}" for name, device in devices.items()))


def _fake_bsr_linear(x, values, crow_indices, col_indices, bias):
    torch._check(x.dim() == 2, lambda: f"bsr_linear: x must be 2-D, got {x.dim()}-D")
    _check_same_device("bsr_linear", x=x, values=values, crow_indices=crow_indices, col_indices=col_indices, bias=bias)
    return x.new_empty(x.shape[0], (crow_indices.shape[0] - 1) * values.shape[1])


def _fake_grad_input(grad_y, values, crow_indices, col_indices, in_features):
    _check_same_device("bsr_linear_grad_input", grad_y=grad_y, values=values, crow_indices=crow_indices,
                       col_indices=col_indices)
    return grad_y.new_empty(grad_y.shape[0], in_features)


def _fake_grad_values(grad_y, x, crow_indices, col_indices, block_size):
    _check_same_device("bsr_linear_grad_values", grad_y=grad_y, x=x, crow_indices=crow_indices, col_indices=col_indices)
    return x.new_empty(col_indices.shape[0], block_size, block_size)


def _register_python_side() -> None:
    torch.library.register_fake("tlc_bsr::bsr_linear")(_fake_bsr_linear)
    torch.library.register_fake("tlc_bsr::bsr_linear_grad_input")(_fake_grad_input)
    torch.library.register_fake("tlc_bsr::bsr_linear_grad_values")(_fake_grad_values)
    # autograd for bsr_linear is registered in C++ (csrc/bsr_autograd.cpp)
