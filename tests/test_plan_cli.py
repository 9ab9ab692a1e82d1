"""`tlc plan --runs` on a fitted synthetic sweep in the run-directory contract, end to end."""

from __future__ import annotations

import dataclasses

import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.synthetic import synthetic_sweep
from tlc.plan import command as tlc_plan
from tlc.plan import planner
from tlc.plan.law import load_plan_law
from tlc.config import ModelShape
from tlc.fit.observations import fit_sweep
from tlc.io import atomic_write_json
from tlc.shapes import param_counts
from tlc.plan.space import Category
from tlc.artifact import artifact_size

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(64, 2), (96, 3), (128, 4), (192, 4), (256, 6), (384, 6)]


def fake_latency_ms(params_total: float, sparsity: float, method: str, int8: bool) -> float:
    """A made-up device: latency ~ P^0.8; block sparsity speeds up as density^0.7, int8 by 30%."""
    ms = 0.02 * (params_total / 1e5) ** 0.8
    if method == "block":
        ms *= (1 - sparsity) ** 0.7
    return ms * (0.7 if int8 else 1.0)


def write_sweep(runs_dir: Path, compress: bool = True) -> None:
    """Runs of GPT-2 shapes with losses from `scaling.synthetic`, compress.jsonl with bytes and latency."""
    template = {"context": 128, "vocab_size": 1024, "arch": "gpt2"}
    counts = [param_counts(ModelShape(w, d, max(1, w // 64), **template)) for w, d in SHAPES]
    sweep = synthetic_sweep(n_runs=len(SHAPES), points_per_run=10, noise=0.002, seed=1, methods=("magnitude", "block"),
                            min_params=counts[0].non_embedding, max_params=counts[-1].non_embedding)
    for (width, depth), pc, run in zip(SHAPES, counts, sweep.runs):
        run_dir = runs_dir / run.run_id
        run_dir.mkdir(parents=True)
        shape = {"width": width, "depth": depth, "heads": max(1, width // 64), **template}
        config = {"run_id": run.run_id, "shape": shape,
                  "params": {"total": pc.total, "non_embedding": run.params}}
        (run_dir / "config.json").write_text(json.dumps(config))
        rows = [{"step": 10 * (i + 1), "tokens": float(t), "flops": float(f), "val_loss": float(loss)}
                for i, (t, f, loss) in enumerate(zip(run.tokens, run.train_flops, run.val_loss))]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if not compress:
            continue
        lines = [(("none", 0.0, 32), run.final_loss)]
        lines += [((v.method, v.sparsity, v.bits), v.val_loss) for v in sweep.variants if v.run_id == run.run_id]
        # 2:4 exists at one sparsity only; here it loses twice what magnitude pruning loses at 0.5.
        two_four = next(loss for (m, s, b), loss in lines if (m, s, b) == ("magnitude", 0.5, 32))
        lines.append((("2:4", 0.5, 32), 2 * two_four - run.final_loss))
        out = []
        for (method, sparsity, bits), loss in lines:
            nonzeros = pc.embedding + (1 - sparsity) * pc.non_embedding
            bitmask = 0.0 if sparsity == 0 or method == "block" else pc.total / 8
            latency = fake_latency_ms(pc.total, sparsity, method, bits == 8)
            out.append({"method": method, "sparsity": sparsity, "bits": bits, "nonzeros": nonzeros,
                        "bytes": nonzeros * (1 if bits == 8 else 4) + bitmask, "latency_ms_b1": latency,
                        "latency_ms_b32": 10 * latency, "latency_kind": "measured", "device": "cpu",
                        "val_loss": loss})
        (run_dir / "compress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    atomic_write_json(runs_dir / "fit.json", fit_sweep(runs_dir, bootstrap=20, seed=0, all_points=True,
                                                               size="non_embedding"))  # the law's N


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("plan") / "runs"
    write_sweep(runs)
    return runs


@pytest.fixture
def runs(sweep_dir, tmp_path) -> Path:
    """A private copy, so that study.db and plan.json start empty in every test."""
    copy = tmp_path / "runs"
    shutil.copytree(sweep_dir, copy)
    return copy


def plan(argv: list, capsys) -> dict:
    assert tlc_plan.main([*map(str, argv), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_compressing_a_larger_model_beats_training_small_under_a_byte_budget(runs, capsys):
    result = plan(["--runs", runs, "--budget", "1e15", "--max-bytes", "600kB"], capsys)
    rec, small = result["recommendation"], result["train_small"]
    assert rec["inference"]["bytes"] <= 600e3 * (1 + 1e-9) and small["inference"]["bytes"] <= 600e3 * (1 + 1e-9)
    assert small["compression"] == {"method": "none", "sparsity": 0.0, "int8": False, "timing": "dense"}
    assert rec["compression"] != small["compression"] and rec["non_embedding_params"] > small["non_embedding_params"]
    assert result["gain"]["loss"] == pytest.approx(small["loss"]["mean"] - rec["loss"]["mean"])
    assert result["gain"]["loss"] > 0.01
    assert result["gain"]["low"] <= result["gain"]["loss"] <= result["gain"]["high"]
    assert rec["loss"]["low"] <= rec["loss"]["mean"] <= rec["loss"]["high"]
    shape = ModelShape(rec["width"], rec["depth"], rec["heads"], 128, 1024, "gpt2")
    assert rec["non_embedding_params"] == param_counts(shape).non_embedding
    assert rec["train_flops"] + rec["inference_flops"] <= 1e15 * (1 + 1e-9)
    # bytes and non-zeros are the storage encoding's, counted from the shape (tlc.artifact)
    c = rec["compression"]
    size = artifact_size(shape, c["method"], c["sparsity"], c["int8"])
    assert rec["inference"]["bytes"] == size.bytes and rec["inference"]["nonzeros"] == size.nonzeros


def test_plan_json_round_trips_and_matches_the_printed_json(runs, capsys):
    printed = plan(["--runs", runs, "--budget", "1e15", "--max-params", "200k"], capsys)
    text = (runs / "plan.json").read_text()
    assert json.loads(text) == printed
    assert json.loads(json.dumps(printed, allow_nan=False)) == printed
    assert printed["format"] == "tlc.plan/2" and printed["budget"]["max_params"] == 2e5
    for key in ("recommendation", "train_small", "gain", "compute_optimal", "pareto_front", "pareto_cost",
                "measured_ranges",
                "warnings", "cost_model", "search", "law"):
        assert key in printed


def test_same_seed_same_plan_and_the_studies_are_stored(runs, capsys):
    argv = ["--runs", runs, "--budget", "1e15", "--max-bytes", "1MB", "--seed", "3"]
    first, second = plan(argv, capsys), plan(argv, capsys)
    assert first["recommendation"] == second["recommendation"] and first["pareto_front"] == second["pareto_front"]
    names = first["search"]["studies"]
    with sqlite3.connect(runs / "study.db") as db:
        counts = dict(db.execute("SELECT s.study_name, COUNT(t.trial_id) FROM studies s "
                                 "LEFT JOIN trials t ON t.study_id = s.study_id GROUP BY s.study_name"))
    # Rerunning replaced the studies instead of appending to them.
    assert counts[names["tpe"]] == first["search"]["tpe_trials"]
    assert counts[names["nsga2"]] == first["search"]["pareto_trials"]
    other = plan(["--runs", runs, "--budget", "1e15", "--max-bytes", "2MB", "--seed", "3"], capsys)
    assert other["search"]["studies"]["tpe"] != names["tpe"]


def test_polish_matches_an_exhaustive_search_over_shapes(runs, capsys):
    law = load_plan_law(runs, None)
    from tlc.plan.cost import build_cost_model
    from tlc.plan.space import Budgets, PlanSpace

    categories = [Category(m, q) for m in ("none", "block", "magnitude") for q in (False, True)]
    costs = build_cost_model(runs, None, 1, None, law.shape_template)  # as the planner builds it
    for flags, aspect, depths in (([], None, None), (["--measured-shapes"], law.ranges.aspect, law.ranges.depth)):
        rec = plan(["--runs", runs, "--budget", "1e14", "--max-params", "150k", *flags], capsys)["recommendation"]
        space = PlanSpace(law, costs, Budgets(1e14, max_params=1.5e5), 0.95, categories, aspect=aspect, depths=depths)
        K, D = (a.ravel() for a in np.meshgrid(np.arange(1, 33), np.arange(1, 41), indexing="ij"))
        best = math.inf
        for category in categories:
            loss, _, feasible = space.evaluate(space.sizes(K, D), category)
            best = min(best, float(np.min(np.where(feasible & space.shape_allowed(K, D), loss, np.inf))))
        assert rec["loss"]["mean"] <= best + 1e-9, flags


def test_measured_shapes_keeps_plans_to_the_sweeps_width_depth_ratios_and_depths(runs, capsys):
    ranges = load_plan_law(runs, None).ranges
    (low, high), (shallowest, deepest) = ranges.aspect, ranges.depth
    assert (shallowest, deepest) == (2, 6)  # SHAPES
    kept = plan(["--runs", runs, "--budget", "1e14", "--max-params", "150k", "--measured-shapes"], capsys)
    free = plan(["--runs", runs, "--budget", "1e14", "--max-params", "150k"], capsys)
    assert kept["measured_ranges"]["depth"] == [2, 6]
    # no dense model of a measured shape fits 150k parameters here (the smallest, 64/2, has more): no train-small
    assert kept["train_small"] is None and free["train_small"] is not None
    for point in ("recommendation", "compute_optimal"):
        assert low <= kept[point]["width"] / kept[point]["depth"] <= high, (point, kept[point]["width"])
        assert shallowest <= kept[point]["depth"] <= deepest, (point, kept[point]["depth"])
    shapes = [(p["width"], p["depth"]) for p in (free["recommendation"], free["train_small"], free["compute_optimal"])]
    assert any(not low <= w / d <= high for w, d in shapes)  # this law's optimum lies outside the measured shapes
    assert free["recommendation"]["loss"]["mean"] < kept["recommendation"]["loss"]["mean"]


def test_pareto_front_is_sorted_non_dominated_and_does_not_beat_the_recommendation(runs, capsys):
    result = plan(["--runs", runs, "--budget", "1e15", "--max-bytes", "1MB"], capsys)
    front = result["pareto_front"]
    assert result["pareto_cost"] == "bytes" and len(front) >= 3
    costs = [p["inference"]["bytes"] for p in front]
    assert costs == [p["inference_cost"] for p in front]
    losses = [p["loss"]["mean"] for p in front]
    assert costs == sorted(costs) and all(b < a for a, b in zip(losses, losses[1:]))
    rec = result["recommendation"]
    assert result["search"]["fixed_sparsity"] == {"2:4": 0.5}  # measured at one sparsity only
    for p in front:
        if p["compression"]["method"] == "2:4":
            assert p["compression"]["sparsity"] == 0.5
        if p["inference"]["bytes"] <= 1e6:
            assert p["loss"]["mean"] >= rec["loss"]["mean"] - 1e-9


def test_more_budget_never_worse_under_an_inference_budget(runs, capsys):
    losses = [plan(["--runs", runs, "--budget", c, "--max-bytes", "800kB", "--pareto-trials", "16"], capsys)
              ["recommendation"]["loss"]["mean"] for c in (1e13, 1e14, 1e15, 1e16)]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))


def test_latency_budget_is_met_by_the_fitted_device_model(runs, capsys):
    result = plan(["--runs", runs, "--budget", "1e15", "--max-latency-ms", "0.08", "--device", "cpu"], capsys)
    rec = result["recommendation"]
    # a 10% margin under the budget: latency measured on a shared machine is noisy
    assert rec["inference"]["latency_ms"] * 1.1 <= 0.08 * (1 + 1e-9) and result["budget"]["latency_margin"] == 0.1
    assert result["budget"]["latency_unit"] == "ms per token at latency_batch"
    assert result["pareto_cost"] == "latency_ms" and rec["inference_cost"] == rec["inference"]["latency_ms"]
    assert result["cost_model"]["latency"]["b"] == pytest.approx(0.8, abs=1e-6)
    # Only block sparsity is faster on this device, so no unstructured plan may win on latency.
    assert rec["compression"]["method"] in ("none", "block")
    expected = fake_latency_ms(rec["params_total"], rec["compression"]["sparsity"], rec["compression"]["method"],
                               rec["compression"]["int8"])
    assert rec["inference"]["latency_ms"] == pytest.approx(expected, rel=1e-6)


def test_latency_errors(runs, sweep_dir, tmp_path, capsys):
    assert tlc_plan.main(["--runs", str(runs), "--budget", "1e15", "--max-latency-ms", "1", "--device", "tpu"]) == 2
    assert "devices measured: cpu" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(sweep_dir, bare)
    for path in bare.glob("*/compress.jsonl"):
        path.unlink()
    assert tlc_plan.main(["--runs", str(bare), "--budget", "1e15", "--max-latency-ms", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-latency-ms: no compress.jsonl" in err and "\n" not in err


def test_extrapolation_is_warned_about(runs, capsys):
    result = plan(["--runs", runs, "--budget", "1e17", "--max-params", "300k"], capsys)
    assert "outside the measured final tokens 2M..360M" in " ".join(result["warnings"])
    assert "refitted without each run's longest point, this law" in " ".join(result["warnings"])
    assert result["measured_ranges"]["sparsity"]["magnitude"] == [0.3, 0.9]
    law = load_plan_law(runs, None)
    point = planner.Point(width=128, depth=4, N=8e5, embedding=1.5e5, tokens=1e8, train_flops_per_token=6e6,
                           inference_flops_per_token=2e6, category=Category("magnitude", False), sparsity=0.95,
                           loss=4.0, costs={}, feasible=True)
    assert planner._range_warnings(law, "x", point) == [
        "x: sparsity 95.0% is above the highest measured magnitude sparsity 90% (an extrapolation)"]
    inside = planner.Point(**{**point.__dict__, "sparsity": 0.2})  # between dense (0) and 30%: interpolated
    assert planner._range_warnings(law, "x", inside) == []
    assert law.ranges.aspect == (32.0, 64.0)  # SHAPES: 64/2 .. 384/6
    wide = planner.Point(**{**inside.__dict__, "width": 256, "depth": 2})
    assert planner._range_warnings(law, "x", wide) == [
        "x: width/depth 256/2 = 128 is outside the sweep's shapes' 32..64; the law sees only N, not the shape "
        "(an extrapolation)"]
    deep = planner.Point(**{**inside.__dict__, "width": 512, "depth": 8})  # width/depth 64: inside; depth 8: not
    assert planner._range_warnings(law, "x", deep) == [
        "x: depth 8 is outside the sweep's depths 2..6; the law sees only N, not the shape (an extrapolation)"]
    # inside the sweep's tokens, but past what any run of this size reached: the long runs were smaller models
    short_large = dataclasses.replace(law, ranges=dataclasses.replace(law.ranges, reach=((1e5, 3e8), (2e6, 5e6))),
                                      choice={})
    assert planner._range_warnings(short_large, "x", inside) == [
        "x: 100M tokens is more than any run of at least its size (N = 800k) was trained on, 5M (an extrapolation "
        "for its size)"]
    assert planner._range_warnings(short_large, "x", planner.Point(**{**inside.__dict__, "tokens": 4e6})) == []
    # a fit whose loss on repeated targets fell faster at the runs' ends than a refit on shorter runs predicts
    split = {"copying_under_way": True, "parts": {"repeat": {"heldout_tokens": {"bias": 0.021}}}}
    copying = dataclasses.replace(short_large, fitted=dataclasses.replace(law.fitted, loss_split=split))
    warning, = planner._range_warnings(copying, "x", inside)
    assert warning.endswith("(an extrapolation for its size); the sweep's models were still learning to copy from "
                            "their context where it stopped (the loss on targets seen earlier in their window fell "
                            "2.1% below a refit on shorter runs), so this loss will likely come out lower than "
                            "predicted")


def test_pruning_models_that_missed_or_were_not_checked_between_levels_are_warned_about(runs):
    law = load_plan_law(runs, None)
    magnitude = law.pruning_checks["magnitude"]  # the fixture's sweep: five levels, a small held-out error
    assert magnitude["levels"] == 5 and magnitude["error"] < 0.05
    point = planner.Point(width=128, depth=4, N=8e5, embedding=1.5e5, tokens=1e7, train_flops_per_token=6e6,
                          inference_flops_per_token=2e6, category=Category("magnitude", False), sparsity=0.6,
                          loss=4.0, costs={}, feasible=True)
    assert planner._range_warnings(law, "x", point) == []
    missed = dataclasses.replace(law, pruning_checks={"magnitude": {**magnitude, "error": 0.206}})
    assert planner._range_warnings(missed, "x", point) == [
        f"x: the magnitude pruning model ({magnitude['candidate']}) missed held-out measurements by 20.6% on "
        "average, so the loss pruning adds here is less certain than its interval says"]
    # measured at two levels only: between them nothing checks the curve; at a level itself, nothing to say
    two = dataclasses.replace(law, pruning_checks={"magnitude": {**magnitude, "levels": 2}})
    assert planner._range_warnings(two, "x", point) == [
        "x: magnitude was measured at two sparsities, 30% and 90%; between them nothing checks the fitted curve "
        "(compress at three or more, as tlc compress does by default)"]
    assert planner._range_warnings(two, "x", dataclasses.replace(point, sparsity=0.9)) == []


def test_unknown_method_and_missing_fit(runs, tmp_path, capsys):
    assert tlc_plan.main(["--runs", str(runs), "--budget", "1e15", "--methods", "movement"]) == 2
    assert "valid: 2:4, block, magnitude" in capsys.readouterr().err
    assert tlc_plan.main(["--runs", str(tmp_path), "--budget", "1e15"]) == 2
    assert "run `tlc fit" in capsys.readouterr().err


def test_the_tlc_command_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "tlc", "plan", "--law", "chinchilla", "--budget", "1e20",
                           "--max-bytes", "20XB"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tlc plan: error: --max-bytes: unknown unit 'xb' in '20XB'; valid: B, kB, MB, GB, TB (powers of 1000), "
        "KiB, MiB, GiB, TiB (powers of 1024), or a plain number of bytes")


def test_two_processes_with_one_seed_agree(runs):
    argv = [sys.executable, "-m", "tlc", "plan", "--runs", str(runs), "--budget", "1e15", "--max-bytes", "700kB",
            "--seed", "5", "--json"]
    first, second = (json.loads(subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120,
                                               check=True).stdout) for _ in range(2))
    for key in ("recommendation", "train_small", "gain", "pareto_front"):
        assert first[key] == second[key]


def test_a_fit_json_given_as_law_plans_like_runs(runs, tmp_path, capsys):
    by_runs = plan(["--runs", runs, "--budget", "1e15", "--max-bytes", "700kB"], capsys)
    out = tmp_path / "elsewhere" / "plan.json"
    by_file = plan(["--law", runs / "fit.json", "--budget", "1e15", "--max-bytes", "700kB", "--out", out], capsys)
    assert by_file["recommendation"] == by_runs["recommendation"]
    assert by_file["search"]["storage"] is None and json.loads(out.read_text()) == by_file


def test_inference_tokens_come_out_of_the_budget_for_shapes(runs, capsys):
    served = 5e9
    without = plan(["--runs", runs, "--budget", "1e16", "--max-bytes", "2MB"], capsys)["recommendation"]
    rec = plan(["--runs", runs, "--budget", "1e16", "--max-bytes", "2MB", "--inference-tokens", served],
               capsys)["recommendation"]
    shape = ModelShape(rec["width"], rec["depth"], rec["heads"], 128, 1024, "gpt2")
    from tlc.shapes import flops_per_token

    assert rec["inference_flops"] == pytest.approx(served * flops_per_token(shape) / 3)
    assert rec["train_flops"] + rec["inference_flops"] == pytest.approx(1e16, rel=1e-9)
    assert rec["params_total"] < without["params_total"] and rec["loss"]["mean"] > without["loss"]["mean"]


def test_device_alone_reports_latency_without_restricting_the_search(runs, capsys):
    result = plan(["--runs", runs, "--budget", "1e15", "--max-params", "150k", "--device", "cpu"], capsys)
    assert "magnitude+int8" in result["search"]["categories"]  # never timed on cpu, still searched
    assert result["budget"]["device"] == "cpu" and result["pareto_cost"] == "nonzeros"
    rec = result["recommendation"]
    timed = (rec["compression"]["method"], rec["compression"]["int8"]) != ("magnitude", True)
    assert (rec["inference"]["latency_ms"] is not None) == timed
    limited = plan(["--runs", runs, "--budget", "1e15", "--max-latency-ms", "1", "--device", "cpu"], capsys)
    assert "magnitude+int8" not in limited["search"]["categories"]


def test_a_whole_plan_never_imports_torch(runs):
    code = ("import sys, io, contextlib; from tlc.plan.command import main; "
            "out = io.StringIO(); contextlib.redirect_stdout(out).__enter__(); "
            f"rc = main(['--runs', {str(runs)!r}, '--budget', '1e15', '--max-latency-ms', '0.05', '--device', 'cpu']); "
            "sys.stderr.write(str((rc, 'torch' in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stderr.strip() == "(0, False)"


def _mark(runs: Path, **statuses: tuple[str, str]) -> None:
    """Give fit.json's laws another status and reason, as `tlc fit` marks a law the design cannot identify."""
    fit = json.loads((runs / "fit.json").read_text())
    for name, (status, reason) in statuses.items():
        fit["laws"][name].update(status=status, reason=reason)
    atomic_write_json(runs / "fit.json", fit)


def test_planner_uses_the_best_defensible_law_and_says_why(runs, capsys):
    fit = json.loads((runs / "fit.json").read_text())
    errors = {n: law["heldout"]["relative_error"] for n, law in fit["laws"].items()}
    worst = {n: max(law["heldout"]["relative_error"], law["heldout_tokens"]["relative_error"])
             for n, law in fit["laws"].items()}
    result = plan(["--runs", runs, "--budget", "1e15", "--max-params", "200k"], capsys)
    # a fit that records its rule (the compute hold-out, scaling.selection) chooses for the plan
    assert fit["preferred_law"]["rule"] == "compute_holdout" and result["law"]["form"] == fit["preferred_law"]["name"]
    assert result["law"]["status"] == "converged" and result["law"]["why"].startswith("fit.json's preferred law")
    assert {c["name"] for c in result["law"]["candidates"]} == set(errors)
    del fit["preferred_law"]["rule"]  # older fits: the lowest held-out error
    atomic_write_json(runs / "fit.json", fit)
    result = plan(["--runs", runs, "--budget", "1e15", "--max-params", "200k"], capsys)
    assert result["law"]["form"] == min(worst, key=worst.get)
    assert "leave-largest-out" in result["law"]["why"] and "leave-longest-out" in result["law"]["why"]
    _mark(runs, chinchilla=("unidentified", "every run has the same tokens, so D is not identified"),
          power_sum=("unidentified", "alpha's 95% interval spans 4x"),
          overtraining=("unidentified", "alpha's 95% interval spans 4x"))
    result = plan(["--runs", runs, "--budget", "1e15", "--max-params", "200k"], capsys)
    assert result["law"]["form"] == "kaplan" and result["law"]["heldout_error"] == pytest.approx(errors["kaplan"])
    forced = plan(["--runs", runs, "--budget", "1e15", "--max-params", "200k", "--law-form", "kaplan"], capsys)
    assert forced["law"]["form"] == "kaplan" and forced["law"]["why"] == "named by --law-form"


@pytest.mark.parametrize("argv, expected", [
    (["--law-form", "chinchilla"], "--law-form chinchilla: chinchilla is unidentified (every run has the same tokens"),
    (["--law-form", "nope"], "--law-form: 'nope' is not fitted"),
    ([], "no law the fit can defend: chinchilla is unidentified (every run has the same tokens, so D is not "
         "identified); kaplan is hit_bound (a parameter sits at its bound"),
])
def test_no_defensible_law_is_one_line_naming_the_design_problem(runs, capsys, argv, expected):
    _mark(runs, chinchilla=("unidentified", "every run has the same tokens, so D is not identified"),
          kaplan=("hit_bound", None), power_sum=("unidentified", "alpha's 95% interval spans 4x"),
          overtraining=("unidentified", "alpha's 95% interval spans 4x"))
    assert tlc_plan.main(["--runs", str(runs), "--budget", "1e15", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_law_form_with_a_published_law_is_refused(capsys):
    assert tlc_plan.main(["--law", "chinchilla", "--budget", "1e20", "--law-form", "kaplan"]) == 2
    assert "--law-form: chooses among the laws of a fit.json" in capsys.readouterr().err


def test_the_planner_counts_n_as_the_fit_did(runs):
    """A fit whose N counts every parameter is evaluated at non-embedding + embedding; an older fit.json
    without a size counted the non-embedding parameters only."""
    fit = json.loads((runs / "fit.json").read_text())
    assert load_plan_law(runs, None).size == "non_embedding"  # the fixture's fit
    fit.pop("size")
    atomic_write_json(runs / "fit.json", fit)
    old = load_plan_law(runs, None)
    assert old.size == "non_embedding" and old.law_params(1e5, 3e4) == 1e5
    fit["size"] = {"definition": "total"}
    atomic_write_json(runs / "fit.json", fit)
    total = load_plan_law(runs, None)
    assert total.law_params(1e5, 3e4) == 1.3e5
    assert total.loss(1e5, 1e8, "none", 0.0, False, 3e4) == pytest.approx(old.loss(1.3e5, 1e8, "none", 0.0, False))
    mean, _, _ = total.interval(1e5, 1e8, "magnitude", 0.5, True, 3e4)
    assert mean == pytest.approx(old.interval(1.3e5, 1e8, "magnitude", 0.5, True)[0])


def test_a_curved_pruning_model_is_not_asked_past_the_sparsities_measured(runs):
    from scaling.compression import PRUNING_CANDIDATES
    from scaling.fitted import FittedLaw
    from tlc.plan.cost import build_cost_model
    from tlc.plan.space import Budgets, PlanSpace

    law = load_plan_law(runs, None)
    costs = build_cost_model(runs, None, 1, None, law.shape_template)
    categories = [Category("magnitude", False)]
    measured_high = law.ranges.sparsity["magnitude"][1]  # the fixture's sweep: 0.9
    power, curved = PRUNING_CANDIDATES["odds_power"], PRUNING_CANDIDATES["odds_curved"]
    models = {"odds_power": FittedLaw(power, power.parameters_type(c=0.1, gamma=1.5, delta=0.3), "converged",
                                      np.empty((0, 3))),
              "odds_curved": FittedLaw(curved, curved.parameters_type(c=0.1, gamma=1.5, delta=0.3, kappa=0.8),
                                       "converged", np.empty((0, 4)))}
    highest = {}
    for name, model in models.items():
        fitted = dataclasses.replace(law.fitted, pruning={**law.fitted.pruning, "magnitude": model})
        space = PlanSpace(dataclasses.replace(law, fitted=fitted), costs, Budgets(1e14, max_params=1.5e5), 0.95,
                          categories)
        highest[name] = space.sparsity_range("magnitude")[1]
    # a power of the odds keeps growing: searched to --max-sparsity, past the measured 0.9 with a warning; the
    # curved model's cost is flat past gamma/kappa (s = 0.87 here), where more pruning would look free
    assert highest == {"odds_power": 0.95, "odds_curved": pytest.approx(measured_high)} and measured_high < 0.95


def test_an_unstable_law_is_refused_as_an_unidentified_one_is(runs, capsys):
    why = "only 20 of 40 bootstrap refits converged (50%, fewer than 80%)"
    _mark(runs, chinchilla=("unstable", why), kaplan=("unstable", why), power_sum=("unidentified", "alpha spans 4x"),
          overtraining=("unstable", why))
    assert tlc_plan.main(["--runs", str(runs), "--budget", "1e15"]) == 2
    err = capsys.readouterr().err
    assert f"no law the fit can defend: chinchilla is unstable ({why})" in err and err.count("\n") == 1
    assert tlc_plan.main(["--runs", str(runs), "--budget", "1e15", "--law-form", "kaplan"]) == 2
    assert f"--law-form kaplan: kaplan is unstable ({why})" in capsys.readouterr().err


def test_the_planner_plans_with_the_law_tlc_fit_prefers_under_every_branch_of_its_rule(tmp_path):
    from scaling.sweep_fit import preferred_law
    from tlc.plan.law import choose_law

    def law(error, floor):  # a converged law with a leave-largest-out error, with or without a floor E
        return {"status": "converged", "parameters": {"E": 1.0} if floor else {"N_c": 1.0},
                "heldout": {"relative_error": error}}

    # no compute hold-out (a sweep): Kaplan holds out better, but the law with a floor is preferred
    laws = {"kaplan": law(0.0059, False), "overtraining": law(0.0067, True)}
    preferred = preferred_law(laws)
    assert preferred["name"] == "overtraining" and preferred["rule"] == "heldout"
    chosen = choose_law({"laws": laws, "preferred_law": preferred}, None, "--runs", tmp_path)
    assert chosen["name"] == "overtraining" and chosen["why"].startswith("fit.json's preferred law")
    # no held-out errors at all: the first converged law, still recorded as the fit's rule
    bare = {name: {k: v for k, v in entry.items() if k != "heldout"} for name, entry in laws.items()}
    assert preferred_law(bare) == {"name": "overtraining", "rule": "first_converged",
                                   "reason": "converged; too few model sizes for a held-out comparison"}
