"""cuda_ext: every CPU kernel path, forced with TLC_BSR_ISA in a fresh process (the path is chosen
once per process), against the float64 reference, forward and backward.

Every path's code is compiled into every x86 build (each file picks its own target), so a build
that loads has compile-checked all of them; a path this CPU cannot run is skipped with that reason.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cuda_ext
from cuda_ext import _build

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("avx512-bf16", "avx512", "avx2", "portable")
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
needs_kernels = pytest.mark.skipif(not cuda_ext.available(), reason=f"kernels not built: {_build.build_error()}")

# Token counts reach every kernel variant: an empty batch, the dot-form forward (< 16), the packed/BLAS
# forms, the portable BLAS path's 256-token chunks and grad_values' 512-token chunks.
SCRIPT = textwrap.dedent("""
    import sys, torch, cuda_ext
    from cuda_ext.bsr_format import dense_to_bsr
    assert cuda_ext.cpu_kernel_isa() == sys.argv[1], cuda_ext.cpu_kernel_isa()
    torch.manual_seed(0)
    for bs in (16, 32, 64):
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            for tokens, density in ((0, 0.5), (1, 0.5), (5, 1.0), (70, 0.3), (300, 0.5), (600, 0.2)):
                keep = torch.rand(192 // bs, 256 // bs) < density
                keep[0] = False  # an empty block-row, and (for bs 64) usually an empty block-column
                mask = keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)
                values, crow, col = dense_to_bsr((torch.randn(192, 256) * mask).to(dtype), bs)
                x = torch.randn(tokens, 256).to(dtype).requires_grad_()
                bias = torch.randn(192).to(dtype).requires_grad_()
                values.requires_grad_()
                y = cuda_ext.bsr_linear(x, values, crow, col, bias)
                grad_y = torch.randn_like(y)
                y.backward(grad_y)
                x64, v64, b64 = (t.detach().double().requires_grad_() for t in (x, values, bias))
                y64 = cuda_ext.bsr_linear_reference(x64, v64, crow, col, b64)
                y64.backward(grad_y.double())
                for name, got, want in (("y", y, y64), ("grad_x", x.grad, x64.grad),
                                        ("grad_values", values.grad, v64.grad), ("grad_bias", bias.grad, b64.grad)):
                    err = (got.double() - want).abs().max().item() if want.numel() else 0.0
                    scale = want.abs().max().item() if want.numel() else 0.0
                    assert err <= tol * scale + 1e-6, (bs, dtype, tokens, name, err, scale)
    print("ok")
""")


def run_forced(path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TLC_BSR_ISA=path)
    return subprocess.run([sys.executable, "-c", SCRIPT, path], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@needs_kernels
@pytest.mark.parametrize("path", PATHS)
def test_forced_path_matches_float64_reference(path):
    supported = cuda_ext.cpu_kernel_isas()
    if path not in supported:
        where = "x86 CPUs only" if not X86 else f"this CPU can run only {', '.join(supported)}"
        pytest.skip(f"{path}: {where} (its code compiled with this build)")
    result = run_forced(path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@needs_kernels
def test_default_path_is_the_best_this_cpu_runs():
    if os.environ.get(_build.ISA_ENV, "auto") not in ("", "auto"):
        pytest.skip(f"{_build.ISA_ENV} is set in this environment")
    assert cuda_ext.cpu_kernel_isa() == cuda_ext.cpu_kernel_isas()[0]
    assert cuda_ext.cpu_kernel_isas()[-1] == "portable"


@needs_kernels
@pytest.mark.parametrize("value,message", [("sse9", "is not a kernel path; valid: auto"),
                                           ("avx512-bf16", "names a kernel path this CPU cannot run")])
def test_bad_forced_path_is_a_clear_error(value, message):
    if value in cuda_ext.cpu_kernel_isas():
        pytest.skip(f"this CPU runs {value}")
    script = ("import cuda_ext, torch; "
              "cuda_ext.bsr_linear(torch.randn(2, 32), *cuda_ext.dense_to_bsr(torch.ones(32, 32), 32))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, TLC_BSR_ISA=value),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and message in result.stderr and "TLC_BSR_ISA" in result.stderr


def test_portable_path_sources_have_no_x86_code():
    """ARM is out of reach here: at least the portable path's files must name no x86 intrinsic or
    header, and the x86 files must compile to nothing elsewhere (guarded by the architecture)."""
    csrc = ROOT / "cuda_ext" / "csrc"
    for name in ("bsr_kernels_portable.cpp", "bsr_blas_cpu.cpp", "bsr_blas_cpu.h", "bsr_kernels_cpu.h"):
        text = (csrc / name).read_text()
        for x86 in ("immintrin", "_mm_", "_mm256", "_mm512", "__m256", "__m512", "__builtin_cpu"):
            assert x86 not in text, (name, x86)
    for name in ("bsr_kernels_avx2.cpp", "bsr_kernels_avx512.cpp"):
        text = (csrc / name).read_text()
        guard = "#if defined(__x86_64__) || defined(__i386__)"
        assert guard in text and text.index(guard) < text.index("#include <immintrin.h>"), name
