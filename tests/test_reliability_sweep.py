"""Two trainers never share a run directory: a second ``tlc train`` of a run in progress stops at once,
and a sweep worker that stalls past the grace period (SIGSTOP) keeps its run: the worker that
finds its trial stale sees the run's lock held by the stalled worker's trainer and leaves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from conftest import REPO, run_tlc
from reliability_figures import record
from tlc.io import read_jsonl
from tlc.io import is_complete

FAST_HEARTBEATS = {"TLC_HEARTBEAT_S": "1", "TLC_GRACE_S": "3", "TLC_POLL_S": "1", "OMP_NUM_THREADS": "1"}


def _wait_for_metrics(run_dir: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not read_jsonl(run_dir / "metrics.jsonl"):
        assert proc.poll() is None and time.time() < deadline, f"no evaluation logged (exit {proc.poll()})"
        time.sleep(0.05)


def test_a_second_trainer_of_a_run_in_progress_stops_at_once(tmp_path, small_corpus):
    out = tmp_path / "w16-d1-s0"
    out.mkdir()
    # a stand-in for a trainer in progress: holds the run's lock the way train_run does, then waits
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tlc.train.guard import lock_run_dir; "
                               f"lock_run_dir({str(out)!r}); print('locked', flush=True); time.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_tlc("train", "--width", "16", "--depth", "1", "--heads", "2", "--context", "32", "--vocab-size",
                         "300", "--tokens", "2048", "--micro-batch", "8", "--precision", "fp32", "--data", small_corpus,
                         "--out", out, "--no-progress")
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr[-2000:]
    assert f"is being trained by another process (pid {holder.pid})" in second.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # it wrote nothing


def test_a_stalled_worker_keeps_its_run_and_the_other_worker_leaves_it(tmp_path, small_corpus):
    doc = {"name": "stall", "model": {"context": 32, "vocab_size": 300},
           "shapes": [{"width": 16, "depth": 1, "heads": 2}], "seeds": [0],
           "train": {"tokens": 1200 * 8 * 32, "micro_batch": 8, "evals": 3, "precision": "fp32"},
           "data": {"source": str(small_corpus), "max_epochs": 100}, "launch": {"retries": 0}}
    (tmp_path / "stall.yaml").write_text(yaml.safe_dump(doc))
    runs, run_dir = tmp_path / "runs", tmp_path / "runs" / "stall" / "w16-d1-s0"
    cmd = [sys.executable, "-m", "tlc", "sweep", str(tmp_path / "stall.yaml"), "--runs-dir", str(runs)]
    env = {**os.environ, **FAST_HEARTBEATS}
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]
    stalled = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    other = trainer = None
    try:
        _wait_for_metrics(run_dir, stalled)
        # the worker's heartbeats stop; its trainer, which holds the run's lock, is paused with it (stopped or
        # running, the lock is held: pausing it spares the test a run long enough to outlast the other worker)
        trainer = int((run_dir / ".lock").read_text())
        for pid in (stalled.pid, trainer):
            os.kill(pid, signal.SIGSTOP)
        assert not is_complete(run_dir), "the run finished before the stall mattered; make it longer"
        other = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs[1], stderr=subprocess.STDOUT)
        assert other.wait(timeout=300) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    finally:
        if trainer is not None:
            os.kill(trainer, signal.SIGCONT)
        stalled.send_signal(signal.SIGCONT)
        if other is not None and other.poll() is None:
            other.kill()
    assert stalled.wait(timeout=600) == 0, (tmp_path / "worker0.log").read_text()[-3000:]
    assert "elsewhere" in (tmp_path / "worker1.log").read_text()

    storage = f"sqlite:///{runs / 'stall' / 'study.db'}"
    trials = optuna.load_study(study_name="stall", storage=storage).get_trials()
    # a WAITING retry trial carries a copy of the failed trial's attributes; it never ran
    started = [t for t in trials if "started" in t.user_attrs and t.state.name != "WAITING"]
    assert len(started) == 1  # trained by the stalled worker's trainer only
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert is_complete(run_dir) and steps == json.loads((run_dir / "config.json").read_text())["eval_steps"]
    record("stalled_worker", workers=2, runs=1, stalls=1, runs_lost=0, runs_duplicated=len(started) - 1)
