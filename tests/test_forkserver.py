"""tlc.forkserver: commands forked from a server with the imports done behave as fresh processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_SHAPE, process_gone, start_tlc
from tlc import forkserver

pytestmark = pytest.mark.skipif(not forkserver.usable(), reason="commands are not forked on this machine")


def _metrics(run: Path) -> list[dict]:
    timing = {"wall_s", "tokens_per_s", "time", "elapsed_s", "eval_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_forked_trainer_trains_exactly_as_a_fresh_process(tmp_path, small_corpus):
    args = ["train", *TINY_SHAPE, "--tokens", "8192", "--micro-batch", "8", "--evals", "2", "--precision", "fp32",
            "--eval-tokens", "1024", "--data", str(small_corpus), "--no-progress"]
    fresh = subprocess.run([sys.executable, "-m", "tlc", *args, "--out", str(tmp_path / "fresh")], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    first, _, stderr = start_tlc([*args, "--out", str(tmp_path / "forked")])
    assert isinstance(first, forkserver.ForkedProcess) and first.returncode == 0, stderr
    assert _metrics(tmp_path / "forked") == _metrics(tmp_path / "fresh")
    # the next command is a fork of the same server, and a run of its own
    second, _, _ = start_tlc([*args, "--seed", "1", "--out", str(tmp_path / "again")])
    assert second.returncode == 0 and second.pid != first.pid
    assert _metrics(tmp_path / "again") != _metrics(tmp_path / "fresh")


def test_argv_environment_directory_streams_and_exit_code_are_the_command_s(tmp_path):
    env = {**os.environ, "PYTEST_CURRENT_TEST": "marker"}  # a run-time variable reaches the command
    proc, stdout, stderr = start_tlc(["fit", str(tmp_path / "missing")], env=env, cwd=tmp_path)
    fresh = subprocess.run([sys.executable, "-m", "tlc", "fit", str(tmp_path / "missing")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert isinstance(proc, forkserver.ForkedProcess)
    assert (proc.returncode, stdout, stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert proc.returncode == 2 and stderr.startswith("tlc fit: error:")


def test_variables_libraries_set_while_running_do_not_start_another_server(tmp_path):
    """torch's inductor sets its cache folder and DeepSpeed's import a CUDA-check switch in the process that uses
    them; the next command that process starts is still forked from the server it already has."""
    env = {k: v for k, v in os.environ.items() if k not in forkserver.RUN_TIME_ONLY}
    first, _, _ = start_tlc(["--version"], env=env)
    later = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    second, _, _ = start_tlc(["--version"], env=later)
    assert isinstance(first, forkserver.ForkedProcess) and isinstance(second, forkserver.ForkedProcess)
    assert second._server is first._server and (first.returncode, second.returncode) == (0, 0)
    third, _, _ = start_tlc(["--version"], env={**later, "TLC_SOME_SETTING": "1"})  # any other variable: its own
    assert third._server is not first._server


def test_the_switch_turns_forking_off():
    proc, stdout, _ = start_tlc(["--version"], env={**os.environ, forkserver.DISABLE_ENV: "0"})
    assert isinstance(proc, subprocess.Popen) and proc.returncode == 0 and stdout.strip()


def test_a_killed_client_takes_its_server_and_its_command_along(tmp_path, small_corpus):
    """The trainer of a SIGKILLed sweep worker must not outlive it (another worker takes the run over)."""
    client = textwrap.dedent(f"""
        import sys
        from tlc import forkserver
        proc = forkserver.popen(["train", *{TINY_SHAPE!r}, "--tokens", "4000000", "--micro-batch", "8",
                                 "--precision", "fp32", "--data", {str(small_corpus)!r}, "--no-progress",
                                 "--out", {str(tmp_path / "run")!r}])
        print(proc.pid, flush=True)
        proc.wait()
    """)
    parent = subprocess.Popen([sys.executable, "-c", client], cwd=REPO, stdout=subprocess.PIPE, text=True)
    trainer = int(parent.stdout.readline())
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)  # the trainer is under way
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    if not process_gone(trainer, within_s=10):
        os.kill(trainer, signal.SIGKILL)
        pytest.fail("the command outlived the process that started it")


def test_a_server_that_died_is_replaced_by_fresh_processes():
    env = {**os.environ, "TLC_TEST_SERVER": "dies"}  # a server of its own
    first, _, _ = start_tlc(["--version"], env=env)
    assert isinstance(first, forkserver.ForkedProcess) and first.returncode == 0
    key = next(k for k in forkserver._servers if ("TLC_TEST_SERVER", "dies") in k[2])
    forkserver._servers[key]._proc.kill()
    forkserver._servers[key]._proc.wait()
    again, stdout, _ = start_tlc(["--version"], env=env)
    assert isinstance(again, subprocess.Popen) and again.returncode == 0 and stdout.startswith("tlc ")
