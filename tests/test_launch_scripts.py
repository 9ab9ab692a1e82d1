"""Launch scripts: the torchrun one trains with two CPU processes; all of them parse."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO, TINY_SHAPE
from tlc.io import read_jsonl

SCRIPTS = sorted((REPO / "scripts").glob("launch_*.sh"))


def test_every_launch_script_is_valid_bash():
    assert {p.name for p in SCRIPTS} >= {"launch_torchrun.sh", "launch_deepspeed.sh", "launch_multinode.sh"}
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_torchrun_script_trains_with_two_cpu_processes(tmp_path, small_corpus):
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "NPROC": "2", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "launch_torchrun.sh"), *TINY_SHAPE, "--tokens", str(4 * 8 * 32),
         "--micro-batch", "4", "--evals", "2", "--data", str(small_corpus), "--out", str(out), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 8
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 4]
    assert (out / "model" / "model.safetensors").exists()


def test_multinode_script_explains_a_missing_hostfile(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "launch_multinode.sh")], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "HOSTFILE"})
    assert proc.returncode != 0 and "HOSTFILE" in proc.stderr
