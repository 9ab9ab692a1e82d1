"""Pruning at init and during training as the planner sees them (issue 17 point 5): runs trained sparse
are fitted as compression models of their own timing, planned with when identified, and carried out."""

from __future__ import annotations

import json

import pytest

from conftest import tlc_in_process
from plan_fixtures import INIT_RANDOM, SHAPES, write_trainable_sweep
from tlc.cli import main as tlc_main

BUDGET = "5e9"


@pytest.fixture(scope="module")
def timed(tmp_path_factory, small_corpus):
    """Every shape also trained sparse from init with a random mask, at 50% and 80%."""
    return write_trainable_sweep(tmp_path_factory.mktemp("timing") / "runs", small_corpus,
                                 sparse={shape: (0.5, 0.8) for shape in SHAPES})


def test_sparse_runs_are_points_of_their_timing_s_model_not_of_the_dense_law(timed):
    fit = json.loads((timed / "fit.json").read_text())
    assert fit["n_runs"] == len(SHAPES)  # the dense law sees the dense runs only
    model = fit["compression"]["pruning"]["init-random"]
    assert model["timing"] == "init" and model["status"] == "converged", model.get("identification")
    assert model["sparsities"] == [0.5, 0.8] and model["n_points"] == len(SHAPES) * 2 * 4
    assert fit["compression"]["pruning"]["magnitude"]["timing"] == "after"
    import scaling

    fitted = scaling.load_fit(fit)
    n, d = 1e5, 2e4
    dense, _, _ = fitted.predict_loss(n, d)
    sparse, _, _ = fitted.predict_loss(n, d, "init-random", 0.8)
    truth = INIT_RANDOM["c"] * (0.2 ** -INIT_RANDOM["gamma"] - 1) * (n / 1e6) ** -INIT_RANDOM["delta"]
    assert sparse - dense == pytest.approx(truth, rel=0.1)


def test_a_sparse_run_without_a_dense_twin_is_left_out_with_a_reason(timed, tmp_path):
    import shutil

    from tlc.fit.observations import fit_sweep

    runs = tmp_path / "runs"
    shutil.copytree(timed, runs)
    config = json.loads((runs / "w32-d1-s0-random50" / "config.json").read_text())
    config["seed"] = 7  # no dense run of seed 7
    (runs / "w32-d1-s0-random50" / "config.json").write_text(json.dumps(config))
    fit = fit_sweep(runs, bootstrap=0)
    assert any(line.startswith("w32-d1-s0-random50: trained sparse (init-random) with no dense run")
               for line in fit["skipped_runs"])


def test_a_timing_the_sweep_cannot_defend_is_never_planned(tmp_path, small_corpus, capsys):
    runs = write_trainable_sweep(tmp_path / "runs", small_corpus, sparse={(32, 1): (0.5,), (64, 2): (0.5,)})
    model = json.loads((runs / "fit.json").read_text())["compression"]["pruning"]["init-random"]
    assert model["status"] == "unidentified" and "gamma" in model["identification"]
    assert tlc_main(["plan", "--runs", str(runs), "--budget", BUDGET, "--max-bytes", "250000"]) == 0
    plan = json.loads((runs / "plan.json").read_text())
    assert "init-random" not in plan["search"]["categories"] and "init-random+int8" not in plan["search"]["categories"]
    assert any(w.startswith("init-random: not planned with, its model is unidentified") for w in plan["warnings"])
    capsys.readouterr()
    assert tlc_main(["plan", "--runs", str(runs), "--budget", BUDGET, "--methods", "init-random"]) == 2
    err = capsys.readouterr().err
    assert "error: --methods: init-random's model is unidentified" in err and err.count("\n") == 1


def test_a_plan_to_train_sparse_from_the_start_is_trained_sparse_and_stored_sparse(timed, capsys):
    assert tlc_main(["plan", "--runs", str(timed), "--budget", BUDGET, "--max-bytes", "250000",
                     "--methods", "init-random", "--no-int8"]) == 0
    assert "when to prune: train sparse from the start" in capsys.readouterr().out
    plan = json.loads((timed / "plan.json").read_text())
    point = plan["recommendation"]
    assert point["compression"]["method"] == "init-random" and point["compression"]["sparsity"] > 0
    assert point["compression"]["timing"] == "train sparse from the start" and point["recovery_tokens"] == 0
    recipe = point["recipe"]
    assert recipe["train"]["prune"] == {"method": "random", "sparsity": point["compression"]["sparsity"],
                                        "start": 0.0, "end": 0.0}
    assert recipe["compression"]["method"] == "magnitude-global" and recipe["compression"]["recovery_steps"] == 0
    tlc_in_process("validate", timed, "--points", "recommendation", "--seeds", "0", check=True)
    entry = json.loads((timed / "validation.json").read_text())["validations"][-1]["points"]["recommendation"]
    run_dir = timed / entry["run_dirs"][0]
    assert json.loads((run_dir / "config.json").read_text())["train"]["prune"]["method"] == "random"
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["sparsity"] == pytest.approx(recipe["train"]["prune"]["sparsity"], abs=0.01)
    # stored as trained: the masks' zeros are what global magnitude removes, so the loss does not move
    assert entry["measured"]["loss"] == pytest.approx(entry["measured"]["dense_loss"], abs=1e-3)
    assert entry["measured"]["bytes"] <= entry["predicted"]["bytes"] <= 250000


@pytest.mark.parametrize("method, prune", [("init-snip", ("snip", 0.0, 0.0)),
                                           ("during-magnitude", ("magnitude", 0.25, 0.75))])
def test_a_timing_s_recipe_trains_with_train_prune(timed, method, prune):
    from tlc.config import PruneSettings
    from tlc.plan.planfile import run_config
    from tlc.plan.recipe import read_sweep_recipe

    recipe = read_sweep_recipe(timed).point({"width": 64, "depth": 2, "heads": 2, "context": 32, "vocab_size": 300,
                                             "arch": "gpt2", "ffn_mult": 4}, 30000, method, 0.6, True)
    cfg = run_config(recipe)
    assert cfg.train.prune == PruneSettings(prune[0], 0.6, prune[1], prune[2])
    assert recipe["compression"] == {"method": "magnitude-global", "sparsity": 0.6, "block": None,
                                     "recovery_steps": 0, "int8": True}
    dense = read_sweep_recipe(timed).point(recipe["shape"], 30000, "magnitude", 0.6, False)
    assert dense["train"]["prune"] is None and run_config(dense).train.prune is None and dense["timing"] == "after"


def test_under_a_latency_budget_a_model_trained_sparse_is_priced_as_magnitude_pruning(timed):
    """Unstructured zeros run on dense kernels whatever made them: the latency of init-random is the
    measured magnitude group's, so a latency budget does not drop the timing."""
    assert tlc_main(["plan", "--runs", str(timed), "--budget", BUDGET, "--max-latency-ms", "1",
                     "--device", "cpu", "--methods", "init-random", "--no-int8",
                     "--out", str(timed / "plan-latency.json")]) == 0
    plan = json.loads((timed / "plan-latency.json").read_text())
    assert "init-random" in plan["search"]["categories"]
    from tlc.plan.cost import build_cost_model

    costs = build_cost_model(timed, "cpu", 1, "--max-latency-ms", None)
    assert costs.latency_group("init-random", False) == ("magnitude", False)
    assert costs.latency_ms(5e4, 2e4, 0.5, "init-random", False) == costs.latency_ms(5e4, 2e4, 0.5, "magnitude", False)
