"""Sweeps: two workers share a grid through one SQLite study; failures are recorded and the sweep goes on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from conftest import REPO, run_tlc
from tlc.io import read_jsonl
from tlc.io import is_complete


def _write_sweep(path, corpus, shapes, name="grid", context=32):
    doc = {
        "name": name,
        "model": {"context": context, "vocab_size": 300},
        "shapes": shapes,
        "seeds": [0],
        "train": {"tokens": 8 * 8 * context, "micro_batch": 8, "evals": 3, "precision": "fp32"},
        "data": {"source": str(corpus)},
        "launch": {"retries": 0},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


FOUR = [{"width": 16, "depth": 1, "heads": 2}, {"width": 32, "depth": 1, "heads": 2},
        {"width": 16, "depth": 2, "heads": 2}, {"width": 32, "depth": 2, "heads": 2}]


def _study(runs):
    return optuna.load_study(study_name="grid", storage=f"sqlite:///{runs / 'grid' / 'study.db'}")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="--workers 2 needs two CPU cores")
def test_two_workers_train_every_run_exactly_once(tmp_path, small_corpus):
    sweep = _write_sweep(tmp_path / "grid.yaml", small_corpus, FOUR)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "tlc", "sweep", str(sweep), "--runs-dir", str(runs)]
    # --workers 2: this worker starts a helper worker, which joins the study as any other worker would
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([*cmd, "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]

    started = {}
    for t in _study(runs).get_trials():
        if "started" in t.user_attrs:
            started.setdefault(t.params["run_id"], []).append(t.user_attrs["worker"])
    assert sorted(started) == ["w16-d1-s0", "w16-d2-s0", "w32-d1-s0", "w32-d2-s0"]
    assert all(len(w) == 1 for w in started.values()), started  # trained exactly once
    assert len({w[0] for w in started.values()}) == 2  # and the work was shared
    for run_id in started:
        rows = read_jsonl(runs / "grid" / run_id / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 3, 8]
        assert is_complete(runs / "grid" / run_id)
    assert result.stdout.count("trained") == 4 and "val loss" in result.stdout  # the helper's runs too
    assert (runs / "grid" / "worker-1.log").exists()

    # a finished sweep run again trains nothing, and starts no helper for it
    helper_log = (runs / "grid" / "worker-1.log").read_bytes()
    again = subprocess.run([*cmd, "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.count("skipped") == 4
    assert (runs / "grid" / "worker-1.log").read_bytes() == helper_log


def test_workers_must_be_positive_and_at_most_one_per_core(tmp_path, small_corpus, capsys):
    from tlc import cli

    sweep = _write_sweep(tmp_path / "grid.yaml", small_corpus, FOUR)
    assert cli.main(["sweep", str(sweep), "--runs-dir", str(tmp_path / "runs"), "--workers", "0"]) == 2
    assert "--workers: must be at least 1, got 0" in capsys.readouterr().err
    # a worker per core at most: each trains on a share of them (a fuzzed --workers 1082 started 1081 processes)
    too_many = str((os.cpu_count() or 1) + 1)
    assert cli.main(["sweep", str(sweep), "--runs-dir", str(tmp_path / "runs"), "--workers", too_many]) == 2
    assert f"--workers: at most {os.cpu_count()}, this machine's CPU count; got {too_many}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, small_corpus):
    # one run's directory holds a corrupt config.json, so that run fails inside its own process
    sweep = _write_sweep(tmp_path / "grid.yaml", small_corpus, FOUR[:2], name="grid")
    runs = tmp_path / "runs"
    blocker = runs / "grid" / "w16-d1-s0"
    blocker.mkdir(parents=True)
    (blocker / "config.json").write_text("{ not json")  # this run cannot start
    proc = run_tlc("sweep", sweep, "--runs-dir", runs, timeout=600)
    assert proc.returncode == 1
    assert "1 run(s) failed: w16-d1-s0" in proc.stderr
    assert is_complete(runs / "grid" / "w32-d1-s0")
    states = {t.params["run_id"]: t.state.name for t in _study(runs).get_trials() if "started" in t.user_attrs}
    assert states == {"w16-d1-s0": "FAIL", "w32-d1-s0": "COMPLETE"}
    assert "failed" in proc.stdout and "is unreadable" in proc.stdout
    # a pipe is no terminal: no bar redraws, one progress line per run at its end, no Optuna heartbeat warning
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "step/s" not in proc.stderr
    assert re.search(r"^w32-d1-s0: step 8/8 \(100%\), [\d,]+ tok/s, loss [\d.]+, val [\d.]+, done in \d+s$",
                     proc.stderr, re.M), proc.stderr[-2000:]
    assert "Heartbeat of storage" not in proc.stderr


def _sweep_cli(tmp_path, doc, runs):
    """`tlc sweep` on ``doc``, written to <tmp_path>/<name>.yaml, as a user runs it."""
    (tmp_path / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc))
    return run_tlc("sweep", tmp_path / f"{doc['name']}.yaml", "--runs-dir", runs, timeout=600)


def test_iso_flop_budgets_train_named_runs_and_leave_out_what_they_cannot_train(tmp_path, small_corpus):
    from tlc.config import ModelShape, budget_label
    from tlc.shapes import flops_per_token

    small, large = ModelShape(16, 1, 2, 16, 300), ModelShape(32, 2, 2, 16, 300)
    fits = 250 * 16 * flops_per_token(small)  # 250 steps of 16 tokens for the small shape, too few for the large
    huge = 2_000_000 * flops_per_token(large)  # two million tokens: more than the test corpus holds
    doc = {"name": "iso", "model": {"context": 16, "vocab_size": 300},
           "shapes": [{"width": 16, "depth": 1, "heads": 2}, {"width": 32, "depth": 2, "heads": 2}],
           "seeds": [0], "train": {"budgets": [fits, huge], "micro_batch": 1, "evals": 2, "precision": "fp32"},
           "data": {"source": str(small_corpus)}, "launch": {"retries": 0}}
    runs = tmp_path / "runs"
    proc = _sweep_cli(tmp_path, doc, runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = f"w16-d1-c{budget_label(fits)}-s0"
    assert is_complete(runs / "iso" / trained) and sorted(p.name for p in (runs / "iso").iterdir()
                                                           if p.is_dir()) == [trained]
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if "left out" in line}
    assert sorted(lines) == sorted([f"w32-d2-c{budget_label(fits)}-s0", f"w16-d1-c{budget_label(huge)}-s0",
                                    f"w32-d2-c{budget_label(huge)}-s0"])
    assert "train.budgets runs need at least 200" in lines[f"w32-d2-c{budget_label(fits)}-s0"]
    assert "more than the corpus's" in lines[f"w16-d1-c{budget_label(huge)}-s0"]

    doc["name"], doc["train"]["budgets"] = "none", [huge]  # no shape can use any budget: refused before training
    proc = _sweep_cli(tmp_path, doc, runs)
    assert proc.returncode == 2 and "train.budgets: no shape can use any budget" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (runs / "none").exists()


def test_a_run_that_would_see_the_corpus_twice_is_left_out_unless_data_max_epochs_allows_it(tmp_path, small_corpus):
    # the test corpus holds under a million training tokens at vocabulary 300: 4K tokens fit, 2.1M do not
    doc = {"name": "epochs", "model": {"context": 32, "vocab_size": 300},
           "shapes": [{"width": 16, "depth": 1, "heads": 2},
                      {"width": 32, "depth": 1, "heads": 2, "tokens": 8192 * 8 * 32}],
           "seeds": [0], "train": {"tokens": 16 * 8 * 32, "micro_batch": 8, "evals": 2, "precision": "fp32"},
           "data": {"source": str(small_corpus)}, "launch": {"retries": 0}}
    runs = tmp_path / "runs"
    proc = _sweep_cli(tmp_path, doc, runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert is_complete(runs / "epochs" / "w16-d1-s0") and not (runs / "epochs" / "w32-d1-s0").exists()
    line = next(line for line in proc.stdout.splitlines() if line.startswith("w32-d1-s0"))
    assert "left out" in line and "more than the corpus's" in line and "lower train.tokens" in line

    doc["name"], doc["shapes"] = "none", doc["shapes"][1:]  # no run fits: refused before training, naming the field
    proc = _sweep_cli(tmp_path, doc, runs)
    assert proc.returncode == 2 and "train.tokens: no run fits in the corpus" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (runs / "none").exists()

    doc["data"]["max_epochs"] = 0  # refused as a setting, before the corpus is read
    proc = _sweep_cli(tmp_path, doc, runs)
    assert proc.returncode == 2 and "data.max_epochs: must be a number > 0" in proc.stderr

    doc["data"] = {"source": str(tmp_path / "no-such-corpus")}  # a sweep file names its field, not tlc train's flag
    proc = _sweep_cli(tmp_path, doc, runs)
    assert proc.returncode == 2 and "error: data.source: no such file or folder" in proc.stderr


def test_a_sweep_folder_written_before_a_setting_existed_resumes_and_a_changed_sweep_is_refused(tmp_path):
    import pytest

    from tlc.config import parse_sweep
    from tlc.errors import UserError
    from tlc.train.sweep import prepare_sweep_dir

    doc = yaml.safe_load(_write_sweep(tmp_path / "grid.yaml", tmp_path, FOUR).read_text())
    sweep_dir = prepare_sweep_dir(parse_sweep(doc), tmp_path / "runs")
    written = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    del written["data"]["max_epochs"], written["train"]["cooldown_frac"]  # as tlc wrote it before these existed
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(written))
    prepare_sweep_dir(parse_sweep(doc), tmp_path / "runs")
    with pytest.raises(UserError, match="different 'seeds'"):
        prepare_sweep_dir(parse_sweep({**doc, "seeds": [0, 1]}), tmp_path / "runs")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_a_failed_heartbeat_is_logged_with_the_run_and_counted_in_the_summary(tmp_path, monkeypatch, capsys):
    import optuna

    from tlc.train import sweep as sweep_module

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=60)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()

    def unreachable(trial_id):
        raise ConnectionError("server closed the connection\nmore detail")

    monkeypatch.setattr(storage, "record_heartbeat", unreachable)  # the storage going away mid-run
    monkeypatch.setattr(sweep_module, "HEARTBEAT_S", 0.02)
    with sweep_module._Heartbeat(storage, "s", trial.number, "w32-d2-s0") as heartbeat:
        deadline = time.time() + 5
        while heartbeat.failures < 2 and time.time() < deadline:
            time.sleep(0.01)
    assert heartbeat.failures >= 2
    err = capsys.readouterr().err
    assert "w32-d2-s0: heartbeat not recorded (ConnectionError: server closed the connection)" in err
    outcomes = [sweep_module.RunOutcome("w32-d2-s0", "trained", heartbeat_failures=heartbeat.failures),
                sweep_module.RunOutcome("w64-d2-s0", "trained")]
    table = sweep_module.summary_table(tmp_path, outcomes)
    assert f"heartbeats not recorded: {heartbeat.failures} (w32-d2-s0 {heartbeat.failures})" in table
    assert "heartbeats" not in sweep_module.summary_table(tmp_path, outcomes[1:])
