"""tlc demo: the whole pipeline (sweep, compress, fit, plan, report) end to end on a small sweep."""

from __future__ import annotations

import json

import yaml

from conftest import run_tlc

RUN_IDS = ("w32-d1-s0", "w64-d1-s0", "w64-d2-s0")


def test_demo_runs_every_stage_and_resumes(tmp_path, small_corpus):
    sweep = tmp_path / "mini.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "mini",
        "model": {"context": 32, "vocab_size": 300},
        # widths divisible by the demo's 32-wide pruning blocks
        "shapes": [{"width": 32, "depth": 1, "heads": 2}, {"width": 64, "depth": 1, "heads": 2},
                   {"width": 64, "depth": 2, "heads": 2}],
        # cooldown branches give each run three finished-run points: tlc fit needs D to vary
        "train": {"tokens": 30 * 8 * 32, "micro_batch": 8, "evals": 8, "precision": "fp32", "lr": 3e-3,
                  "schedule": "wsd", "cooldowns": [0.25, 0.5, 1.0]},
        "data": {"source": str(small_corpus)},
    }))
    runs = tmp_path / "runs"
    cmd = ["demo", "--sweep", sweep, "--runs-dir", runs]
    proc = run_tlc(*cmd, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for stage in ("tlc sweep", "tlc compress", "tlc fit", "tlc report"):
        assert f"== {stage}" in out
    # three tiny shapes with three branch ends each do not pin a law down: tlc fit marks both laws
    # unidentified, and the demo says so instead of planning from them (the planner would refuse)
    sweep_dir = runs / "mini"
    fit = json.loads((sweep_dir / "fit.json").read_text())
    assert {law["status"] for law in fit["laws"].values()} == {"unidentified"}
    assert "== tlc plan" not in out and not (sweep_dir / "plan.json").exists()
    assert "no plan: fit.json " in out and "no law the fit can defend" in out and "train.cooldowns or train.budgets" in out
    table = out[out.index("stage        wall s"):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:7]}
    assert list(rows) == ["sweep", "compress", "fit", "report", "total"]
    assert all(float(row[1]) >= 0 and float(row[-1]) >= 0 for row in rows.values())
    assert float(rows["sweep"][-1]) > 1  # the trainers' CPU time is counted: they are the sweep's children
    assert "report: " in out and out.rstrip().endswith("(open it in a browser)")
    assert "unidentified" in (sweep_dir / "report" / "report.md").read_text()
    assert all((sweep_dir / r / "compress.jsonl").exists() for r in ("w32-d1-s0", "w64-d2-s0"))
    assert (sweep_dir / "report" / "index.html").exists() and (sweep_dir / "fit.json").exists()
    rows_before = sum(len((sweep_dir / r / "compress.jsonl").read_text().splitlines())
                      for r in RUN_IDS)

    again = run_tlc(*cmd, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") >= len(RUN_IDS)  # no run trained twice
    assert f"{sweep_dir / 'fit.json'} is up to date" in again.stdout  # nor the same fit made twice
    rows_after = sum(len((sweep_dir / r / "compress.jsonl").read_text().splitlines())
                     for r in RUN_IDS)
    assert rows_after == rows_before  # no variant made twice
