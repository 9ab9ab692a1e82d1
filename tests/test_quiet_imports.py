"""Nothing tries the network at run time: bitsandbytes is imported without its kernel-hub lookup."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

# In a fresh interpreter: `kernels.get_kernel` (the hub lookup) replaced by a recorder, then bitsandbytes
# imported the way tlc imports it. On a CPU with AVX512_BF16 a plain `import bitsandbytes` calls it.
PROBE = """
import logging, sys
calls = []
try:
    import kernels
    kernels.get_kernel = lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(RuntimeError("hub"))
except ImportError:
    pass
logging.basicConfig(level=logging.WARNING)
from tlc.compress.quantize import import_bitsandbytes, machine_key
import torch
machine_key(torch.device("cpu"), 64)
assert "bitsandbytes" not in sys.modules, "machine_key imported bitsandbytes"
bnb = import_bitsandbytes()
assert bnb.nn.Linear8bitLt is not None
print("hub lookups:", len(calls))
"""


def test_bitsandbytes_imports_without_a_hub_lookup_or_its_warning():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hub lookups: 0" in proc.stdout
    assert "gemm_4bit_forward" not in proc.stderr and "kernels-community" not in proc.stderr, proc.stderr[-2000:]
