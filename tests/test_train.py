"""A training run: its files, exact gradient accumulation, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY_SHAPE, run_tlc, sigkill_at_checkpoint
from tlc.io import list_runs, read_jsonl
from tlc.train.schedule import cooldown_lr, eval_schedule, get_lr, plan_branches, trunk_lr

METRIC_FIELDS = {"step", "tokens", "flops", "wall_s", "train_loss", "val_loss", "val_bpb", "val_acc", "val_loss_repeat",
                 "val_loss_novel", "val_repeat_share", "lr", "final"}


def test_repeated_targets_marks_tokens_seen_earlier_in_their_window():
    import torch

    from tlc.train.evaluation import repeated_targets

    window = torch.tensor([[5, 7, 5, 9, 7, 7], [1, 2, 3, 4, 0, 2]])
    # targets are tokens 1..5; a target counts when it occurred among the tokens before it
    assert repeated_targets(window).tolist() == [[False, True, False, True, True], [False, False, False, False, True]]
    windows = torch.randint(0, 9, (4, 40), generator=torch.Generator().manual_seed(0))
    brute = [[bool((w[: t + 1] == w[t + 1]).any()) for t in range(len(w) - 1)] for w in windows]
    assert repeated_targets(windows).tolist() == brute


def test_evaluation_batches_up_to_4096_tokens_and_scores_the_same_as_at_the_micro_batch():
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tlc.train.data import TokenData, val_offsets
    from tlc.train.evaluation import eval_batch_size, evaluate

    assert eval_batch_size(8, 32) == 128 and eval_batch_size(4, 128) == 32
    assert eval_batch_size(64, 128) == 64 and eval_batch_size(2, 8192) == 2  # never below the micro-batch
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300, n_positions=32))
    stream = np.random.default_rng(0).integers(0, 300, 20_000).astype(np.uint16)
    tokens = TokenData(train=stream, val=stream, val_bytes_per_token=3.0, eot_id=0, tokenizer=None)
    offsets = val_offsets(len(stream), 32, 8192)
    at_micro_batch = evaluate(model, tokens, offsets, 32, 8, torch.device("cpu"))
    batched = evaluate(model, tokens, offsets, 32, eval_batch_size(8, 32), torch.device("cpu"))
    assert batched == pytest.approx(at_micro_batch, rel=1e-6)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [get_lr(s, 100, 1e-3, 0.1, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_wsd_holds_the_peak_on_the_trunk_and_branches_decay_towards_zero():
    from tlc.config import TrainSettings

    trunk = [trunk_lr(s, 100, 1e-3, 0.1) for s in range(100)]
    assert trunk[0] == pytest.approx(1e-4) and trunk[9:] == [1e-3] * 91
    branch = [cooldown_lr(s, 20, 1e-3) for s in range(20)]
    assert all(a > b for a, b in zip(branch, branch[1:])) and 0 < branch[-1] < 0.03e-3 and branch[0] < 1e-3
    train = TrainSettings(tokens=1, schedule="wsd", cooldowns=(0.125, 0.25, 0.5, 1.0), cooldown_frac=0.2)
    branches = plan_branches(train, 400)
    assert [(b.fork_step, b.steps, b.end_step) for b in branches] == [(50, 10, 60), (100, 20, 120), (200, 40, 240),
                                                                      (400, 80, 480)]
    assert eval_schedule(400, 5, tuple(b.fork_step for b in branches)) == (1, 4, 20, 50, 89, 100, 200, 400)


def test_evaluations_are_log_spaced_and_end_at_the_last_step():
    steps = eval_schedule(1000, 10)
    assert steps[0] == 1 and steps[-1] == 1000
    ratios = [b / a for a, b in zip(steps[2:], steps[3:])]
    assert max(ratios) / min(ratios) < 1.3  # even in log space
    assert eval_schedule(5, 12) == (1, 2, 3, 4, 5)


def test_run_writes_the_run_directory_contract(tmp_path, small_corpus):
    out = tmp_path / "run"
    args = ["train", *TINY_SHAPE, "--tokens", "16384", "--micro-batch", "8", "--evals", "5",
            "--precision", "bf16", "--data", small_corpus, "--out", out, "--no-progress"]
    run_tlc(*args, check=True)
    config = json.loads((out / "config.json").read_text())
    assert config["run_id"] == "w32-d2-s0" and config["total_steps"] == 64
    assert config["data"]["fingerprint"] and config["versions"]["deepspeed"] and config["versions"]["torch"]
    assert config["params"]["non_embedding"] > 0 and config["flops_per_token"] > 0
    data = json.loads((out / "data.json").read_text())
    assert data["fingerprint"] == config["data"]["fingerprint"] and "per document" in data["split"]["rule"]
    assert data["train"]["tokens"] == config["data"]["train_tokens_available"]
    assert data["val"]["tokens"] == config["data"]["val_tokens_available"] and data["val"]["documents"] >= 1
    assert sorted(f["name"] for f in data["files"]) == sorted(p.name for p in small_corpus.iterdir())
    assert sum(f["val_documents"] for f in data["files"]) == data["val"]["documents"]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(eval_schedule(64, 5))
    assert all(set(r) == METRIC_FIELDS for r in rows)
    assert [r["final"] for r in rows] == [False] * (len(rows) - 1) + [True]  # a cosine run: one finished point
    assert rows[-1]["tokens"] == 64 * 8 * 32 and rows[-1]["flops"] == pytest.approx(rows[-1]["tokens"] * config["flops_per_token"])
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    assert rows[-1]["val_bpb"] == pytest.approx(rows[-1]["val_loss"] / 0.6931471805599453 / config["data"]["val_bytes_per_token"])
    assert 0 < rows[-1]["val_acc"] < 1
    last = rows[-1]  # the loss split by target: seen earlier in the window, or not
    assert 0 < last["val_repeat_share"] < 1
    assert last["val_loss"] == pytest.approx(last["val_repeat_share"] * last["val_loss_repeat"]
                                             + (1 - last["val_repeat_share"]) * last["val_loss_novel"])
    assert (out / "checkpoint" / "tlc_latest.json").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert (out / "model" / "model.safetensors").exists()
    assert model.config.n_embd == 32 and tokenizer("def f():")["input_ids"]
    # a finished run is left alone
    again = run_tlc(*args, check=True)
    assert "val_loss" in again.stdout and len(read_jsonl(out / "metrics.jsonl")) == len(rows)


def _trajectory(out):
    rows = read_jsonl(out / "metrics.jsonl")
    return [r["step"] for r in rows], [r["train_loss"] for r in rows], [r["val_loss"] for r in rows]


def test_gradient_accumulation_and_data_parallel_are_exact(tmp_path, small_corpus):
    common = [*TINY_SHAPE, "--tokens", str(6 * 8 * 32), "--evals", "6", "--precision", "fp32",
              "--data", small_corpus, "--no-progress", "--lr", "3e-3"]
    run_tlc("train", *common, "--micro-batch", "8", "--grad-accum", "1", "--out", tmp_path / "mb8", check=True)
    run_tlc("train", *common, "--micro-batch", "4", "--grad-accum", "2", "--out", tmp_path / "mb4ga2", check=True)
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tlc", "train", *map(str, common), "--micro-batch", "4", "--out", str(tmp_path / "dp2")],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    assert json.loads((tmp_path / "dp2" / "config.json").read_text())["world_size"] == 2
    steps, train, val = _trajectory(tmp_path / "mb8")
    assert steps == [1, 2, 3, 4, 5, 6]
    assert train[-1] < train[0]
    for other in ("mb4ga2", "dp2"):
        o_steps, o_train, o_val = _trajectory(tmp_path / other)
        assert o_steps == steps
        assert max(abs(a - b) for a, b in zip(train, o_train)) < 1e-4, (other, train, o_train)
        assert max(abs(a - b) for a, b in zip(val, o_val)) < 1e-4, (other, val, o_val)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, small_corpus):
    common = ["train", "--width", "64", "--depth", "2", "--heads", "2", "--context", "64", "--vocab-size", "300",
              "--tokens", str(160 * 8 * 64), "--micro-batch", "8", "--evals", "12", "--precision", "fp32",
              "--data", small_corpus, "--no-progress"]
    run_tlc(*common, "--out", tmp_path / "whole", check=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tlc", *map(str, common), "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = sigkill_at_checkpoint(proc, killed / "checkpoint" / "tlc_latest.json", min_step=20, timeout=240)
    assert killed_at < 160 and not (killed / "model").exists()

    run_tlc(*common, "--out", killed, check=True)
    whole, resumed = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole]  # no duplicated or missing lines
    assert abs(resumed[-1]["val_loss"] - whole[-1]["val_loss"]) < 1e-5
    for a, b in zip(whole, resumed):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5


def test_a_child_of_a_lone_process_gets_its_own_port(tmp_path, small_corpus, monkeypatch):
    # as when an in-process stage (compress's fine-tune, a test) started torch.distributed first
    from tlc.train.engine import LONE_ENV

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    import socket

    with socket.socket() as held:  # the parent's store still holds its port
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(port))
        monkeypatch.setenv(LONE_ENV, f"1:{port}")
        # the default precision (auto) is chosen by this machine, said on stderr, and recorded
        proc = run_tlc("train", *TINY_SHAPE, "--tokens", "512", "--micro-batch", "8", "--evals", "1",
                       "--data", small_corpus, "--out", tmp_path / "run", "--no-progress", check=True)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"]
    assert recorded in ("fp32", "bf16")
    assert f"w32-d2-s0: precision {recorded} (auto: " in proc.stderr


WSD_RUN = ["train", "--width", "32", "--depth", "2", "--heads", "2", "--context", "32", "--vocab-size", "300",
           "--tokens", str(48 * 8 * 32), "--micro-batch", "8", "--evals", "3", "--precision", "fp32",
           "--schedule", "wsd", "--cooldowns", "0.25,0.5,1.0", "--no-progress"]


def test_wsd_branches_are_finished_points_and_a_kill_inside_one_resumes_inside_it(tmp_path, small_corpus):
    common = [*WSD_RUN, "--data", small_corpus]
    whole = tmp_path / "sweep" / "whole"
    run_tlc(*common, "--out", whole, check=True)
    config = json.loads((whole / "config.json").read_text())
    tps, fpt = config["tokens_per_step"], config["flops_per_token"]
    assert [(b["fork_step"], b["steps"]) for b in config["branches"]] == [(12, 2), (24, 5), (48, 10)]
    assert config["train_tokens"] == 58 * tps and config["spent_flops"] == (48 + 2 + 5 + 10) * tps * fpt
    rows = read_jsonl(whole / "metrics.jsonl")
    ends = [r for r in rows if r["final"]]
    assert [(r["fork_step"], r["step"]) for r in ends] == [(12, 14), (24, 29), (48, 58)]
    for r in ends:
        assert r["tokens"] == r["step"] * tps and r["flops"] == pytest.approx(r["tokens"] * fpt)
        assert (whole / "branches" / str(r["tokens"]) / "model" / "model.safetensors").exists()
        assert not (whole / "branches" / str(r["tokens"]) / "checkpoint").exists()  # dropped once the branch is saved
    trunk = [r for r in rows if not r["final"]]
    assert all("fork_step" not in r and r["lr"] == pytest.approx(3e-3) for r in trunk if r["step"] >= 12)
    by_fork = {r["fork_step"]: r for r in ends}
    for fork in (12, 24):  # each branch ends below the trunk it forked from: the decay pays
        assert by_fork[fork]["val_loss"] < next(r for r in trunk if r["step"] == fork)["val_loss"]
    final_model = (whole / "model" / "model.safetensors").read_bytes()
    assert final_model == (whole / "branches" / str(58 * tps) / "model" / "model.safetensors").read_bytes()
    assert list_runs(tmp_path / "sweep") == [whole]  # a branch is never taken for a run

    killed = tmp_path / "sweep" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tlc", *map(str, common), "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    inside = killed / "branches" / str(29 * tps) / "checkpoint" / "tlc_latest.json"  # the second branch's midpoint
    assert sigkill_at_checkpoint(proc, inside, timeout=400) == 26
    assert not (killed / "branches" / str(29 * tps) / "model").exists()

    run_tlc(*common, "--out", killed, check=True)
    resumed = read_jsonl(killed / "metrics.jsonl")
    assert [(r["step"], r.get("fork_step")) for r in resumed] == [(r["step"], r.get("fork_step")) for r in rows]
    for a, b in zip(rows, resumed):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5, (a, b)
    assert (killed / "model" / "model.safetensors").exists()
    assert list_runs(tmp_path / "sweep") == [killed, whole]
