"""Run BLAS single-threaded while fitting.

SciPy's L-BFGS-B calls BLAS on vectors of a handful of elements, once per iteration. With
OpenBLAS's default of one thread per core, every such call pays for waking and joining the
thread pool: measured on a 2-core machine, a bootstrap of 200 refits took 160 s with the
default threads and about 10x less with one. This does what threadpoolctl does for the
OpenBLAS builds that NumPy and SciPy wheels bundle, without the dependency; where no such
library is found (other BLAS, other platforms) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path
from typing import Iterator

_SUFFIXES = ("64_", "_64_", "")  # ILP64 (NumPy) and LP64 (SciPy) symbol names
_PREFIXES = ("scipy_openblas", "openblas")


@functools.lru_cache(maxsize=1)
def _openblas_controls() -> tuple[tuple[object, object], ...]:
    """(get_num_threads, set_num_threads) for each bundled OpenBLAS that can be found."""
    import numpy
    import scipy

    folders = []
    for package in (numpy, scipy):
        root = Path(package.__file__).parent
        folders += [root.parent / f"{root.name}.libs", root / ".dylibs"]
    controls = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*openblas*")):
            try:
                library = ctypes.CDLL(str(path))
            except OSError:
                continue
            for prefix in _PREFIXES:
                getters = [getattr(library, f"{prefix}_get_num_threads{s}", None) for s in _SUFFIXES]
                setters = [getattr(library, f"{prefix}_set_num_threads{s}", None) for s in _SUFFIXES]
                getter = next((f for f in getters if f is not None), None)
                setter = next((f for f in setters if f is not None), None)
                if getter is not None and setter is not None:
                    getter.restype = ctypes.c_int
                    controls.append((getter, setter))
                    break
    return tuple(controls)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within the block, bundled OpenBLAS libraries use one thread; the previous counts come back after."""
    controls = _openblas_controls()
    previous = [getter() for getter, _ in controls]
    for _, setter in controls:
        setter(1)
    try:
        yield
    finally:
        for (_, setter), count in zip(controls, previous):
            setter(count)
