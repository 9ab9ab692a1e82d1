"""Shared fixtures: a small real-text corpus, an isolated cache, and a helper to run the CLI."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One thread for torch in the pytest processes and in every command the tests start (trainers, compress, demo),
# unless the caller set a number. The tests' models are tiny: a second thread only adds synchronisation. A
# w32-d2 run of 64 steps took 6 s of CPU with one thread and 16-20 s with two on a shared 2-core machine, with the
# same losses (BENCHMARKS.md, "Tests"); and with two xdist workers each running torch on both cores, four files
# of in-process work took 151-158 s instead of 134 s (EPYC, 2026-12-07). Set before anything here imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# The slowest test files, slowest first (seconds on a 2-core EPYC under `make test`, 2026-12-07, warm): they are
# collected first so that `make test`'s workers (pytest-xdist, one file at a time, --no-loadscope-reorder: by default
# xdist reorders files by their number of tests) start them at once rather than end on them
SLOWEST_FILES = ("test_gpu_check.py", "test_fit_cli.py", "test_plan_weight_only.py", "test_demo.py",  # ~90, 71, 61, 50
                 "test_sweep.py", "test_train.py", "test_compression_tokens.py", "test_plan_cli.py",  # 42, 42, 40, 39
                 "test_export.py", "test_validate.py", "test_compress.py", "test_reliability.py",  # 38, 36, 31, 30
                 "test_forkserver.py", "test_prune_timing_plan.py", "test_design_check.py", "test_report.py",  # 29..24
                 "test_postgres.py", "test_reliability_sweep.py", "test_plan_budgets.py")  # 24, 22, 21


def pytest_collection_modifyitems(config, items):
    """The slowest files first; tests marked ``gpu`` skip where torch sees no CUDA device (``pytest -m gpu``
    selects them on a GPU machine)."""
    import torch

    if os.environ["OMP_NUM_THREADS"].isdigit():  # in case a plugin imported torch before this file
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def fits_made_once():
    """Each distinct fit once per pytest worker: a fit is a deterministic function of its inputs, and many tests fit
    the same synthetic sweeps (scaling.fitting.reuse_fits, which `tlc fit` uses within one sweep's fit). A test
    that counts or times optimiser runs turns it off for itself (monkeypatch ``scaling.fitting._reused``)."""
    from scaling.fitting import reuse_fits

    with reuse_fits():
        yield


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tokenizers and token streams go to a per-session cache, never the user's."""
    cache = tmp_path_factory.mktemp("tlc-cache")
    old = os.environ.get("TLC_CACHE")
    os.environ["TLC_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("TLC_CACHE", None)
    else:
        os.environ["TLC_CACHE"] = old


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """About 400 KB of real Python source copied from the standard library into a folder."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    names = ["argparse.py", "csv.py", "textwrap.py", "string.py", "heapq.py", "bisect.py", "fractions.py",
             "shlex.py", "statistics.py", "json/encoder.py", "json/decoder.py", "json/__init__.py", "calendar.py",
             "difflib.py", "pprint.py", "random.py", "tempfile.py", "glob.py", "fnmatch.py", "queue.py"]
    for name in names:
        target = out / name.replace("/", "_")
        shutil.copyfile(root / name, target)
    return out


TINY_SHAPE = ["--width", "32", "--depth", "2", "--heads", "2", "--context", "32", "--vocab-size", "300"]


def run_tlc(*args: str, env: dict | None = None, timeout: int = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m tlc ARGS`` in a process of its own, as a user would, and capture its output.

    The process is forked from a server that has the imports done (tlc.forkserver, as ``tlc sweep``
    starts its trainers), so a test pays for the command, not for importing torch again.
    """
    argv = list(map(str, args))
    proc, stdout, stderr = start_tlc(argv, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tlc {' '.join(argv)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(["tlc", *argv], proc.returncode, stdout, stderr)


def tlc_in_process(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """``tlc ARGS`` run by this process, its output and exit status captured like run_tlc's (argparse's exits
    included). Cheaper than a process of its own, and for commands that start trainings (``tlc validate``) they are
    forked from this process's fork server, which a test worker already has, where a command in a process of its
    own starts a server first (5 CPU-seconds of imports)."""
    import contextlib
    import io

    from tlc.cli import main

    argv = list(map(str, args))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # --help, or a usage error
            code = stop.code
    if check and code != 0:
        raise AssertionError(f"tlc {' '.join(argv)} failed ({code}):\n{err.getvalue()[-3000:]}")
    return subprocess.CompletedProcess(["tlc", *argv], code, out.getvalue(), err.getvalue())


def start_tlc(argv: list[str], env: dict | None = None, cwd: Path = REPO, timeout: float = 300):
    """``tlc ARGV`` through tlc.forkserver.popen, run to its end: (the process, its stdout, its stderr), decoded as
    subprocess.run(text=True) decodes them (universal newlines). Killed, and TimeoutExpired, after ``timeout``."""
    from tlc import forkserver

    reads, writes = zip(os.pipe(), os.pipe())
    try:
        proc = forkserver.popen(argv, env=env, cwd=str(cwd), stdout=writes[0], stderr=writes[1])
    finally:
        for fd in writes:
            os.close(fd)
    output = {fd: bytearray() for fd in reads}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for fd in reads:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(["tlc", *argv], timeout)
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if chunk:
                    output[key.fd] += chunk
                else:
                    selector.unregister(key.fd)
                    os.close(key.fd)
    proc.wait()
    stdout, stderr = (bytes(output[fd]).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
                      for fd in reads)
    return proc, stdout, stderr


def process_gone(pid: int, within_s: float) -> bool:
    """Whether process ``pid`` ends within ``within_s`` seconds (a zombie waiting to be reaped counts as ended)."""
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True  # reaped
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def compressed_run(tmp_path_factory, small_corpus) -> Path:
    """One tiny GPT-2 run, trained and compressed (magnitude and structured at 50%, each also int8).

    Shared by the export, generate and TensorBoard tests: training and compressing are the slow part.
    """
    run = tmp_path_factory.mktemp("exported") / "w32-d2-s0"
    run_tlc("train", *TINY_SHAPE, "--tokens", "16384", "--micro-batch", "8", "--evals", "3", "--precision", "fp32",
            "--eval-tokens", "2048", "--data", small_corpus, "--out", run, "--no-progress", check=True)
    run_tlc("compress", run, "--methods", "magnitude,structured", "--sparsity", "0.5", "--latency-repeats", "1",
            check=True)
    return run


def sigkill_at_checkpoint(proc: subprocess.Popen, latest: Path, min_step: int = 0, timeout: float = 600) -> int:
    """SIGKILL a training process once ``latest`` (its tlc_latest.json) records a step >= ``min_step``; return that
    step. The test fails if the process ends first: the run must be long enough to be caught."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= min_step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(latest.read_text())["step"]
