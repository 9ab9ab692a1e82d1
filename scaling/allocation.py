"""Compute-optimal allocation: the model size and token count that minimise loss at C FLOPs.

Training compute is taken as C = 6·N·D (Kaplan et al. 2020 sec. 2.1; Hoffmann et al. 2022
sec. 3), so D = C / (6N) and the loss at fixed C is a function of N alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from scaling.forms import ChinchillaParameters, LawForm

FLOPS_PER_PARAM_TOKEN = 6.0  # forward + backward, C = 6 N D


@dataclass(frozen=True)
class ChinchillaAllocation:
    """N_opt(C) = G·(C/6)^a and D_opt(C) = (C/6)^b / G for a Chinchilla-form law."""

    a: float  # model-size exponent, beta / (alpha + beta)
    b: float  # token exponent, alpha / (alpha + beta)
    G: float  # (alpha·A / (beta·B))^(1 / (alpha + beta))

    def optimal_params(self, compute: np.ndarray | float) -> np.ndarray:
        """Compute-optimal non-embedding parameter count at C training FLOPs."""
        return self.G * (np.asarray(compute, dtype=float) / FLOPS_PER_PARAM_TOKEN) ** self.a

    def optimal_tokens(self, compute: np.ndarray | float) -> np.ndarray:
        """Compute-optimal training tokens at C training FLOPs."""
        return (np.asarray(compute, dtype=float) / FLOPS_PER_PARAM_TOKEN) ** self.b / self.G


def chinchilla_allocation(p: ChinchillaParameters) -> ChinchillaAllocation:
    """Closed-form allocation for L = E + A/N^alpha + B/D^beta under C = 6ND.

    Hoffmann et al. 2022, eq. 4 (derived in their appendix): dL/dN = 0 along D = C/(6N) gives
    N_opt = G (C/6)^(beta/(alpha+beta)) with G = (alpha A / (beta B))^(1/(alpha+beta)).
    """
    if not (p.alpha > 0 and p.beta > 0 and p.A > 0 and p.B > 0):
        raise ValueError(
            f"chinchilla parameters: alpha, beta, A and B must be > 0 for a finite optimum, got {p}"
        )
    total = p.alpha + p.beta
    return ChinchillaAllocation(
        a=p.beta / total,
        b=p.alpha / total,
        G=(p.alpha * p.A / (p.beta * p.B)) ** (1.0 / total),
    )


def optimal_allocation(form: LawForm, parameters, compute: float, min_params: float = 1.0) -> tuple[float, float]:
    """(N_opt, D_opt) minimising ``form``'s loss at ``compute`` FLOPs, by bounded 1-D search over log N.

    Works for any L(N, D) form; N ranges from ``min_params`` to C/6 (one token). A minimum on
    the edge of that range means the law has no interior optimum at this compute.
    """
    if not (math.isfinite(compute) and compute > FLOPS_PER_PARAM_TOKEN * min_params):
        raise ValueError(f"compute: must be finite and > 6 * min_params = {6 * min_params:g} FLOPs, got {compute!r}")
    theta = form.to_theta(parameters)
    log_budget = math.log(compute / FLOPS_PER_PARAM_TOKEN)  # log(N·D)

    def log_loss_at(log_n: float) -> float:
        x = {"N": np.array([math.exp(log_n)]), "D": np.array([math.exp(log_budget - log_n)])}
        value, _ = form.log_loss(theta, x, jacobian=False)
        return float(value[0])

    result = minimize_scalar(
        log_loss_at, bounds=(math.log(min_params), log_budget), method="bounded", options={"xatol": 1e-7}
    )
    n_opt = math.exp(result.x)
    return n_opt, compute / (FLOPS_PER_PARAM_TOKEN * n_opt)


def allocation_exponents(form: LawForm, parameters, compute: float, span: float = 10.0) -> tuple[float, float]:
    """Local exponents (d log N_opt / d log C, d log D_opt / d log C) around ``compute``.

    Central difference over a factor ``span`` either side: the exact exponents for a
    Chinchilla-form law, and the local ones for forms whose optimum is not a power law.
    """
    n_low, d_low = optimal_allocation(form, parameters, compute / span)
    n_high, d_high = optimal_allocation(form, parameters, compute * span)
    width = 2.0 * math.log(span)
    return math.log(n_high / n_low) / width, math.log(d_high / d_low) / width
