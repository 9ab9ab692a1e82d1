"""Compression models with a tokens-per-parameter term, fitted from one model compressed at several D."""

from __future__ import annotations

import numpy as np
import pytest

import scaling
from scaling.compression import N_REF, TPP_REF
from scaling.forms import ChinchillaForm
from scaling.synthetic import TINY_TRUTH

PRUNE = {"c": 0.05, "gamma": 1.5, "delta": 0.3, "epsilon": 0.4}
INT8 = {"c": 0.03, "delta": 0.2, "epsilon": 0.6}  # large enough to measure above the noise
TOKENS_PER_PARAM = (2.0, 5.0, 12.0, 30.0, 80.0)
SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def odds_power(s: float) -> float:
    return (s / (1 - s)) ** PRUNE["gamma"]


def density_power(s: float) -> float:
    return (1 - s) ** -PRUNE["gamma"] - 1


def sweep(branches: bool, noise: float = 0.001, seed: int = 0, sparsity_term=odds_power) -> scaling.SweepObservations:
    """Five sizes; each compressed at the end of every cooldown branch (``branches``) or only at its final D."""
    rng = np.random.default_rng(seed)
    law = ChinchillaForm()
    runs, variants = [], []
    for i, n in enumerate(np.geomspace(2e5, 2e7, 5)):
        D = np.array(TOKENS_PER_PARAM) * n
        loss = law.predict(TINY_TRUTH, N=n, D=D)
        runs.append(scaling.RunCurve(run_id=f"r{i}", params=float(n), tokens=D, train_flops=6 * n * D,
                                     val_loss=loss, finished_tokens=D, finished_flops=6 * n * D, finished_loss=loss))
        for d, dense in list(zip(D, loss))[(0 if branches else -1):]:
            tpp = d / n
            for s in SPARSITIES:
                added = PRUNE["c"] * sparsity_term(s) * (n / N_REF) ** -PRUNE["delta"] \
                    * (tpp / TPP_REF) ** PRUNE["epsilon"]
                measured = (dense + added) * np.exp(noise * rng.standard_normal())
                variants.append(scaling.CompressedVariant(f"r{i}", "magnitude", s, 32, float(measured), float(dense),
                                                          float(d)))
            added = INT8["c"] * (n / N_REF) ** -INT8["delta"] * (tpp / TPP_REF) ** INT8["epsilon"]
            measured = (dense + added) * np.exp(noise * rng.standard_normal())
            variants.append(scaling.CompressedVariant(f"r{i}", "none", 0.0, 8, float(measured), float(dense), float(d)))
    return scaling.SweepObservations(runs=tuple(runs), variants=tuple(variants))


def test_checkpoints_at_several_tokens_identify_the_tokens_term():
    fit = scaling.fit_sweep_observations(sweep(branches=True), bootstrap=10, final_only=True)
    pruning, int8 = fit["compression"]["pruning"]["magnitude"], fit["compression"]["int8"]
    assert pruning["candidate"] == "odds_power_tokens" and int8["candidate"] == "size_power_tokens"
    assert pruning["parameters"]["epsilon"]["value"] == pytest.approx(PRUNE["epsilon"], abs=0.05)
    assert int8["parameters"]["epsilon"]["value"] == pytest.approx(INT8["epsilon"], abs=0.1)
    fitted = scaling.load_fit(fit)
    n = 1e6
    dense_short, _, _ = fitted.predict_loss(n, 5 * n)
    dense_long, _, _ = fitted.predict_loss(n, 100 * n)
    pruned_short, _, _ = fitted.predict_loss(n, 5 * n, "magnitude", 0.6)
    pruned_long, _, _ = fitted.predict_loss(n, 100 * n, "magnitude", 0.6)
    assert pruned_long - dense_long > 2 * (pruned_short - dense_short)  # over-trained models compress worse


def test_frantar_s_density_form_gets_its_data_term():
    """density_power_tokens: Frantar et al.'s sparsity coefficient (1-s)^-gamma - 1 with a D/N term."""
    fit = scaling.fit_sweep_observations(sweep(branches=True, sparsity_term=density_power), bootstrap=10,
                                         final_only=True)
    pruning = fit["compression"]["pruning"]["magnitude"]
    assert pruning["candidate"] == "density_power_tokens"
    for name in ("gamma", "delta", "epsilon"):
        assert pruning["parameters"][name]["value"] == pytest.approx(PRUNE[name], abs=0.05), name


def test_one_checkpoint_per_run_leaves_the_tokens_term_out():
    fit = scaling.fit_sweep_observations(sweep(branches=False), bootstrap=10, final_only=True)
    assert fit["compression"]["pruning"]["magnitude"]["candidate"] not in ("odds_power_tokens", "density_power_tokens")
    assert fit["compression"]["int8"]["candidate"] != "size_power_tokens"


def test_the_planner_charges_more_pruning_loss_to_an_over_trained_model(tmp_path):
    import json

    from tlc.plan.law import load_plan_law

    path = tmp_path / "fit.json"
    path.write_text(json.dumps(scaling.fit_sweep_observations(sweep(branches=True), bootstrap=10, final_only=True)))
    law = load_plan_law(None, str(path))
    n, D = 1e6, np.array([5e6, 1e8])
    added = law.loss(n, D, "magnitude", 0.6, False) - law.loss(n, D, "none", 0.0, False)
    expected = PRUNE["c"] * 1.5 ** PRUNE["gamma"] * (D / n / TPP_REF) ** PRUNE["epsilon"]
    assert added == pytest.approx(expected, rel=0.05) and added[1] > 3 * added[0]


def test_compress_branches_writes_rows_at_each_branch_tokens(tmp_path, small_corpus):
    import json

    from conftest import TINY_SHAPE, run_tlc
    from tlc.fit.observations import read_run

    run = tmp_path / "wsd"
    run_tlc("train", *TINY_SHAPE, "--tokens", str(48 * 8 * 32), "--micro-batch", "8", "--evals", "4",
            "--precision", "fp32", "--data", small_corpus, "--out", run, "--schedule", "wsd",
            "--cooldowns", "0.5,1.0", "--no-progress", timeout=900, check=True)
    branches = sorted((run / "branches").iterdir(), key=lambda p: int(p.name))
    assert len(branches) == 2
    run_tlc("compress", run, "--branches", "--methods", "magnitude", "--sparsity", "0.5", "--latency-repeats", "1",
            timeout=900, check=True)
    rows = [json.loads(line) for line in (branches[0] / "compress.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in rows} == {"dense", "none-int8", "magnitude-s50", "magnitude-s50-int8"}
    assert all(r["tokens"] == int(branches[0].name) for r in rows)
    # the last branch's model is the run's own model/: compressed once, with the run, and counted from its rows
    assert not (branches[1] / "compress.jsonl").exists() and (run / "compress.jsonl").exists()
    _, variants, _ = read_run(run)
    assert sorted({v.tokens for v in variants if v.tokens is not None}) == [float(branches[0].name)]
    assert len([v for v in variants if v.tokens is None]) == 4
