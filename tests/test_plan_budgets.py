"""What a plan costs besides FLOPs: repeated data, recovery fine-tunes, wall-clock budgets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from plan_fixtures import SECONDS_PER_FLOP, UNIQUE_TOKENS, write_trainable_sweep
from tlc.errors import UserError
from tlc.plan import command as tlc_plan
from tlc.plan.training_cost import DataLimit
from tlc.units import parse_budget


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, small_corpus) -> Path:
    return write_trainable_sweep(tmp_path_factory.mktemp("budgets") / "runs", small_corpus)


@pytest.fixture
def runs(sweep, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(sweep, copy)
    return copy


def plan(argv: list, capsys) -> dict:
    assert tlc_plan.main([*map(str, argv), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("text, value", [("1e17", (1e17, None)), ("6h", (None, 21600.0)), ("45min", (None, 2700.0)),
                                         ("90s", (None, 90.0)), ("1.5d", (None, 129600.0))])
def test_budgets_are_flops_or_durations(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["6 weeks", "-1h", "0s", "abc", "1e17 FLOPs"])
def test_bad_budgets_name_the_flag(text):
    with pytest.raises(UserError, match="^--budget: "):
        parse_budget(text)


def test_effective_data_follows_muennighoff():
    limit = DataLimit(unique_tokens=1e6, max_epochs=4)
    assert limit.effective_tokens(5e5) == 5e5 and limit.effective_tokens(1e6) == 1e6
    four = float(limit.effective_tokens(4e6))
    assert four == pytest.approx(1e6 + 1e6 * 15.4 * (1 - math.exp(-3 / 15.4)))
    assert 3.6e6 < four < 4e6  # four epochs are worth nearly four epochs of fresh data (their figure 3)
    assert float(limit.effective_tokens(1e12)) == pytest.approx(1e6 * 16.4)  # the plateau U (1 + R*)


def test_plans_count_epochs_and_respect_max_epochs(runs, capsys):
    free = plan(["--runs", runs, "--budget", "3e13", "--max-epochs", "100"], capsys)
    rec = free["recommendation"]
    assert free["data"]["unique_tokens"] == UNIQUE_TOKENS and free["data"]["max_epochs"] == 100
    assert rec["epochs"] == pytest.approx(rec["tokens"] / UNIQUE_TOKENS)
    assert rec["epochs"] > 1 and rec["effective_tokens"] < rec["tokens"]
    capped = plan(["--runs", runs, "--budget", "3e13", "--max-epochs", "1"], capsys)
    assert capped["recommendation"]["epochs"] <= 1 + 1e-9
    assert capped["recommendation"]["non_embedding_params"] > rec["non_embedding_params"]  # data-bound: grow N


def test_a_duration_budget_uses_the_sweep_throughput(runs, capsys):
    result = plan(["--runs", runs, "--budget", "3s"], capsys)
    throughput = result["throughput"]
    assert throughput["b"] == pytest.approx(1.1) and throughput["loo_relative_error"] < 1e-6  # the fixture's law
    rec = result["recommendation"]
    assert rec["train_seconds"] == pytest.approx(3.0)
    fpt = rec["train_flops"] / rec["tokens"]
    assert rec["tokens"] == pytest.approx(3.0 / (fpt * SECONDS_PER_FLOP * (fpt / 1e5) ** 0.1), rel=1e-6)
    assert result["budget"]["train_flops"] is None and result["budget"]["train_seconds"] == 3.0


def test_recovery_fine_tunes_come_out_of_the_training_budget(runs, capsys):
    for run_dir in runs.iterdir():
        rows_path = run_dir / "compress.jsonl"
        if rows_path.is_file():
            rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
            for row in rows:
                row["recovery_steps"] = 40 if row["method"] == "magnitude" else 0
            rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = plan(["--runs", runs, "--budget", "5e9", "--max-bytes", "120000", "--no-int8"], capsys)
    rec, small = result["recommendation"], result["train_small"]
    assert rec["compression"]["method"] == "magnitude" and rec["recovery_tokens"] == 40 * 8 * 32
    assert rec["train_flops"] == pytest.approx(5e9, rel=1e-9)  # training plus the fine-tune spend the budget
    assert rec["tokens"] == pytest.approx(5e9 / (rec["train_flops"] / (rec["tokens"] + rec["recovery_tokens"]))
                                          - rec["recovery_tokens"])
    assert small["recovery_tokens"] == 0 and small["train_flops"] == pytest.approx(5e9, rel=1e-9)
    assert rec["recipe"]["compression"]["recovery_steps"] == 40


@pytest.mark.parametrize("argv, expected", [
    (["--max-epochs", "0"], "--max-epochs: must be a number > 0"),
    (["--budget", "6h", "--inference-tokens", "1e9"], "--inference-tokens: needs a --budget in FLOPs"),
])
def test_bad_budget_flags(runs, capsys, argv, expected):
    base = ["--runs", str(runs), "--budget", "5e9"]
    assert tlc_plan.main(base + argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_a_duration_on_a_sweep_without_timing_is_refused(tmp_path, small_corpus, capsys):
    runs = write_trainable_sweep(tmp_path / "untimed", small_corpus, timing=False)
    assert tlc_plan.main(["--runs", str(runs), "--budget", "6h"]) == 2
    err = capsys.readouterr().err
    assert "--budget: a duration needs a throughput model" in err and err.count("\n") == 1
    assert tlc_plan.main(["--law", "chinchilla", "--budget", "6h"]) == 2
    assert "--budget: a duration needs a throughput model" in capsys.readouterr().err


def test_the_lr_rule_is_fitted_to_the_sweep_and_stated():
    from tlc.plan.recipe import fit_lr_rule

    rule = fit_lr_rule([32, 64, 96, 128, 192], [4.2e-3, 3.0e-3, 2.45e-3, 2.1e-3, 1.7e-3])  # sweeps/tiny.yaml
    assert rule.kind == "power_of_width" and rule.p == pytest.approx(-0.5, abs=0.02)
    assert rule.lr(256) == pytest.approx(4.2e-3 * (32 / 256) ** 0.5, rel=0.03)
    constant = fit_lr_rule([32, 64], [3e-3, 3e-3])
    assert constant.kind == "constant" and constant.lr(4096) == 3e-3


def test_a_plan_from_a_cosine_sweep_trains_one_cosine_run(runs, capsys):
    point = plan(["--runs", runs, "--budget", "5e9"], capsys)["recommendation"]
    recipe = point["recipe"]
    assert recipe["train"].get("schedule", "cosine") == "cosine" and not recipe["train"].get("cooldowns")
    assert recipe["train"]["tokens"] == recipe["tokens"] == int(point["tokens"])


def test_a_plan_from_a_wsd_sweep_trains_one_branch_ending_at_its_tokens(runs, capsys):
    """The law's points are branch ends, so the planned run is a trunk whose one branch ends at D."""
    for run_dir in runs.iterdir():
        config_path = run_dir / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            config["train"].update(schedule="wsd", cooldowns=[0.25, 0.5, 1.0], cooldown_frac=0.25)
            config_path.write_text(json.dumps(config))
    point = plan(["--runs", runs, "--budget", "5e9"], capsys)["recommendation"]
    recipe = point["recipe"]
    assert recipe["train"]["schedule"] == "wsd" and recipe["train"]["cooldowns"] == [1.0]
    assert recipe["train"]["tokens"] == round(point["tokens"] / 1.25) and recipe["tokens"] == int(point["tokens"])
    assert recipe["lr_rule"] == "power_of_width" and recipe["train"]["lr"] == pytest.approx(
        4.2e-3 * (32 / recipe["shape"]["width"]) ** 0.5)
    from tlc.plan.planfile import run_config

    cfg = run_config(recipe)
    assert cfg.train.schedule == "wsd" and cfg.train.cooldowns == (1.0,) and cfg.train.cooldown_frac == 0.25
    assert cfg.train.tokens == recipe["train"]["tokens"]


def test_the_warmup_follows_the_rule_the_sweep_states():
    from tlc.plan.recipe import warmup_rule

    same_share = warmup_rule([(0.05, 1e6), (0.05, 4e6)])
    assert same_share.kind == "fraction" and same_share.frac(10**7) == 0.05
    same_tokens = warmup_rule([(0.05, 1_048_576), (0.0125, 4_194_304), (0.00625, 8_388_608)])  # sweeps/tiny.yaml
    assert same_tokens.kind == "tokens" and same_tokens.value == pytest.approx(52428.8)
    assert same_tokens.frac(5_242_880) == pytest.approx(0.01) and same_tokens.frac(60_000) == 0.5
    neither = warmup_rule([(0.05, 1e6), (0.02, 4e6)])
    assert neither.kind == "reference_run" and neither.frac(10**7) == 0.05


def test_a_plan_warms_up_over_the_tokens_every_run_warmed_up_over(runs, capsys):
    """Runs that set their own warmup_frac to warm up over one number of tokens: the planned run does too."""
    warmup = 2000.0
    for run_dir in runs.iterdir():
        config_path = run_dir / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            config["train"]["warmup_frac"] = warmup / config["train"]["tokens"]
            config_path.write_text(json.dumps(config))
    recipe = plan(["--runs", runs, "--budget", "5e9"], capsys)["recommendation"]["recipe"]
    assert recipe["warmup_rule"] == "tokens"
    assert recipe["train"]["warmup_frac"] * recipe["train"]["tokens"] == pytest.approx(warmup)
    from tlc.plan.planfile import run_config

    assert run_config(recipe).train.warmup_frac == recipe["train"]["warmup_frac"]


def test_the_measured_tokens_span_every_finished_point(runs):
    """A cooldown branch's end is a measured D: a plan at a branch's tokens is not an extrapolation."""
    from tlc.plan.law import load_plan_law

    fit = json.loads((runs / "fit.json").read_text())
    finished = [d for r in fit["runs"] for d in r["finished_tokens"]]
    assert len(finished) == sum(r["finished_points"] for r in fit["runs"]) > len(fit["runs"])
    assert load_plan_law(runs, None).ranges.D == (min(finished), max(r["final_tokens"] for r in fit["runs"]))
