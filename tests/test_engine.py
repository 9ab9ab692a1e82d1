"""The DeepSpeed engine's start-up and exit: what a CPU trainer compiles before its first step (nothing), and
that its process group is destroyed before the interpreter tears down."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

START_ENGINE = """
import atexit
import torch.distributed
# atexit runs handlers last-registered first: this one runs after any that init_distributed registers
atexit.register(lambda: print("process group left at exit:", torch.distributed.is_initialized()))
from tlc.config import ModelShape, TrainSettings
from tlc.train.engine import build_engine, init_distributed
from tlc.train.model import build_model
import deepspeed.comm

deepspeed_module, rank, world = init_distributed()
build_engine(deepspeed_module, build_model(ModelShape(32, 1, 2, 32, 300)), TrainSettings(tokens=1, precision="fp32"), 16)
print("world", world, "shm op", deepspeed.comm.comm.cdb.shm_comm_op)
"""


def test_a_cpu_trainer_compiles_no_deepspeed_op(tmp_path):
    # DeepSpeed would build its shared-memory all-reduce op (about 50 s of CPU) into this empty folder
    extensions = tmp_path / "torch_extensions"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", START_ENGINE], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**env, "TORCH_EXTENSIONS_DIR": str(extensions), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 1 shm op None" in proc.stdout
    # left to interpreter teardown, gloo's threads could abort the finished process (exit -6)
    assert "process group left at exit: False" in proc.stdout
    assert not extensions.exists() or not any(extensions.rglob("*.so"))
