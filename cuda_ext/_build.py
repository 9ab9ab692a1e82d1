"""Compile and load the tlc_bsr C++ ops on first use, or fall back to pure torch with one warning.

The extension is built with torch.utils.cpp_extension.load into the default torch extensions
directory (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR). Its name carries a hash of the
sources, the compiler flags, the torch version and the machine architecture. The build targets the
architecture's baseline; the AVX2 and AVX-512 kernels are compiled for their instruction sets by
target regions in their own files and chosen at run time (csrc/bsr_kernels_cpu.cpp), so one build
serves every CPU of the architecture and can be shared between machines.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
# bsr_torch.cpp includes the four files that use torch's headers (one translation unit: one parse of them)
TORCH_SOURCES = ("bsr_ops.cpp", "bsr_cpu.cpp", "bsr_blas_cpu.cpp", "bsr_autograd.cpp")
CPU_SOURCES = ("bsr_torch.cpp", "bsr_kernels_cpu.cpp", "bsr_kernels_portable.cpp", "bsr_kernels_avx2.cpp",
               "bsr_kernels_avx512.cpp")
CUDA_SOURCES = ("cuda/bsr_kernels.cu", "cuda/bsr_cuda.cu")
HEADERS = ("bsr_checks.h", "bsr_kernels_cpu.h", "bsr_cpu_common.h", "bsr_blas_cpu.h", "bsr_kernels_avx512.inc",
           "bsr_simd_avx512.inc", "bsr_grad_values.inc", "cuda/bsr_kernels.h")
CFLAGS = ("-O3", "-fopenmp")  # no -march: the per-ISA files pick their own targets
CUDA_CFLAGS = ("-O3",)

DISABLE_ENV = "TLC_CUDA_EXT_DISABLE"
"""Set to 1 to skip the build and always use the pure-torch path."""
ISA_ENV = "TLC_BSR_ISA"
"""Forces a CPU kernel path: avx512-bf16, avx512, avx2 or portable (default: the best this CPU runs)."""
EXTRA_CFLAGS_ENV = "TLC_CUDA_EXT_EXTRA_CFLAGS"
"""Extra compiler flags, space separated (tests pass an invalid one to simulate a failed build)."""

STALE_LOCK_S = 900.0
"""A build folder's lock file older than this is left by a killed build (a build takes seconds to minutes)."""

_lock = threading.Lock()
_state: dict = {"tried": False, "loaded": False, "cuda": False, "error": None}


def _with_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def _build_name(sources: list[Path], cflags: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(sources) + [CSRC / h for h in (*TORCH_SOURCES, *HEADERS)]:
        if path.exists():
            digest.update(path.read_bytes())
    digest.update(" ".join(cflags).encode())
    digest.update(torch.__version__.encode())
    digest.update(platform.machine().encode())
    return f"tlc_bsr_{digest.hexdigest()[:16]}"


def clear_stale_lock(name: str) -> bool:
    """Remove the build folder's lock file when a killed build left it; True if one was removed.

    torch's builder makes the lock when it starts and removes it when done, and every later process
    waits for it to go away, without a limit: a build killed half-way would hang every import of
    cuda_ext. A lock older than STALE_LOCK_S has no live build behind it.
    """
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age <= STALE_LOCK_S:
        return False
    lock.unlink(missing_ok=True)
    warnings.warn(f"cuda_ext: removed {lock}, left {age / 60:.0f} minutes ago by a build that did not finish",
                  RuntimeWarning, stacklevel=3)
    return True


def load() -> bool:
    """Build (first call only) and load the compiled ops; True if they are available.

    A failed build is reported by one RuntimeWarning per process and leaves the pure-torch path
    in use; it never raises.
    """
    if _state["tried"]:
        return _state["loaded"]
    with _lock:
        if _state["tried"]:
            return _state["loaded"]
        try:
            if os.environ.get(DISABLE_ENV) == "1":
                raise RuntimeError(f"disabled by {DISABLE_ENV}=1")
            from torch.utils.cpp_extension import load as load_extension

            cflags = list(CFLAGS) + os.environ.get(EXTRA_CFLAGS_ENV, "").split()
            sources = [CSRC / s for s in CPU_SOURCES]
            with_cuda = _with_cuda()
            if with_cuda:
                sources += [CSRC / s for s in CUDA_SOURCES]
            name = _build_name(sources, cflags)
            clear_stale_lock(name)
            load_extension(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=cflags,
                extra_cuda_cflags=list(CUDA_CFLAGS),
                extra_ldflags=["-fopenmp"],
                extra_include_paths=[str(CSRC)],
                is_python_module=False,
                verbose=False,
            )
            _state["loaded"], _state["cuda"] = True, with_cuda
        except Exception as error:  # any build or load failure means: use the fallback
            _state["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
            hint = "" if os.environ.get(DISABLE_ENV) == "1" else f" Set {DISABLE_ENV}=1 to skip the build."
            warnings.warn(
                f"cuda_ext: the block-sparse kernels could not be built or loaded ({_state['error']}); "
                f"falling back to the slower pure-torch path.{hint}",
                RuntimeWarning,
                stacklevel=3,
            )
        finally:
            _state["tried"] = True
    return _state["loaded"]


def has_cuda_kernels() -> bool:
    """True if the loaded build includes the CUDA kernels (torch with CUDA and nvcc at build time)."""
    return _state["loaded"] and _state["cuda"]


def build_error() -> str | None:
    """Why the compiled ops are unavailable (None if they loaded or no build was tried yet)."""
    return _state["error"]
