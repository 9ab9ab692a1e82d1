"""The planner prices weight-only quantizers (gptq, rtn) as it prices pruning and int8, and plans with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_plan_cli import SHAPES, fake_latency_ms, write_sweep
from tlc.artifact import artifact_size
from tlc.compress.pipeline import planned_variants
from tlc.config import ModelShape
from tlc.fit.observations import fit_sweep
from tlc.io import atomic_write_json, read_jsonl
from tlc.plan import command as tlc_plan

TEMPLATE = {"context": 128, "vocab_size": 1024, "arch": "gpt2"}  # test_plan_cli's sweep
CALIBRATION = {"split": "train", "sequences": 128, "tokens": 128 * 128}


def add_gptq(runs_dir: Path, added_loss: float) -> None:
    """gptq at 4 bits (groups of 32) beside every run's variants, adding ``added_loss``·(N/1e5)^-0.2 nats, with the
    bytes of its real encoding and the dense model's latency (codes run dequantized), then refit."""
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        config = json.loads((run_dir / "config.json").read_text())
        s = config["shape"]
        shape = ModelShape(s["width"], s["depth"], s["heads"], **TEMPLATE)
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


@pytest.fixture(scope="module")
def cheap(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("gptq") / "runs"
    write_sweep(runs)
    add_gptq(runs, 0.002)
    return runs


@pytest.fixture(scope="module")
def costly(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("gptq-costly") / "runs"
    write_sweep(runs)
    add_gptq(runs, 1.5)
    return runs


def plan(argv: list, capsys) -> dict:
    assert tlc_plan.main([*map(str, argv), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)
