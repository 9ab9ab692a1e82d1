"""The planner prices weight-only quantizers (gptq, rtn) as it prices pruning and int8, and plans with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_plan_cli import fake_latency_ms, write_sweep
from tlc.artifact import artifact_size
from tlc.compress.pipeline import planned_variants
from tlc.config import ModelShape
from tlc.demo import describe_plan
from tlc.export.source import recommended_variant
from tlc.fit.observations import fit_sweep
from tlc.io import atomic_write_json, read_jsonl
from tlc.plan import command as tlc_plan
from tlc.plan.law import load_plan_law
from tlc.report.summary import describe_point

CALIBRATION = {"split": "train", "sequences": 128, "tokens": 128 * 128}


def add_gptq(runs_dir: Path, added_loss: float) -> None:
    """gptq at 4 bits (groups of 32) beside every run's variants, adding ``added_loss``·(N/1e5)^-0.2 nats, with the
    bytes of its real encoding and the dense model's latency (codes run dequantized), then refit."""
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        config = json.loads((run_dir / "config.json").read_text())
        shape = ModelShape(**config["shape"])
        rows = read_jsonl(run_dir / "compress.jsonl")
        dense = next(r for r in rows if r["method"] == "none" and r["bits"] == 32)
        n = config["params"]["non_embedding"]
        latency = fake_latency_ms(config["params"]["total"], 0.0, "none", False)
        rows.append({"method": "gptq", "sparsity": 0.0, "bits": 4, "group_size": 32, "calibration": CALIBRATION,
                     "nonzeros": config["params"]["total"],
                     "bytes": artifact_size(shape, "none", 0.0, False, grouped=(4, 32)).bytes,
                     "latency_ms_b1": latency, "latency_ms_b32": 10 * latency, "latency_kind": "measured",
                     "device": "cpu", "val_loss": dense["val_loss"] + added_loss * (n / 1e5) ** -0.2})
        (run_dir / "compress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(runs_dir / "fit.json", fit_sweep(runs_dir, bootstrap=20, seed=0, all_points=True,
                                                       size="non_embedding"))


def _gptq_sweep(tmp_path_factory, name: str, added_loss: float) -> Path:
    runs = tmp_path_factory.mktemp(name) / "runs"
    write_sweep(runs)
    add_gptq(runs, added_loss)
    return runs


@pytest.fixture(scope="module")
def cheap(tmp_path_factory) -> Path:
    return _gptq_sweep(tmp_path_factory, "gptq", 0.002)


@pytest.fixture(scope="module")
def costly(tmp_path_factory) -> Path:
    return _gptq_sweep(tmp_path_factory, "gptq-costly", 1.5)


def plan(argv: list, capsys) -> dict:
    assert tlc_plan.main([*map(str, argv), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


BUDGET, MAX_BYTES = "1e17", 3e6  # a 3M-parameter model fits 3 MB at 4 bits (embeddings fp32), not with int8


def test_a_cheap_4_bit_quantizer_is_planned_under_a_byte_budget(cheap, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(cheap, runs)
    result = plan(["--runs", runs, "--budget", BUDGET, "--max-bytes", MAX_BYTES], capsys)
    assert "gptq-w4" in result["search"]["categories"]
    rec = result["recommendation"]
    c = rec["compression"]
    assert (c["method"], c["bits"], c["group_size"], c["sparsity"], c["int8"]) == ("gptq", 4, 32, 0.0, False)
    assert c["calibration"] == CALIBRATION and c["timing"] == "train dense, then compress"
    assert 0 < c["added_loss"] < 0.002 and "dequantized" in c["latency"]
    # bytes are the codes-and-scales encoding of the planned shape, inside the budget
    shape = ModelShape(rec["width"], rec["depth"], rec["heads"], 128, 1024, "gpt2")
    assert rec["inference"]["bytes"] == artifact_size(shape, "none", 0.0, False, grouped=(4, 32)).bytes <= MAX_BYTES
    assert rec["inference"]["nonzeros"] == rec["params_total"]  # nothing pruned
    dense = result["compute_optimal"]
    assert rec["loss"]["mean"] < result["train_small"]["loss"]["mean"] and result["gain"]["loss"] > 0.05
    assert rec["loss"]["low"] <= rec["loss"]["mean"] <= rec["loss"]["high"]
    law = load_plan_law(runs, None)
    dense_loss = law.interval(rec["non_embedding_params"], rec["tokens"], "none", 0.0, False, rec["embedding_params"])
    assert rec["loss"]["mean"] - dense_loss[0] == pytest.approx(c["added_loss"], rel=1e-6)  # the fitted gptq-w4 model
    assert rec["non_embedding_params"] > 0.5 * dense["non_embedding_params"]  # near compute-optimal, 4x smaller
    assert tlc_plan.main(["--runs", str(runs), "--budget", BUDGET, "--max-bytes", str(MAX_BYTES)]) == 0
    assert "gptq 4-bit g32" in capsys.readouterr().out
    # the report, the demo and tlc export name the same variant
    assert "quantized by gptq to 4 bits (groups of 32)" in describe_point(rec)
    assert "gptq 4-bit g32: predicted loss" in describe_plan(rec)
    rows = {"dense": {"method": "none", "bits": 32, "sparsity": 0.0}, "none-int8": {"method": "none", "bits": 8},
            "gptq-w8g32": {"method": "gptq", "bits": 8}, "gptq-w4g32": {"method": "gptq", "bits": 4}}
    assert recommended_variant(result, rows) == "gptq-w4g32"
    # --methods picks compression methods, weight-only ones included; an unknown one lists gptq as valid
    only_magnitude = plan(["--runs", runs, "--budget", BUDGET, "--max-bytes", MAX_BYTES, "--methods", "magnitude"],
                          capsys)
    assert "gptq-w4" not in only_magnitude["search"]["categories"]
    assert only_magnitude["recommendation"]["loss"]["mean"] > rec["loss"]["mean"]
    assert plan(["--runs", runs, "--budget", BUDGET, "--max-bytes", MAX_BYTES, "--methods", "gptq"],
                capsys)["search"]["categories"] == ["none", "none+int8", "gptq-w4"]
    assert tlc_plan.main(["--runs", str(runs), "--budget", BUDGET, "--methods", "awq"]) == 2
    err = capsys.readouterr().err
    assert "--methods: no compression model for awq" in err and "valid: 2:4, block, magnitude, gptq, gptq-w4" in err


def test_a_quantizer_that_costs_too_much_loss_is_not_planned(costly, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(costly, runs)
    result = plan(["--runs", runs, "--budget", BUDGET, "--max-bytes", MAX_BYTES], capsys)
    assert "gptq-w4" in result["search"]["categories"]  # considered
    assert result["recommendation"]["compression"]["method"] != "gptq"


def test_a_quantizer_runs_as_fast_as_dense_where_it_was_measured_so(cheap, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(cheap, runs)
    result = plan(["--runs", runs, "--budget", BUDGET, "--max-bytes", MAX_BYTES, "--device", "cpu"], capsys)
    groups = {g["method"]: g for g in result["cost_model"]["latency"]["groups"] if not g["int8"]}
    assert groups["gptq-w4"]["a"] == pytest.approx(groups["none"]["a"], abs=1e-6)  # no speedup invented
    assert result["recommendation"]["inference"]["latency_ms"] > 0


def test_a_weight_only_recipe_compresses_to_that_variant():
    compression = {"method": "gptq", "sparsity": 0.0, "block": None, "recovery_steps": 0, "int8": False,
                   "bits": 4, "group_size": 32, "calibration": {**CALIBRATION, "sequences": 64}}
    settings, specs = planned_variants(compression)
    assert [s.id for s in specs] == ["dense", "gptq-w4g32"]
    assert (settings.methods, settings.quant_bits, settings.group_size, settings.calibration_sequences,
            settings.int8) == (("gptq",), (4,), 32, 64, False)
    settings, specs = planned_variants({**compression, "method": "rtn", "bits": 8, "group_size": 0,
                                        "calibration": None})
    assert specs[-1].id == "rtn-w8g0" and settings.quant_bits == (8,)


@pytest.mark.slow
def test_a_gptq_plan_is_trained_compressed_and_scored_by_validate(tmp_path, small_corpus):
    """A plan that recommends gptq: tlc validate trains it, tlc compress --plan makes the gptq variant, and the
    bytes it measures are the ones the plan promised."""
    from conftest import tlc_in_process
    from plan_fixtures import write_trainable_sweep

    runs = write_trainable_sweep(tmp_path / "runs", small_corpus)
    add_gptq(runs, 0.002)
    assert tlc_plan.main(["--runs", str(runs), "--budget", "5e9", "--max-bytes", "100000"]) == 0
    point = json.loads((runs / "plan.json").read_text())["recommendation"]
    assert point["recipe"]["compression"]["method"] == "gptq" and point["recipe"]["compression"]["bits"] == 4
    tlc_in_process("validate", runs, "--points", "recommendation", "--seeds", "0", check=True)
    entry = json.loads((runs / "validation.json").read_text())["validations"][0]["points"]["recommendation"]
    run_dir = runs / entry["run_dirs"][0]
    row = next(r for r in read_jsonl(run_dir / "compress.jsonl") if r["variant"] == "gptq-w4g32")
    assert row["calibration"]["sequences"] == CALIBRATION["sequences"] and row["group_size"] == 32
    assert entry["measured"]["bytes"] == row["bytes"] <= entry["predicted"]["bytes"] <= 100000
