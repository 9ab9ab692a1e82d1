"""cuda_ext: the BSR linear ops against the dense×mask reference, autograd, opcheck, compile,
bad input, the build-failure fallback, and BlockSparseLinear / the converter on a tiny GPT-2."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import cuda_ext
from cuda_ext import _build, ops
from cuda_ext.bsr_format import dense_to_bsr
from cuda_ext.reference import bsr_linear_reference

# "cuda" cases carry the gpu marker: `pytest -m gpu` selects them, and they skip without a CUDA device (conftest)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
needs_kernels = pytest.mark.skipif(not cuda_ext.available(), reason=f"kernels not built: {_build.build_error()}")


def random_bsr(out_features, in_features, block_size, density, dtype=torch.float32, device="cpu", seed=0):
    """(values, crow, col) with about `density` of the blocks kept (exactly 0 and all for 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(out_features // block_size, in_features // block_size, generator=g) < density
    if density >= 1.0:
        keep[:] = True
    mask = keep.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    weight = torch.randn(out_features, in_features, generator=g) * mask
    values, crow, col = dense_to_bsr(weight, block_size)
    return values.to(device=device, dtype=dtype), crow.to(device), col.to(device)


def assert_close_scaled(actual, expected, rel):
    """max |actual - expected| ≤ rel · max |expected| (+ a floor for all-zero outputs)."""
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    assert err <= rel * scale + 1e-6, f"max error {err:.3g} exceeds {rel} × {scale:.3g}"


def tolerance(dtype):
    return {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]


CASES = [("cpu", torch.float32), ("cpu", torch.bfloat16)] + [
    pytest.param("cuda", dtype, marks=pytest.mark.gpu) for dtype in (torch.float32, torch.bfloat16, torch.float16)]


@needs_kernels
@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("lead", [(3, 7), (1,), (2, 50)])  # 21, 1 and 100 tokens (≥ 64 takes the packed path)
def test_kernels_match_reference(device, dtype, block_size, density, lead):
    out_features, in_features = 192, 128
    values, crow, col = random_bsr(out_features, in_features, block_size, density, dtype, device,
                                   seed=block_size + int(10 * density))
    x = torch.randn(*lead, in_features, device=device).to(dtype).requires_grad_()
    bias = torch.randn(out_features, device=device).to(dtype).requires_grad_()
    values.requires_grad_()
    y = cuda_ext.bsr_linear(x, values, crow, col, bias)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)

    x64, v64, b64 = (t.detach().double().requires_grad_() for t in (x, values, bias))
    y64 = bsr_linear_reference(x64, v64, crow, col, b64)
    y64.backward(grad_y.double())
    rel = tolerance(dtype)
    assert y.shape == (*lead, out_features) and y.dtype == dtype
    assert_close_scaled(y, y64, rel)
    assert_close_scaled(x.grad, x64.grad, rel)
    assert_close_scaled(values.grad, v64.grad, rel)
    assert_close_scaled(bias.grad, b64.grad, rel)


@needs_kernels
def test_noncontiguous_input_and_no_bias():
    values, crow, col = random_bsr(64, 128, 32, 0.5)
    x = torch.randn(128, 9).t()  # [9, 128], not contiguous
    assert_close_scaled(cuda_ext.bsr_linear(x, values, crow, col), bsr_linear_reference(x, values, crow, col), 1e-5)


def test_gradcheck_reference_float64():
    values, crow, col = random_bsr(32, 48, 16, 0.5, torch.float64)
    assert 0 < values.shape[0] < 6  # some blocks kept, some dropped
    x = torch.randn(2, 3, 48, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(32, dtype=torch.float64, requires_grad=True)
    values.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, v, b: bsr_linear_reference(a, v, crow, col, b), (x, values, bias),
                                    fast_mode=True)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    values, crow, col = random_bsr(64, 96, 16, 0.5, device=device)
    x = torch.randn(5, 96, device=device)
    grad_y = torch.randn(5, 64, device=device)
    bias = torch.randn(64, device=device)
    torch.library.opcheck(torch.ops.tlc_bsr.bsr_linear, (x, values.requires_grad_(), crow, col, bias))
    torch.library.opcheck(torch.ops.tlc_bsr.bsr_linear_grad_input, (grad_y, values.detach(), crow, col, 96))
    torch.library.opcheck(torch.ops.tlc_bsr.bsr_linear_grad_values, (grad_y, x, crow, col, 16))


@needs_kernels
def test_torch_compile_fullgraph():
    weight = torch.randn(64, 128) * torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat_interleave(32, 0).repeat_interleave(64, 1)
    layer = cuda_ext.BlockSparseLinear.from_dense(weight, torch.randn(64), block_size=32, dense_above=1.0)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 128, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    assert torch.allclose(y, layer(x), atol=1e-5)
    assert x.grad is not None and layer.values.grad is not None


BAD_INPUTS = [
    ("x", lambda v, c, l: (torch.randn(4, 96), v, c, l), "multiple of block_size|col_indices"),
    ("dtype", lambda v, c, l: (torch.randn(4, 128, dtype=torch.float64), v.double(), c, l), "float32 and bfloat16"),
    ("dtype mismatch", lambda v, c, l: (torch.randn(4, 128, dtype=torch.bfloat16), v, c, l), "same dtype"),
    ("unsorted", lambda v, c, l: (torch.randn(4, 128), v, c, l.flip(0)), "strictly increasing|start at 0"),
    ("out of range", lambda v, c, l: (torch.randn(4, 128), v, c, l + 4), "out of range"),
    ("block size", lambda v, c, l: (torch.randn(4, 128), v[:, :8, :8].contiguous(), c, l), "must be 16, 32 or 64"),
    ("crow dtype", lambda v, c, l: (torch.randn(4, 128), v, c.int(), l), "crow_indices must be a 1-D int64"),
    ("x rank", lambda v, c, l: (torch.randn(128), v, c, l), "x must be 2-D"),
    ("col length", lambda v, c, l: (torch.randn(4, 128), v, c, l[:2]), "one entry per block"),
]


@needs_kernels
@pytest.mark.parametrize("name,make,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_error(name, make, message):
    values, crow, col = random_bsr(32, 128, 32, 1.0)  # one block-row holding all 4 block-columns
    with pytest.raises(RuntimeError, match=message):
        torch.ops.tlc_bsr.bsr_linear(*make(values, crow, col), None)


@needs_kernels
def test_bad_bias_raises_clear_error():
    values, crow, col = random_bsr(32, 128, 32, 1.0)
    with pytest.raises(RuntimeError, match="bias must be 1-D of length out_features"):
        torch.ops.tlc_bsr.bsr_linear(torch.randn(4, 128), values, crow, col, torch.randn(33))


def test_python_side_errors():
    with pytest.raises(ValueError, match="block_size must be one of"):
        dense_to_bsr(torch.randn(64, 64), 8)
    with pytest.raises(ValueError, match="multiples of block_size"):
        dense_to_bsr(torch.randn(64, 40), 16)
    values, crow, col = random_bsr(32, 64, 16, 1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        bsr_linear_reference(torch.randn(2, 64), values, crow, col.flip(0))


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_build, "_state", {"tried": False, "loaded": False, "cuda": False, "error": None})
    monkeypatch.setenv(_build.EXTRA_CFLAGS_ENV, "-fno-such-compiler-flag-tlc")
    values, crow, col = random_bsr(64, 64, 16, 0.5)
    x = torch.randn(3, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ops.bsr_linear(x, values, crow, col)
        second = ops.bsr_linear(x, values, crow, col)
    build_warnings = [w for w in caught if "could not be built" in str(w.message)]
    assert len(build_warnings) == 1 and not ops.available()
    expected = x @ cuda_ext.bsr_to_dense(values, crow, col, 64).t()
    assert torch.allclose(first, expected, atol=1e-5) and torch.equal(first, second)


@needs_kernels
def test_cpu_kernels_use_the_cpus_simd():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    runnable = cuda_ext.cpu_kernel_isas()
    assert set(runnable) <= {"avx512-bf16", "avx512", "avx2", "portable"} and "portable" in runnable
    if "avx512f" in flags and "avx512bw" in flags and "avx512dq" in flags and "avx512vl" in flags:
        assert "avx512" in runnable
    if "avx512_bf16" in flags and "avx512" in runnable:
        assert runnable[0] == "avx512-bf16"
    if "avx2" in flags and "fma" in flags:
        assert "avx2" in runnable


def test_the_benchmarks_gathered_torch_dw_matches_the_references():
    """bench/block_sparse.py times torch's dW as a gather + bmm: it must compute what the kernel does."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "block_sparse.py"
    spec = importlib.util.spec_from_file_location("bench_block_sparse", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    values, crow, col = random_bsr(96, 128, 32, 0.5)
    x, grad_y = torch.randn(7, 128), torch.randn(7, 96)
    values.requires_grad_()
    bsr_linear_reference(x, values, crow, col).backward(grad_y)  # the reference's dW on the kept blocks
    assert_close_scaled(bench.gathered_grad_values(grad_y, x, crow, col, 32), values.grad, 1e-5)
