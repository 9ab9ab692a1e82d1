"""cuda_ext: the CUDA kernels compile with nvcc for sm_80 and sm_90a (no GPU or CUDA torch needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "cuda_ext" / "csrc" / "cuda" / "bsr_kernels.cu"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_kernels_compile_for_sm80_and_sm90a(tmp_path):
    command = [
        "nvcc", "-c", "-std=c++17", "-O3", "--Werror", "all-warnings",
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_90a,code=sm_90a",
        str(KERNELS), "-o", str(tmp_path / "bsr_kernels.o"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-4000:]}"
    assert (tmp_path / "bsr_kernels.o").stat().st_size > 0
