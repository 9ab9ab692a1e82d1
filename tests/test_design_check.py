"""`scaling.design` and `tlc sweep --check-design`: does a sweep's design identify the law, before it trains."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from scaling.design import DesignRun, check_design
from scaling.synthetic import TINY_TRUTH
from tlc.cli import main


def _design(sizes, forks=(0.125, 0.25, 0.5, 1.0), tokens_per_param=40.0):
    runs = []
    for n in sizes:
        tokens = tuple(f * tokens_per_param * n for f in forks)
        runs.append(DesignRun(f"n{n:.3g}", float(n), tokens, tuple(6 * n * d for d in tokens)))
    return runs


def test_a_wide_design_identifies_the_law_and_its_intervals_hold_the_truth():
    draws = check_design(_design(np.geomspace(1e5, 1e8, 8)), TINY_TRUTH, noise=0.005, draws=3, bootstrap=100)
    assert [d.identified for d in draws] == [True] * 3
    assert all(d.span("alpha") < 3 and d.span("beta") < 3 for d in draws)
    assert sum(all(d.truth_inside.values()) for d in draws) >= 2


def test_a_design_with_sizes_close_together_does_not():
    draws = check_design(_design([1.0e6, 1.1e6, 1.2e6, 1.3e6]), TINY_TRUTH, noise=0.005, draws=2, bootstrap=100)
    assert not any(d.identified for d in draws)
    assert all(d.status == "unidentified" for d in draws)


def test_a_design_that_cannot_be_fitted_at_all_says_why():
    one_token_count = _design(np.geomspace(1e5, 1e8, 6), forks=(1.0,), tokens_per_param=1.0)
    one_token_count = [DesignRun(r.run_id, r.params, (1e7,), (6e7 * r.params,)) for r in one_token_count]
    with pytest.raises(ValueError, match="distinct token count"):
        check_design(one_token_count, TINY_TRUTH, draws=1, bootstrap=10)
    with pytest.raises(ValueError, match="noise"):
        check_design(_design([1e5, 1e6, 1e7]), TINY_TRUTH, noise=-1.0)


def _sweep(path, widths, seeds=(0,)):
    doc = {"name": "d", "model": {"context": 64, "vocab_size": 512},
           "shapes": [{"width": w, "depth": 2, "heads": 2} for w in widths], "seeds": list(seeds),
           "train": {"tokens": 4_000_000, "micro_batch": 8, "schedule": "wsd", "warmup_frac": 0.02,
                     "cooldowns": [0.0625, 0.125, 0.25, 0.5, 1.0]}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_check_design_trains_nothing_prints_each_draw_and_exits_by_the_verdict(tmp_path, capsys):
    wide = _sweep(tmp_path / "wide.yaml", [16, 32, 64, 128, 256, 512], seeds=(0, 1))
    assert main(["sweep", str(wide), "--check-design", "--draws", "2", "--noise", "0.002",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "12 runs, 60 finished-run points" in out and "identified in 2 of 2 draws" in out
    assert "Hoffmann et al. 2022" in out and not (tmp_path / "runs").exists()

    narrow = _sweep(tmp_path / "narrow.yaml", [60, 64, 68])
    assert main(["sweep", str(narrow), "--check-design", "--draws", "2"]) == 1
    out = capsys.readouterr().out
    assert "identified in 0 of 2 draws" in out and "draw 1: " in out


def test_check_design_takes_a_fit_as_the_truth_and_refuses_bad_flags(tmp_path, capsys):
    from tlc.fit.observations import fit_sweep
    from test_fit_cli import write_runs

    write_runs(tmp_path / "runs", n_runs=5, points=8, compress=False)
    fit_json = tmp_path / "runs" / "fit.json"  # N counted without embeddings, as the check must count it too
    fit_json.write_text(json.dumps(fit_sweep(tmp_path / "runs", bootstrap=20, size="non_embedding")))
    sweep = _sweep(tmp_path / "s.yaml", [16, 32, 64, 128, 256])
    code = main(["sweep", str(sweep), "--check-design", "--draws", "2", "--truth", str(fit_json)])
    out, err = capsys.readouterr()
    good = int(re.search(r"identified in (\d) of 2 draws", out).group(1))
    assert code == (0 if good == 2 else 1), err  # the exit code is the verdict: 0 only when every draw identified
    assert f"{fit_json}'s chinchilla law" in out
    assert "N (non_embedding)" in out

    for flags, field in ((["--truth", str(tmp_path / "missing.json")], "--truth"), (["--noise", "-0.1"], "--noise"),
                         (["--draws", "0"], "--draws")):
        assert main(["sweep", str(sweep), "--check-design", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tlc sweep: error: {field}:") and err.strip().count("\n") == 0
    assert main(["sweep", str(sweep), "--draws", "3"]) == 2  # a check's flag without the check: refused
    assert capsys.readouterr().err.startswith("tlc sweep: error: --draws: only with --check-design")
