"""cuda_ext: the portable (non-AVX-512) CPU kernels, built with -mno-avx512f in a fresh process
(one process can hold only one build of the tlc_bsr ops), against the reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import torch, cuda_ext
    from cuda_ext.bsr_format import dense_to_bsr
    assert cuda_ext.available(), cuda_ext.ops._build.build_error()
    assert cuda_ext.cpu_kernel_isa() == "portable", cuda_ext.cpu_kernel_isa()
    torch.manual_seed(0)
    for bs in (16, 32, 64):
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            keep = (torch.rand(192 // bs, 128 // bs) < 0.5).repeat_interleave(bs, 0).repeat_interleave(bs, 1)
            values, crow, col = dense_to_bsr((torch.randn(192, 128) * keep).to(dtype), bs)
            x = torch.randn(70, 128).to(dtype).requires_grad_()
            bias = torch.randn(192).to(dtype).requires_grad_()
            values.requires_grad_()
            y = cuda_ext.bsr_linear(x, values, crow, col, bias)
            y.backward(torch.ones_like(y))
            x64, v64, b64 = (t.detach().double().requires_grad_() for t in (x, values, bias))
            y64 = cuda_ext.bsr_linear_reference(x64, v64, crow, col, b64)
            y64.backward(torch.ones_like(y64))
            for got, want in ((y, y64), (x.grad, x64.grad), (values.grad, v64.grad), (bias.grad, b64.grad)):
                err = (got.double() - want).abs().max().item()
                assert err <= tol * want.abs().max().item() + 1e-6, (bs, dtype, err)
    print("ok")
""")


@pytest.mark.skipif(sys.platform != "linux", reason="-mno-avx512f is a gcc/clang flag on x86-64 Linux")
def test_portable_kernels_match_reference():
    env = dict(os.environ, TLC_CUDA_EXT_EXTRA_CFLAGS="-mno-avx512f")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
