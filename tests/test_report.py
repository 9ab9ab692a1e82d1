"""tlc report: figures, tables, what is missing, escaping, and a real browser check."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from report_fixtures import write_synthetic_sweep
from tlc.cli import main

ARTIFACTS = REPO / "test-artifacts"
ALL_FIGURES = {"loss_vs_flops.png", "accuracy_vs_flops.png", "loss_vs_wall.png", "loss_vs_sparsity.png",
               "equal_inference_cost.png", "pareto.png", "frequency_buckets.png"}


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory) -> Path:
    sweep = write_synthetic_sweep(tmp_path_factory.mktemp("runs") / "synthetic")
    assert main(["report", str(sweep)]) == 0
    return sweep


def test_report_has_every_figure_and_table(full_sweep):
    report = full_sweep / "report"
    assert ALL_FIGURES <= {p.name for p in report.glob("*.png")}
    page = (report / "index.html").read_text()
    for name in ALL_FIGURES:
        assert f"src='{name}'" in page
    assert page.count("<figcaption>") == len(ALL_FIGURES)
    assert "<script" not in page and "http://" not in page and "https://" not in page  # opens offline
    md = (report / "report.md").read_text()
    assert "## Runs" in md and "## Scaling-law fits" in md and "## Plan" in md
    assert "Not in this report yet" not in md


def test_report_works_with_only_training_and_says_what_is_missing(tmp_path, capsys):
    sweep = write_synthetic_sweep(tmp_path / "bare", with_fit=False, with_compress=False, with_plan=False)
    assert main(["report", str(sweep)]) == 0
    assert str(sweep / "report" / "index.html") in capsys.readouterr().out
    md = (sweep / "report" / "report.md").read_text()
    assert "no compression results yet" in md and "no scaling-law fit yet" in md and "no plan yet" in md
    assert {p.name for p in (sweep / "report").glob("*.png")} == {"loss_vs_flops.png", "accuracy_vs_flops.png",
                                                                 "loss_vs_wall.png"}


def test_user_strings_are_escaped(tmp_path):
    sweep = write_synthetic_sweep(tmp_path / "<b>evil</b>", with_fit=False, with_plan=False,
                                  run_id_prefix="<img src=x onerror=alert(1)>")
    assert main(["report", str(sweep)]) == 0
    page = (sweep / "report" / "index.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>evil</b>" not in page


def test_report_of_nothing_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no trained runs" in capsys.readouterr().err


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    # test set-up: install Debian's Chromium when it is absent (root, apt available)
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900)
    return shutil.which("chromium")


def test_report_renders_in_headless_chromium(full_sweep):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed and cannot be installed here (needs root and apt-get)")
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((full_sweep / "report" / "index.html").as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert len(images) == len(ALL_FIGURES)
    assert all(ok for _, ok in images), images
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_when_to_prune_figure_is_drawn_where_the_comparison_was_run(tmp_path):
    from tlc.io import atomic_write_json

    sweep = write_synthetic_sweep(tmp_path / "synthetic")
    rows = []
    for shape, flops, dense in (("w32-d2-s0", 1e12, 4.0), ("w16-d1-s0", 3e11, 4.4)):  # not in FLOPs order
        rows.append({"shape": shape, "timing": "dense", "method": "none", "sparsity": 0.0, "val_loss": dense,
                     "train_flops": flops})
        for timing, method, base in (("init", "snip", 0.3), ("init", "snip-shuffle", 0.32), ("init", "random", 0.35),
                                     ("during", "magnitude", 0.1), ("after", "gradual", 0.2)):
            rows += [{"shape": shape, "timing": timing, "method": method, "sparsity": s, "val_loss": dense + base + s / 4,
                      "train_flops": flops} for s in (0.5, 0.8)]
    rows.append({"shape": "w64-d2-s0", "timing": "init", "method": "snip", "sparsity": 0.5, "val_loss": 3.0})  # no dense
    atomic_write_json(sweep / "when_to_prune.json", {"rows": rows})
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "report" / "when_to_prune.png").exists()
    assert "## When to prune" in (sweep / "report" / "report.md").read_text()


def test_the_fitted_curves_are_the_preferred_law_at_each_run_s_n_as_the_fit_counted_it(tmp_path):
    import json

    import numpy as np

    from scaling import load_fit
    from test_fit_cli import write_runs
    from tlc.fit.observations import fit_sweep
    from tlc.report.data import RunData, fitted_curve

    write_runs(tmp_path, n_runs=5, points=8, compress=False)
    fit = fit_sweep(tmp_path, bootstrap=10, size="non_embedding")
    fit["preferred_law"]["name"] = "kaplan"  # whichever law the fit prefers is the one drawn
    name, loss = fitted_curve(fit)
    run_dir = next(p for p in sorted(tmp_path.iterdir()) if (p / "config.json").exists())
    run = RunData(run_dir.name, json.loads((run_dir / "config.json").read_text()), [], [])
    n = run.config["params"]["non_embedding"]
    tokens = np.array([1e6, 1e8])
    expected = [load_fit(fit).predict_loss(n, d, law="kaplan")[0] for d in tokens]
    assert name == "kaplan" and np.allclose(loss(run, tokens), expected, rtol=1e-9)
    fit["size"] = {"definition": "total"}  # a fit that counted every parameter is drawn at the total count
    _, loss = fitted_curve(fit)
    total = run.config["params"]["total"]
    assert total > n and np.allclose(loss(run, tokens), [load_fit(fit).predict_loss(total, d, law="kaplan")[0]
                                                         for d in tokens], rtol=1e-9)
    assert fitted_curve({"format": "nonsense"}) is None


def test_the_answer_says_when_the_sweep_was_still_learning_to_copy():
    from tlc.report.summary import plan_sentences

    point = {"width": 64, "depth": 2, "tokens": 5e6, "compression": {"method": "none", "int8": True},
             "loss": {"mean": 3.2, "low": 3.1, "high": 3.3}}
    plan = {"recommendation": point, "law": {"form": "power_sum", "status": "converged", "copying_under_way": False}}
    assert not any("learning to copy" in s for s in plan_sentences(plan))
    plan["law"]["copying_under_way"] = True
    assert plan_sentences(plan)[-1] == (
        "The sweep's models were still learning to copy from their context where it stopped: where this plan "
        "reaches past the measured tokens (see its warnings), its losses will likely come out lower than predicted.")


def test_the_sparsity_figure_draws_each_method_s_fitted_compression_model(tmp_path):
    import json

    import numpy as np

    from scaling import load_fit
    from tlc.report.data import collect, fitted_pruning
    from tlc.report.figures import loss_vs_sparsity

    sweep = write_synthetic_sweep(tmp_path / "s", with_plan=False)
    fit = json.loads((sweep / "fit.json").read_text())
    models = fitted_pruning(fit)
    assert set(models) == {"magnitude", "block", "gradual"}
    run = next(r for r in collect(sweep).runs if r.run_id == "w64-d2-s0")
    n, d = run.config["params"]["non_embedding"], run.final["tokens"]  # the fixture's fit counts non-embedding
    name, added = models["magnitude"]
    expected = load_fit(fit).predict_loss(n, d, method="magnitude", sparsity=0.7, law="chinchilla")[0] \
        - load_fit(fit).predict_loss(n, d, law="chinchilla")[0]
    assert name == fit["compression"]["pruning"]["magnitude"]["candidate"]
    assert np.allclose(added(run, np.array([0.7])), expected, rtol=1e-9)
    data = collect(sweep)
    with_models = loss_vs_sparsity(data)
    data.fit = None
    without = loss_vs_sparsity(data)
    dashed = [line for ax in with_models.axes for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 3 * len(data.runs) and not any(
        line.get_linestyle() == "--" for ax in without.axes for line in ax.lines)
    assert "(fitted: " in with_models.axes[0].get_title() and "fitted" not in without.axes[0].get_title()
    assert fitted_pruning({"format": "nonsense"}) == {}
