"""Every form's analytic Jacobian and the Huber objective's gradient against finite differences."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from scaling.compression import INT8_CANDIDATES, PRUNING_CANDIDATES
from scaling.fitting import huber_objective
from scaling.forms import (
    PUBLISHED_CHINCHILLA,
    ChinchillaForm,
    KaplanForm,
    KaplanParameters,
    LearningCurveForm,
    LearningCurveParameters,
    PowerSumForm,
    PowerSumParameters,
    chinchilla_loss,
    kaplan_loss,
    learning_curve_loss,
)

RNG = np.random.default_rng(1234)
N = np.geomspace(1e5, 1e9, 9)
D = np.geomspace(1e7, 1e11, 9)[::-1]
C = 6 * N * D
SPARSITY = np.linspace(0.1, 0.95, 9)
DENSE = np.linspace(3.0, 5.0, 9)
COVARIATES = {"N": N, "D": D, "C": C, "sparsity": SPARSITY, "dense_loss": DENSE,
              "tokens_per_param": np.geomspace(1.0, 200.0, 9)}

# (form, a point in its fitted coordinates away from any bound)
CASES = [
    (ChinchillaForm(), np.array([6.0, 6.0, 0.5, 0.34, 0.28])),
    (ChinchillaForm(), np.array([3.0, 9.0, -0.2, 0.2, 0.5])),
    (KaplanForm(), np.array([31.8, 30.5, 0.076, 0.103])),
    (KaplanForm(), np.array([20.0, 25.0, 0.3, 0.2])),
    (PowerSumForm(), np.array([12.2, 12.9, 0.69, 0.60, 0.27])),
    (PowerSumForm(), np.array([5.0, 9.0, 0.3, 0.5, 0.8])),
    (LearningCurveForm(), np.array([0.9, 8.0, 0.2])),
    *[(form, np.array([-2.0, 1.3, 0.4, 0.3, 0.2])[: len(form.fitted)]) for form in PRUNING_CANDIDATES.values()],
    *[(form, np.array([-4.0, 0.2, 0.3])[: len(form.fitted)]) for form in INT8_CANDIDATES.values()],
]
IDS = [f"{form.name}-{i}" for i, (form, _) in enumerate(CASES)]


def _covariates(form):
    return {c: COVARIATES[c] for c in form.covariates}


@pytest.mark.parametrize("form, theta", CASES, ids=IDS)
def test_jacobian_matches_finite_differences(form, theta):
    x = _covariates(form)
    _, jac = form.log_loss(theta, x)
    assert jac.shape == (len(N), len(theta))
    for p in range(len(theta)):
        step = 1e-6 * max(1.0, abs(theta[p]))
        up, down = theta.copy(), theta.copy()
        up[p] += step
        down[p] -= step
        numeric = (form.log_loss(up, x, jacobian=False)[0] - form.log_loss(down, x, jacobian=False)[0]) / (2 * step)
        np.testing.assert_allclose(jac[:, p], numeric, rtol=1e-5, atol=1e-7, err_msg=f"d/d{form.fitted[p].name}")


@pytest.mark.parametrize("form, theta", CASES, ids=IDS)
def test_batched_thetas_match_one_at_a_time(form, theta):
    x = _covariates(form)
    batch = theta + 0.01 * RNG.standard_normal((4, len(theta)))
    values, jacs = form.log_loss(batch, x)
    assert values.shape == (4, len(N)) and jacs.shape == (4, len(N), len(theta))
    for row, value, jac in zip(batch, values, jacs):
        single_value, single_jac = form.log_loss(row, x)
        np.testing.assert_allclose(value, single_value, rtol=1e-12)
        np.testing.assert_allclose(jac, single_jac, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("form, theta", CASES, ids=IDS)
def test_parameters_round_trip(form, theta):
    parameters = form.to_parameters(theta)
    assert dataclasses.is_dataclass(parameters)
    np.testing.assert_allclose(form.to_theta(parameters), theta, rtol=1e-12)


@pytest.mark.parametrize("form, theta", CASES, ids=IDS)
def test_huber_objective_gradient(form, theta):
    x = _covariates(form)
    truth, _ = form.log_loss(theta, x, jacobian=False)
    # Residuals on both arms of the Huber: within delta of the truth, and far outside it.
    log_observed = truth + np.where(np.arange(len(N)) % 2 == 0, 3e-4, 2e-2) * RNG.choice([-1, 1], len(N))
    weights = RNG.integers(0, 3, len(N)).astype(float) + 0.5
    start = theta + 0.002
    _, grad = huber_objective(form, start, x, log_observed, weights)
    for p in range(len(theta)):
        step = 1e-7 * max(1.0, abs(start[p]))
        up, down = start.copy(), start.copy()
        up[p] += step
        down[p] -= step
        numeric = (
            huber_objective(form, up, x, log_observed, weights, gradient=False)[0]
            - huber_objective(form, down, x, log_observed, weights, gradient=False)[0]
        ) / (2 * step)
        assert grad[p] == pytest.approx(numeric, rel=1e-4, abs=1e-5), form.fitted[p].name


def test_power_sum_matches_its_equation_and_is_kaplans_law_at_beta_one():
    p = PowerSumParameters(A=3.4e5, B=6.6e5, alpha=0.73, beta=0.62, gamma=0.26)
    expected = (p.A / N**p.alpha + p.B / D**p.beta) ** p.gamma
    np.testing.assert_allclose(PowerSumForm().predict(p, N=N, D=D), expected, rtol=1e-12)
    k = KaplanParameters(N_c=8.8e13, D_c=5.4e13, alpha_N=0.076, alpha_D=0.095)
    ratio = k.alpha_N / k.alpha_D
    as_sum = PowerSumParameters(A=k.N_c**ratio, B=k.D_c, alpha=ratio, beta=1.0, gamma=k.alpha_D)
    np.testing.assert_allclose(PowerSumForm().predict(as_sum, N=N, D=D), kaplan_loss(N, D, k), rtol=1e-10)


def test_chinchilla_matches_its_equation():
    p = PUBLISHED_CHINCHILLA
    loss = ChinchillaForm().predict(p, N=7e10, D=1.4e12)
    assert loss == pytest.approx(p.E + p.A / 7e10**p.alpha + p.B / 1.4e12**p.beta, rel=1e-12)
    np.testing.assert_allclose(ChinchillaForm().predict(p, N=N, D=D), chinchilla_loss(N, D, p), rtol=1e-12)


def test_kaplan_matches_its_equation():
    p = KaplanParameters(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)
    expected = ((p.N_c / 1e8) ** (p.alpha_N / p.alpha_D) + p.D_c / 1e10) ** p.alpha_D
    assert KaplanForm().predict(p, N=1e8, D=1e10) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(KaplanForm().predict(p, N=N, D=D), kaplan_loss(N, D, p), rtol=1e-12)


def test_learning_curve_matches_its_equation():
    p = LearningCurveParameters(E=2.0, A=50.0, alpha=0.1)
    assert LearningCurveForm().predict(p, C=1e15) == pytest.approx(2.0 + 50.0 * 1e15**-0.1, rel=1e-12)
    np.testing.assert_allclose(LearningCurveForm().predict(p, C=C), learning_curve_loss(C, p), rtol=1e-12)


def test_compression_forms_add_to_the_dense_loss():
    odds = PRUNING_CANDIDATES["odds_power"]
    p = odds.parameters_type(c=0.1, gamma=1.5, delta=0.3)
    loss = odds.predict(p, sparsity=0.75, N=1e8, dense_loss=3.0)
    assert loss == pytest.approx(3.0 + 0.1 * 3.0**1.5 * 100.0**-0.3, rel=1e-12)
    density = PRUNING_CANDIDATES["density_power"]
    loss = density.predict(p, sparsity=0.75, N=1e8, dense_loss=3.0)
    assert loss == pytest.approx(3.0 + 0.1 * (0.25**-1.5 - 1) * 100.0**-0.3, rel=1e-12)


def test_curved_pruning_matches_its_equation_and_never_falls_with_sparsity():
    curved = PRUNING_CANDIDATES["odds_curved"]
    p = curved.parameters_type(c=0.1, gamma=1.5, delta=0.3, kappa=0.6)
    x = math.log(3.0)  # sparsity 0.75
    loss = curved.predict(p, sparsity=0.75, N=1e8, dense_loss=3.0)
    assert loss == pytest.approx(3.0 + 0.1 * math.exp(1.5 * x - 0.3 * x**2) * 100.0**-0.3, rel=1e-12)
    # the slope of log dL in the log-odds falls to 0 at x = gamma/kappa = 2.5 (s = 0.924) and stays there
    s = np.linspace(0.05, 0.999, 400)
    added = curved.predict(p, sparsity=s, N=np.full_like(s, 1e8), dense_loss=np.full_like(s, 3.0)) - 3.0
    assert (np.diff(added) >= 0).all()
    peak = 0.1 * math.exp(1.5**2 / 1.2) * 100.0**-0.3
    assert added[-1] == pytest.approx(peak, rel=1e-12) and added[s < 0.92].max() < peak
    tokens = PRUNING_CANDIDATES["odds_curved_tokens"]
    q = tokens.parameters_type(c=0.1, gamma=1.5, delta=0.3, epsilon=0.5, kappa=0.6)
    loss = tokens.predict(q, sparsity=0.75, N=1e8, dense_loss=3.0, tokens_per_param=80.0)
    assert loss == pytest.approx(3.0 + 0.1 * math.exp(1.5 * x - 0.3 * x**2) * 100.0**-0.3 * 4.0**0.5, rel=1e-12)
