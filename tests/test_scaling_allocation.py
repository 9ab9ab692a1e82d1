"""Compute-optimal allocation: closed form against brute force, published exponents, numeric forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scaling.allocation import allocation_exponents, chinchilla_allocation, optimal_allocation
from scaling.forms import PUBLISHED_CHINCHILLA, ChinchillaForm, ChinchillaParameters, KaplanForm, KaplanParameters
from scaling.synthetic import TINY_TRUTH


def _brute_force_params(form, parameters, compute: float) -> float:
    """N minimising the loss at fixed C = 6ND over a fine grid of N (0.02% steps)."""
    n = np.geomspace(1.0, compute / 6.0, 400_000)
    loss = form.predict(parameters, N=n, D=compute / (6.0 * n))
    return float(n[np.argmin(loss)])


@pytest.mark.parametrize("parameters", [PUBLISHED_CHINCHILLA, TINY_TRUTH], ids=["published", "tiny"])
@pytest.mark.parametrize("compute", [1e15, 1e19, 1e23])
def test_closed_form_matches_brute_force(parameters, compute):
    allocation = chinchilla_allocation(parameters)
    brute = _brute_force_params(ChinchillaForm(), parameters, compute)
    assert allocation.optimal_params(compute) == pytest.approx(brute, rel=0.005)
    assert allocation.optimal_params(compute) * allocation.optimal_tokens(compute) * 6 == pytest.approx(compute)


def test_published_chinchilla_exponents():
    p = PUBLISHED_CHINCHILLA
    allocation = chinchilla_allocation(p)
    assert allocation.a == pytest.approx(p.beta / (p.alpha + p.beta), rel=1e-12)
    assert allocation.b == pytest.approx(p.alpha / (p.alpha + p.beta), rel=1e-12)
    assert allocation.a == pytest.approx(0.4516, abs=1e-4)  # 0.28 / 0.62
    # At the Chinchilla budget (5.76e23 FLOPs) the law puts the optimum at tens of billions of parameters.
    assert 1e10 < allocation.optimal_params(5.76e23) < 1e11


def test_numeric_allocation_matches_closed_form():
    for compute in (1e16, 1e21):
        n_numeric, d_numeric = optimal_allocation(ChinchillaForm(), TINY_TRUTH, compute)
        closed = chinchilla_allocation(TINY_TRUTH)
        assert n_numeric == pytest.approx(closed.optimal_params(compute), rel=1e-5)
        assert d_numeric == pytest.approx(closed.optimal_tokens(compute), rel=1e-5)
    a, b = allocation_exponents(ChinchillaForm(), TINY_TRUTH, 1e18)
    assert a == pytest.approx(chinchilla_allocation(TINY_TRUTH).a, rel=1e-4)
    assert a + b == pytest.approx(1.0, abs=1e-9)


def test_numeric_allocation_for_kaplan_matches_its_stationary_point():
    # d/dN of (N_c/N)^r + 6 D_c N / C = 0 with r = alpha_N / alpha_D gives
    # N_opt^(r+1) = r N_c^r C / (6 D_c): exponent 1/(r+1) = alpha_D / (alpha_N + alpha_D).
    p = KaplanParameters(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)
    r = p.alpha_N / p.alpha_D
    for compute in (1e18, 1e22):
        n_opt, _ = optimal_allocation(KaplanForm(), p, compute)
        expected = (r * p.N_c**r * compute / (6 * p.D_c)) ** (1 / (r + 1))
        assert n_opt == pytest.approx(expected, rel=1e-4)
    a, _ = allocation_exponents(KaplanForm(), p, 1e20)
    assert a == pytest.approx(p.alpha_D / (p.alpha_N + p.alpha_D), rel=1e-4)


def test_allocation_refuses_degenerate_laws_and_budgets():
    with pytest.raises(ValueError, match="alpha, beta, A and B must be > 0"):
        chinchilla_allocation(ChinchillaParameters(E=1.7, A=400.0, B=400.0, alpha=0.0, beta=0.3))
    with pytest.raises(ValueError, match="compute: must be finite"):
        optimal_allocation(ChinchillaForm(), TINY_TRUTH, math.nan)
    with pytest.raises(ValueError, match="compute: must be finite"):
        optimal_allocation(ChinchillaForm(), TINY_TRUTH, 1.0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    alpha=st.floats(0.1, 1.0),
    beta=st.floats(0.1, 1.0),
    log_a=st.floats(0.0, 10.0),
    log_b=st.floats(0.0, 10.0),
    log_compute=st.floats(30.0, 55.0),
)
def test_closed_form_matches_numeric_search_for_any_law(alpha, beta, log_a, log_b, log_compute):
    p = ChinchillaParameters(E=1.5, A=math.exp(log_a), B=math.exp(log_b), alpha=alpha, beta=beta)
    compute = math.exp(log_compute)
    closed = chinchilla_allocation(p).optimal_params(compute)
    assume(10.0 < closed < compute / 60.0)  # an interior optimum, away from the search's ends
    n_numeric, _ = optimal_allocation(ChinchillaForm(), p, compute)
    assert n_numeric == pytest.approx(closed, rel=1e-4)
