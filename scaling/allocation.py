"""Compute-optimal allocation: the model size and token count that minimise loss at C FLOPs.

Training compute is C = f(N)·D with f(N) the training FLOPs per token. Published laws take
f(N) = 6N (Kaplan et al. 2020 sec. 2.1; Hoffmann et al. 2022 sec. 3). A sweep knows better:
each run records its model's own FLOPs per token (the vocabulary projection and attention
included, 1.2-2.9x 6N on small shapes), and `flops_model` fits f(N) = k·N^gamma to them, so
the allocation uses the same C as training, the frontier and the planner. k = 6, gamma = 1
is C = 6ND.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from scaling.forms import ChinchillaParameters, LawForm

FLOPS_PER_PARAM_TOKEN = 6.0  # forward + backward, C = 6 N D


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs per token as a function of non-embedding parameters: f(N) = k·N^gamma."""

    k: float = FLOPS_PER_PARAM_TOKEN
    gamma: float = 1.0

    def per_token(self, n: np.ndarray | float) -> np.ndarray:
        return self.k * np.asarray(n, dtype=float) ** self.gamma


SIX_N = FlopsModel()  # C = 6ND, as published laws count


def flops_model(params, flops_per_token) -> tuple[FlopsModel, float]:
    """Least-squares fit of log f = log k + gamma·log N over a sweep's runs; the model and its
    largest relative error on them. One size only: gamma = 1 through that point."""
    log_n = np.log(np.asarray(params, dtype=float))
    log_f = np.log(np.asarray(flops_per_token, dtype=float))
    if np.ptp(log_n) == 0:
        gamma, log_k = 1.0, float(np.mean(log_f - log_n))
    else:
        gamma, log_k = (float(v) for v in np.polyfit(log_n, log_f, 1))
    model = FlopsModel(k=math.exp(log_k), gamma=gamma)
    error = float(np.max(np.abs(model.per_token(np.exp(log_n)) / np.exp(log_f) - 1.0)))
    return model, error


@dataclass(frozen=True)
class ChinchillaAllocation:
    """N_opt(C) = G·(C/k)^a and D_opt(C) = C / (k·N_opt^gamma) for a Chinchilla-form law under
    C = k·N^gamma·D; with k = 6, gamma = 1, D_opt = (C/6)^b / G (Hoffmann et al. 2022, eq. 4)."""

    a: float  # model-size exponent, beta / (alpha + gamma·beta)
    b: float  # token exponent, alpha / (alpha + gamma·beta) = 1 - gamma·a
    G: float  # with gamma = 1: (alpha·A / (beta·B))^(1 / (alpha + beta))
    flops: FlopsModel = SIX_N

    def optimal_params(self, compute: np.ndarray | float) -> np.ndarray:
        """Compute-optimal non-embedding parameter count at C training FLOPs."""
        return self.G * (np.asarray(compute, dtype=float) / self.flops.k) ** self.a

    def optimal_tokens(self, compute: np.ndarray | float) -> np.ndarray:
        """Compute-optimal training tokens at C training FLOPs."""
        return np.asarray(compute, dtype=float) / self.flops.per_token(self.optimal_params(compute))


def chinchilla_allocation(p: ChinchillaParameters, flops: FlopsModel = SIX_N) -> ChinchillaAllocation:
    """Closed-form allocation for L = E + A/N^alpha + B/D^beta under C = k·N^gamma·D.

    Along D = C/(k N^gamma), L = E + A N^-alpha + B k^beta N^(gamma beta) C^-beta; dL/dN = 0
    gives N_opt = H C^a with a = beta/(alpha + gamma beta), H = (alpha A/(gamma beta B k^beta))^(1/(alpha + gamma beta)).
    Written as G (C/k)^a, G = H k^a; for k = 6, gamma = 1 this is Hoffmann et al. 2022's eq. 4,
    G = (alpha A / (beta B))^(1/(alpha+beta)).
    """
    if not (p.alpha > 0 and p.beta > 0 and p.A > 0 and p.B > 0):
        raise ValueError(
            f"chinchilla parameters: alpha, beta, A and B must be > 0 for a finite optimum, got {p}"
        )
    k, gamma = flops.k, flops.gamma
    total = p.alpha + gamma * p.beta
    a = p.beta / total
    log_h = (math.log(p.alpha * p.A / (gamma * p.beta * p.B)) - p.beta * math.log(k)) / total
    return ChinchillaAllocation(a=a, b=p.alpha / total, G=math.exp(log_h + a * math.log(k)), flops=flops)


def optimal_allocation(
    form: LawForm, parameters, compute: float, min_params: float = 1.0, flops: FlopsModel = SIX_N
) -> tuple[float, float]:
    """(N_opt, D_opt) minimising ``form``'s loss at ``compute`` FLOPs, by bounded 1-D search over log N.

    Works for any L(N, D) form; N ranges from ``min_params`` to the size that one token's
    training costs ``compute``. A minimum on the edge of that range means the law has no
    interior optimum at this compute.
    """
    if not (math.isfinite(compute) and compute > float(flops.per_token(min_params))):
        raise ValueError(f"compute: must be finite and > one token at min_params, "
                         f"{float(flops.per_token(min_params)):g} FLOPs, got {compute!r}")
    theta = form.to_theta(parameters)
    log_largest = (math.log(compute / flops.k)) / flops.gamma  # N at which D = 1 token

    def tokens(log_n: float) -> float:
        return compute / float(flops.per_token(math.exp(log_n)))

    def log_loss_at(log_n: float) -> float:
        x = {"N": np.array([math.exp(log_n)]), "D": np.array([tokens(log_n)])}
        value, _ = form.log_loss(theta, x, jacobian=False)
        return float(value[0])

    result = minimize_scalar(
        log_loss_at, bounds=(math.log(min_params), log_largest), method="bounded", options={"xatol": 1e-7}
    )
    return math.exp(result.x), tokens(result.x)


def allocation_exponents(
    form: LawForm, parameters, compute: float, span: float = 10.0, flops: FlopsModel = SIX_N
) -> tuple[float, float]:
    """Local exponents (d log N_opt / d log C, d log D_opt / d log C) around ``compute``.

    Central difference over a factor ``span`` either side: the exact exponents for a
    Chinchilla-form law, and the local ones for forms whose optimum is not a power law.
    """
    n_low, d_low = optimal_allocation(form, parameters, compute / span, flops=flops)
    n_high, d_high = optimal_allocation(form, parameters, compute * span, flops=flops)
    width = 2.0 * math.log(span)
    return math.log(n_high / n_low) / width, math.log(d_high / d_low) / width
