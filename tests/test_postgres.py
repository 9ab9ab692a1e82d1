"""Three workers share an 8-run sweep through a real PostgreSQL study; one is SIGKILLed mid-run.

The killed worker's trainer dies with it, its trial goes stale (heartbeats shrunk through
TLC_HEARTBEAT_S / TLC_GRACE_S), and a surviving worker takes the run over and resumes it from
its last checkpoint. Every run must end trained once, with exactly the metric lines its
config.json schedules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import REPO, process_gone
from pg_server import postgres_url
from reliability_figures import record
from tlc.io import read_jsonl
from tlc.train.sweep import _with_installed_driver
from tlc.io import is_complete

FAST_HEARTBEATS = {"TLC_HEARTBEAT_S": "1", "TLC_GRACE_S": "5", "TLC_POLL_S": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def pg_url():
    yield from postgres_url()


def _eight_run_sweep(path: Path, corpus: Path) -> Path:
    doc = {
        "name": "pg8",
        "model": {"context": 32, "vocab_size": 300},
        "shapes": [{"width": w, "depth": d, "heads": 2} for w in (16, 32) for d in (1, 2)],
        "seeds": [0, 1],
        "train": {"tokens": 60 * 8 * 32, "micro_batch": 8, "evals": 4, "precision": "fp32"},
        "data": {"source": str(corpus)},
        "launch": {"retries": 0},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (from /proc): its children, theirs, and so on."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _kill_mid_run(worker: subprocess.Popen, sweep_dir: Path, timeout_s: float = 300) -> tuple[str, int]:
    """SIGKILL ``worker`` once its trainer has logged an evaluation but not finished; return (run id, trainer pid).

    The trainer is the process below the worker that holds the run's lock (its pid is in ``<run>/.lock``).
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline and worker.poll() is None:
        below = _descendants(worker.pid)
        for lock in sweep_dir.glob("*/.lock"):
            run_dir = lock.parent
            try:
                holder = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if holder in below and read_jsonl(run_dir / "metrics.jsonl") and not is_complete(run_dir):
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                return run_dir.name, holder
        time.sleep(0.05)
    if worker.poll() is not None:
        raise AssertionError(f"worker 0 exited ({worker.returncode}) before it could be killed: "
                             f"{worker.stderr.read()[-3000:]}")
    raise AssertionError("worker 0 never had a run in progress to kill; make the runs longer")


def test_three_workers_on_postgres_survive_a_killed_worker(tmp_path, small_corpus, pg_url):
    sweep = _eight_run_sweep(tmp_path / "pg8.yaml", small_corpus)
    runs = tmp_path / "runs"
    sweep_dir = runs / "pg8"
    cmd = [sys.executable, "-m", "tlc", "sweep", str(sweep), "--runs-dir", str(runs), "--storage", pg_url]
    env = {**os.environ, **FAST_HEARTBEATS}
    workers = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    try:
        killed_run, orphan = _kill_mid_run(workers[0], sweep_dir)
        assert process_gone(orphan, within_s=10), "the killed worker's trainer outlived it"
        results = [w.communicate(timeout=600) for w in workers[1:]]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers[1:]), [r[1][-3000:] for r in results]

    study = optuna.load_study(study_name="pg8", storage=_with_installed_driver(pg_url))
    trials = [t for t in study.get_trials() if "started" in t.user_attrs]
    ids = sorted({t.params["run_id"] for t in study.get_trials()})
    assert len(ids) == 8
    lost, duplicated = [], []
    for run_id in ids:
        run_dir = sweep_dir / run_id
        expected = json.loads((run_dir / "config.json").read_text())["eval_steps"]
        steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
        completes = [t for t in trials if t.params["run_id"] == run_id and t.state.name == "COMPLETE"]
        starts = [t for t in trials if t.params["run_id"] == run_id]
        if not is_complete(run_dir) or not completes or set(expected) - set(steps):
            lost.append(run_id)
        if len(completes) > 1 or len(steps) > len(set(steps)) or len(starts) > 1 + (run_id == killed_run):
            duplicated.append(run_id)
        assert steps == expected, (run_id, steps, expected)  # no duplicated or missing metric lines
    takeover = [t for t in trials if t.params["run_id"] == killed_run]
    assert [t.state.name for t in takeover] == ["FAIL", "COMPLETE"], takeover
    assert takeover[0].user_attrs["worker"] != takeover[1].user_attrs["worker"]  # another worker took it over
    assert len({t.user_attrs["worker"] for t in trials}) == 3  # the work was shared
    record("postgres_three_workers", workers=3, runs=len(ids), kills=1, runs_lost=len(lost),
           runs_duplicated=len(duplicated), orphan_trainers=0)
    assert not lost and not duplicated, (lost, duplicated)
