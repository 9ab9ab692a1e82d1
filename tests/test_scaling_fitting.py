"""Fitting recovers known parameters, reports its status honestly and refuses bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scaling.compression import INT8_CANDIDATES, PRUNING_CANDIDATES
from scaling.fitting import fit_law
from scaling.forms import (
    ChinchillaForm,
    KaplanForm,
    KaplanParameters,
    LearningCurveForm,
    LearningCurveParameters,
    PowerSumForm,
    PowerSumParameters,
)
from scaling.observations import CompressedVariant, RunCurve, SweepObservations
from scaling.synthetic import TINY_TRUTH, synthetic_sweep


def _relative_errors(fitted, truth) -> dict[str, float]:
    t, f = dataclasses.asdict(truth), dataclasses.asdict(fitted)
    return {k: abs(f[k] / t[k] - 1.0) if t[k] else abs(f[k]) for k in t}


def test_chinchilla_recovered_exactly_without_noise():
    table = synthetic_sweep(noise=0.0).points()
    fit = fit_law(ChinchillaForm(), {"N": table.N, "D": table.D}, table.loss)
    assert fit.status == "converged"
    assert max(_relative_errors(fit.parameters, TINY_TRUTH).values()) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chinchilla_recovered_within_2_percent_with_noise(seed):
    # 0.1% log-normal noise on every loss, sizes 1e5..1e10: A, the least identified
    # parameter, moves about 1.5% at worst over seeds.
    table = synthetic_sweep(noise=0.001, seed=seed, max_params=1e10).points()
    fit = fit_law(ChinchillaForm(), {"N": table.N, "D": table.D}, table.loss)
    assert fit.status == "converged"
    errors = _relative_errors(fit.parameters, TINY_TRUTH)
    assert max(errors.values()) < 0.02, errors


def test_kaplan_recovered_exactly_without_noise():
    truth = KaplanParameters(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)
    n = np.repeat(np.geomspace(1e5, 1e9, 10), 15)
    d = np.tile(np.geomspace(1e7, 1e11, 15), 10)
    form = KaplanForm()
    fit = fit_law(form, {"N": n, "D": d}, form.predict(truth, N=n, D=d))
    assert fit.status == "converged"
    assert max(_relative_errors(fit.parameters, truth).values()) < 1e-4


def test_kaplan_recovered_within_2_percent_with_noise():
    truth = KaplanParameters(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)
    n = np.repeat(np.geomspace(1e5, 1e10, 12), 20)
    d = np.tile(np.geomspace(1e7, 1e12, 20), 12)
    form = KaplanForm()
    loss = form.predict(truth, N=n, D=d) * np.exp(0.001 * np.random.default_rng(0).standard_normal(n.size))
    fit = fit_law(form, {"N": n, "D": d}, loss)
    errors = _relative_errors(fit.parameters, truth)
    assert fit.status == "converged" and max(errors.values()) < 0.02, errors


def test_power_sum_recovered_without_noise_and_within_2_percent_with_it():
    # the law the tiny sweep's depth-2 runs fitted: the outer exponent trades against the inner two
    truth = PowerSumParameters(A=3.4e5, B=6.6e5, alpha=0.73, beta=0.62, gamma=0.26)
    n = np.repeat(np.geomspace(5e4, 5e6, 8), 12)
    d = np.tile(np.geomspace(2e5, 5e7, 12), 8)
    form = PowerSumForm()
    exact = form.predict(truth, N=n, D=d)
    fit = fit_law(form, {"N": n, "D": d}, exact)
    assert fit.status == "converged" and max(_relative_errors(fit.parameters, truth).values()) < 1e-3
    noisy = exact * np.exp(0.001 * np.random.default_rng(0).standard_normal(n.size))
    fit = fit_law(form, {"N": n, "D": d}, noisy)
    predicted = form.predict(fit.parameters, N=n, D=d)
    assert fit.status == "converged" and np.max(np.abs(predicted / exact - 1)) < 0.02


def test_learning_curve_recovered():
    truth = LearningCurveParameters(E=2.5, A=300.0, alpha=0.15)
    compute = np.geomspace(1e12, 1e18, 25)
    form = LearningCurveForm()
    fit = fit_law(form, {"C": compute}, form.predict(truth, C=compute))
    assert fit.status == "converged"
    assert max(_relative_errors(fit.parameters, truth).values()) < 1e-4


@pytest.mark.parametrize("name", sorted(PRUNING_CANDIDATES))
def test_pruning_forms_recovered_without_noise(name):
    form = PRUNING_CANDIDATES[name]
    tokens = "tokens_per_param" in form.covariates  # the D/N forms: a third covariate and exponent
    extra = {"epsilon": 0.4} if tokens else {}
    if "curved" in name:
        extra["kappa"] = 0.3
    truth = form.parameters_type(c=0.08, gamma=1.5, delta=0.0 if "size_free" in name else 0.3, **extra)
    s = np.tile([0.2, 0.4, 0.6, 0.8, 0.9], 5)
    n = np.repeat(np.geomspace(1e5, 1e8, 5), 5)
    dense = 6.0 - 0.2 * np.log10(n)
    x = {"sparsity": s, "N": n, "dense_loss": dense}
    if tokens:
        x["tokens_per_param"] = np.tile([2.0, 10.0, 40.0, 120.0, 5.0], 5)[np.random.default_rng(0).permutation(25)]
    loss = form.predict(truth, **x)
    fit = fit_law(form, x, loss)
    assert fit.status == "converged"
    assert max(_relative_errors(fit.parameters, truth).values()) < 1e-4


@pytest.mark.parametrize("name", sorted(INT8_CANDIDATES))
def test_int8_forms_recovered_without_noise(name):
    form = INT8_CANDIDATES[name]
    tokens = "tokens_per_param" in form.covariates  # the D/N form: a second covariate and exponent
    extra = {"epsilon": 0.4} if tokens else {}
    truth = form.parameters_type(c=0.02, delta=0.0 if name == "constant" else 0.25, **extra)
    n = np.geomspace(1e5, 1e8, 6)
    dense = 6.0 - 0.2 * np.log10(n)
    x = {"N": n, "dense_loss": dense}
    if tokens:
        x["tokens_per_param"] = np.array([40.0, 2.0, 120.0, 10.0, 5.0, 60.0])
    fit = fit_law(form, x, form.predict(truth, **x))
    assert fit.status == "converged"
    assert max(_relative_errors(fit.parameters, truth).values()) < 1e-4


def test_weights_drop_points():
    table = synthetic_sweep(noise=0.0).points()
    loss = table.loss.copy()
    loss[:20] *= 1.5  # corrupt the first run...
    weights = np.ones_like(loss)
    weights[:20] = 0.0  # ...and leave it out
    fit = fit_law(ChinchillaForm(), {"N": table.N, "D": table.D}, loss, weights)
    assert fit.n_points == len(loss) - 20
    assert max(_relative_errors(fit.parameters, TINY_TRUTH).values()) < 1e-4


def test_inside_reuse_fits_a_fit_with_the_same_inputs_is_the_earlier_result_and_nothing_else_is(monkeypatch):
    import scaling.fitting as fitting

    monkeypatch.setattr(fitting, "_reused", None)  # not the test session's reuse (conftest.fits_made_once)
    table = synthetic_sweep(n_runs=4, points_per_run=5, noise=0.01).points()
    x, form = {"N": table.N, "D": table.D}, ChinchillaForm()
    held = np.ones_like(table.loss)
    held[:5] = 0.0
    runs = []
    minimize = fitting.minimize
    monkeypatch.setattr(fitting, "minimize", lambda *a, **k: runs.append(1) or minimize(*a, **k))
    with fitting.reuse_fits():
        first = fit_law(form, x, table.loss, held, grid_starts=2)
        optimised = len(runs)
        assert fit_law(form, {"N": table.N.copy(), "D": table.D.copy()}, table.loss.copy(), held.copy(),
                       grid_starts=2) is first and len(runs) == optimised  # equal inputs, other arrays
        other = fit_law(form, x, table.loss, np.ones_like(held), grid_starts=2)  # other weights: a fit of its own
        assert len(runs) > optimised and other.n_points == first.n_points + 5
    again = fit_law(form, x, table.loss, held, grid_starts=2)  # outside the block: fitted again, to the same result
    assert again is not first and again.theta == first.theta


def test_unidentified_law_reports_hit_bound():
    # Loss does not depend on N at all: the best fit drives alpha to its bound at 0 (or A to -inf).
    n = np.repeat(np.geomspace(1e5, 1e8, 4), 10)
    d = np.tile(np.geomspace(1e7, 1e10, 10), 4)
    loss = 2.0 + 300.0 / d**0.3
    fit = fit_law(ChinchillaForm(), {"N": n, "D": d}, loss)
    assert fit.status == "hit_bound"


def test_iteration_limit_reports_not_converged(monkeypatch):
    import scaling.fitting as fitting

    monkeypatch.setitem(fitting._LBFGSB_OPTIONS, "maxiter", 2)
    table = synthetic_sweep(noise=0.01).points()
    fit = fit_law(ChinchillaForm(), {"N": table.N, "D": table.D}, table.loss, grid_starts=1)
    assert fit.status == "not_converged"


@pytest.mark.parametrize("bad", [-1.0, 0.0, np.nan, np.inf])
def test_bad_losses_are_named(bad):
    table = synthetic_sweep(n_runs=4, points_per_run=5).points()
    loss = table.loss.copy()
    loss[3] = bad
    with pytest.raises(ValueError, match=r"loss: must be finite and > 0, got .* at index 3 \(1 bad\)"):
        fit_law(ChinchillaForm(), {"N": table.N, "D": table.D}, loss)


def test_missing_and_misshapen_covariates_are_named():
    table = synthetic_sweep(n_runs=4, points_per_run=5).points()
    with pytest.raises(ValueError, match="D: missing"):
        fit_law(ChinchillaForm(), {"N": table.N}, table.loss)
    with pytest.raises(ValueError, match="N: shape"):
        fit_law(ChinchillaForm(), {"N": table.N[:-1], "D": table.D}, table.loss)
    with pytest.raises(ValueError, match="weights"):
        fit_law(ChinchillaForm(), {"N": table.N, "D": table.D}, table.loss, -np.ones_like(table.loss))


def test_observations_validate_their_fields():
    with pytest.raises(ValueError, match="run a: val_loss must be finite and > 0, got np.float64\\(nan\\)"):
        RunCurve("a", 1e6, [1e6, 2e6], [6e12, 1.2e13], [4.0, float("nan")])
    with pytest.raises(ValueError, match="run a: params must be > 0"):
        RunCurve("a", -5, [1e6], [6e12], [4.0])
    with pytest.raises(ValueError, match="equal lengths"):
        RunCurve("a", 1e6, [1e6, 2e6], [6e12], [4.0])
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
        CompressedVariant("a", "magnitude", 1.0, 32, 4.0)
    with pytest.raises(ValueError, match="bits must be 32, 8 or 4"):
        CompressedVariant("a", "magnitude", 0.5, 16, 4.0)
    run = RunCurve("a", 1e6, [1e6], [6e12], [4.0])
    with pytest.raises(ValueError, match="duplicates"):
        SweepObservations(runs=(run, run))
    with pytest.raises(ValueError, match="not in the sweep"):
        SweepObservations(runs=(run,), variants=(CompressedVariant("b", "magnitude", 0.5, 32, 4.5),))


def test_a_single_run_is_refused():
    sweep = synthetic_sweep(n_runs=1, points_per_run=20)
    with pytest.raises(ValueError, match="1 run\\(s\\); a scaling law needs runs of at least 3 sizes"):
        sweep.check_identifiable()
