"""tlc plan says how far its recommendation reaches past the sweep: compute, N and tokens (plan.json and a line)."""

from __future__ import annotations

import json

import pytest

from test_plan_cli import write_sweep
from tlc.io import list_runs, read_jsonl
from tlc.plan import command as tlc_plan


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("extrapolation") / "runs"
    write_sweep(runs)
    for run_dir in list_runs(runs):  # the compute of each run's final model, as a trainer's config.json records it
        config = json.loads((run_dir / "config.json").read_text())
        config["train_flops"] = read_jsonl(run_dir / "metrics.jsonl")[-1]["flops"]
        (run_dir / "config.json").write_text(json.dumps(config))
    return runs


def test_the_plan_records_and_prints_its_reach_past_the_sweep(runs, capsys):
    largest = max(json.loads((r / "config.json").read_text())["train_flops"] for r in list_runs(runs))
    fit = json.loads((runs / "fit.json").read_text())
    sizes = [r["params"] for r in fit["runs"]]
    longest = max(d for r in fit["runs"] for d in r["finished_tokens"])
    assert tlc_plan.main(["--runs", str(runs), "--budget", f"{4 * largest:.6g}", "--max-params", "300k"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((runs / "plan.json").read_text())
    reach, rec = plan["extrapolation"], plan["recommendation"]
    assert reach["largest_run_flops"] == pytest.approx(largest)
    assert reach["compute"] == pytest.approx(rec["train_flops"] / largest)
    assert 1 < reach["compute"] <= 4 * 1.0001  # spends most of a budget four times the largest run's
    assert reach["N"] == pytest.approx(rec["non_embedding_params"] / max(sizes))  # the law counts non-embedding N
    assert reach["tokens"] == pytest.approx(rec["tokens"] / longest)
    line = next(ln for ln in printed.splitlines() if ln.startswith("extrapolation: "))
    assert line == (f"extrapolation: the recommendation is {reach['compute']:.3g}x the largest run's training "
                    f"compute, {reach['N']:.3g}x the largest measured N, {reach['tokens']:.3g}x the longest "
                    "measured tokens")
