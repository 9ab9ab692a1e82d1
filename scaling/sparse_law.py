"""Frantar et al.'s joint law in sparsity, non-zero parameters and data, for models trained sparse.

Source: Frantar, Riquelme, Houlsby, Alistarh, Evci 2023, "Scaling Laws for Sparsely-Connected
Foundation Models", eq. 1: L(S, N, D) = (a_S (1 - S)^b_S + c_S) · N^-b_N + a_D · D^-b_D + c, with
N the non-zero parameters and S the fraction of weights that are zero. At S = 0 it is
Chinchilla's law with A = a_S + c_S; sparsity scales the model-size term by a factor that
saturates at c_S / (a_S + c_S) as S -> 1. Fitted in log space like every law here:
log L = LSE(LSE(log a_S + b_S log(1 - S), log c_S) - b_N log N, log a_D - b_D log D, log c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling.forms import LawForm, ParameterSpec, _col, _softmax_lse


@dataclass(frozen=True)
class FrantarParameters:
    """L(S, N, D) = (a_S (1 - S)^b_S + c_S) N^-b_N + a_D D^-b_D + c."""

    a_S: float  # sparsity-dependent part of the model-size coefficient
    b_S: float  # how fast that part falls with density (1 - S)
    c_S: float  # the model-size coefficient's floor as S -> 1
    b_N: float  # exponent of non-zero parameters
    a_D: float  # data coefficient
    b_D: float  # data exponent
    c: float  # irreducible loss, nats per token


class FrantarForm(LawForm):
    """Frantar et al. 2023's sparse law (see the module docstring); covariates 1 - S, N (non-zero), D."""

    name = "frantar"
    equation = "L(S, N, D) = (a_S (1 - S)^b_S + c_S) / N^b_N + a_D / D^b_D + c"
    source = "Frantar et al. 2023, eq. 1 (N non-zero parameters, S sparsity)"
    covariates = ("density", "N", "D")  # density = 1 - S, which is > 0 as every covariate must be
    fitted = (
        ParameterSpec("log_a_S", -20.0, 40.0, (0.0, 5.0, 10.0)),
        ParameterSpec("b_S", -5.0, 10.0, (0.5, 2.0)),
        ParameterSpec("log_c_S", -20.0, 40.0, (0.0, 5.0, 10.0)),
        ParameterSpec("b_N", 0.0, 3.0, (0.2, 0.5)),
        ParameterSpec("log_a_D", -20.0, 40.0, (0.0, 5.0, 10.0)),
        ParameterSpec("b_D", 0.0, 3.0, (0.2, 0.5)),
        ParameterSpec("log_c", -10.0, 4.0, (0.0, 0.5)),
    )
    parameters_type = FrantarParameters

    def log_loss(self, theta, x, jacobian=True):
        log_density = np.log(x["density"])
        log_n, log_d = np.log(x["N"]), np.log(x["D"])
        la_s, b_s, lc_s, b_n, la_d, b_d, lc = (_col(theta, i) for i in range(7))
        size_coefficient, (p_a, p_c) = _softmax_lse([la_s + b_s * log_density, lc_s])
        lse, (w_n, w_d, w_c) = _softmax_lse([size_coefficient - b_n * log_n, la_d - b_d * log_d, lc])
        if not jacobian:
            return lse, None
        w_n, w_d, w_c = (np.broadcast_arrays(w, lse)[0] for w in (w_n, w_d, w_c))
        jac = np.stack([w_n * p_a, w_n * p_a * log_density, w_n * p_c, -w_n * log_n, w_d, -w_d * log_d, w_c], axis=-1)
        return lse, jac

    def to_parameters(self, theta):
        la_s, b_s, lc_s, b_n, la_d, b_d, lc = (float(v) for v in theta)
        return FrantarParameters(a_S=math.exp(la_s), b_S=b_s, c_S=math.exp(lc_s), b_N=b_n, a_D=math.exp(la_d),
                                 b_D=b_d, c=math.exp(lc))

    def to_theta(self, p):
        return np.array([math.log(p.a_S), p.b_S, math.log(p.c_S), p.b_N, math.log(p.a_D), p.b_D, math.log(p.c)])


FRANTAR = FrantarForm()


def fit_sparse_law(sparsity, nonzero, tokens, loss, size, bootstrap: int = 200, seed: int = 0) -> dict:
    """Fit FRANTAR to trained-sparse and dense runs (one point per run) with bootstrap intervals over runs,
    and hold out the runs of the largest dense-equivalent ``size`` at each sparsity as Frantar et al.
    check their law; returns fit.json's ``sparse_law`` entry."""
    from scaling.bootstrap import bootstrap_law, resample_runs
    from scaling.fitting import fit_law
    from scaling.sweep_fit import _fit_json

    x = {"density": 1.0 - np.asarray(sparsity, float), "N": np.asarray(nonzero, float), "D": np.asarray(tokens, float)}
    loss, size = np.asarray(loss, float), np.asarray(size, float)
    if len(np.unique(x["density"])) < 3 or len(np.unique(size)) < 3 or len(loss) < 2 * len(FRANTAR.fitted):
        return {"name": FRANTAR.name, "equation": FRANTAR.equation, "source": FRANTAR.source, "parameters": None,
                "status": "unidentified", "reason": f"needs 3 sparsities, 3 sizes and {2 * len(FRANTAR.fitted)} runs"}
    fit = fit_law(FRANTAR, x, loss)
    boot = bootstrap_law(FRANTAR, x, loss, np.arange(len(loss)), resample_runs(len(loss), bootstrap, seed), fit)
    entry = _fit_json(FRANTAR, fit, boot)
    # the largest model at each sparsity, as Frantar et al. check their law
    held = np.zeros(len(size), dtype=bool)
    for level in np.unique(x["density"]):
        at = x["density"] == level
        held |= at & (size == size[at].max())
    heldout = None
    if len(np.unique(size[~held])) >= 3:
        refit = fit_law(FRANTAR, x, loss, (~held).astype(float))
        predicted = FRANTAR.predict(refit.parameters, density=x["density"][held], N=x["N"][held], D=x["D"][held])
        heldout = {"relative_error": float(np.mean(np.abs(predicted / loss[held] - 1))),
                   "max_relative_error": float(np.max(np.abs(predicted / loss[held] - 1))),
                   "n_points": int(held.sum()), "fit_status": refit.status}
    entry.update(optimizer_status=entry["status"], heldout=heldout,
                 reason="largest size held out at every sparsity" if heldout else "too few sizes to hold one out")
    entry["status"] = "converged" if fit.status == "converged" else "unidentified"
    return entry
