"""Scaling-law forms for loss against model size, data and compute.

Each form predicts the *logarithm* of the loss, because every fit in `scaling` is made in log
space (Hoffmann et al. 2022, approach 3), and returns the Jacobian of that log-prediction with
respect to the coordinates the optimiser moves ("fitted coordinates", e.g. a = log A), so the
objective's gradient is analytic. The user-facing parameters (E, A, alpha, ...) are a frozen
dataclass per form; `to_parameters` / `to_theta` convert between the two.

Shapes: ``theta`` is (..., P) so a whole grid of starting points can be evaluated at once;
covariates are (n,); the log-prediction is (..., n) and the Jacobian (..., n, P).
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np


@dataclass(frozen=True)
class ParameterSpec:
    """One fitted coordinate: its name, L-BFGS-B bounds and the values tried as starting points."""

    name: str
    lower: float
    upper: float
    grid: tuple[float, ...]


class LawForm(abc.ABC):
    """A loss law: log-prediction with analytic Jacobian, bounds and a start grid for fitting."""

    name: ClassVar[str]
    equation: ClassVar[str]
    source: ClassVar[str]
    covariates: ClassVar[tuple[str, ...]]
    fitted: ClassVar[tuple[ParameterSpec, ...]]
    parameters_type: ClassVar[type]

    @abc.abstractmethod
    def log_loss(
        self, theta: np.ndarray, x: Mapping[str, np.ndarray], jacobian: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Log predicted loss (..., n) and its Jacobian (..., n, P) w.r.t. theta (None if not asked)."""

    @abc.abstractmethod
    def to_parameters(self, theta: np.ndarray) -> Any:
        """The named, user-facing parameters for fitted coordinates ``theta`` (P,)."""

    @abc.abstractmethod
    def to_theta(self, parameters: Any) -> np.ndarray:
        """Fitted coordinates (P,) for named parameters; the inverse of `to_parameters`."""

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the user-facing parameters, in dataclass order."""
        return tuple(self.parameters_type.__dataclass_fields__)

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """L-BFGS-B bounds on the fitted coordinates."""
        return [(p.lower, p.upper) for p in self.fitted]

    def start_grid(self) -> np.ndarray:
        """Every combination of the per-coordinate start values, (G, P)."""
        axes = np.meshgrid(*[np.asarray(p.grid, dtype=float) for p in self.fitted], indexing="ij")
        return np.stack([a.ravel() for a in axes], axis=-1)

    def predict(self, parameters: Any, **covariates: np.ndarray | float) -> np.ndarray:
        """Predicted loss for named parameters at the given covariates (broadcast together)."""
        arrays = np.broadcast_arrays(*[np.asarray(covariates[c], dtype=float) for c in self.covariates])
        flat = {c: a.ravel() for c, a in zip(self.covariates, arrays)}
        log_loss, _ = self.log_loss(self.to_theta(parameters), flat, jacobian=False)
        return np.exp(log_loss).reshape(arrays[0].shape)


def _softmax_lse(terms: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum(exp(terms))) and the softmax weights, computed stably; all terms broadcast.

    Written term by term rather than with np.stack: this runs once per objective evaluation,
    tens of thousands of times per bootstrap, on arrays of a few hundred points.
    """
    top = functools.reduce(np.maximum, terms)
    expd = [np.exp(term - top) for term in terms]
    total = functools.reduce(np.add, expd)
    inverse = 1.0 / total
    return top + np.log(total), [e * inverse for e in expd]


def _col(theta: np.ndarray, i: int) -> np.ndarray:
    """Coordinate i of theta (..., P) shaped (..., 1) to broadcast against covariates (n,)."""
    return theta[..., i : i + 1]


# --- Chinchilla ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChinchillaParameters:
    """L(N, D) = E + A / N^alpha + B / D^beta; N non-embedding parameters, D training tokens."""

    E: float  # irreducible loss, nats per token
    A: float  # model-size coefficient
    B: float  # data coefficient
    alpha: float  # model-size exponent
    beta: float  # data exponent


# Hoffmann et al. 2022, approach 3: their fitted law (sec. 3.3, eq. 10), on MassiveText.
PUBLISHED_CHINCHILLA = ChinchillaParameters(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# Besiroglu et al. 2024, "Chinchilla scaling: a replication attempt": their refit of approach 3.
PUBLISHED_BESIROGLU = ChinchillaParameters(E=1.817, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


class ChinchillaForm(LawForm):
    """Chinchilla's parametric loss, fitted with the log-sum-exp parametrisation.

    Source: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", eq. 2
    (approach 3); the log-space fit follows their eq. 3 and Besiroglu et al. 2024 (Epoch,
    "Chinchilla Scaling: A replication attempt"):
    log L = LSE(a - alpha·log N, b - beta·log D, e) with a = log A, b = log B, e = log E.
    """

    name = "chinchilla"
    equation = "L(N, D) = E + A / N^alpha + B / D^beta"
    source = "Hoffmann et al. 2022, eq. 2 and 3 (approach 3); log-sum-exp fit as in Besiroglu et al. 2024"
    covariates = ("N", "D")
    # Start grid after the one Hoffmann et al. describe for approach 3 and Epoch's replication.
    fitted = (
        ParameterSpec("a", -10.0, 40.0, (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)),
        ParameterSpec("b", -10.0, 40.0, (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)),
        ParameterSpec("e", -10.0, 4.0, (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)),
        ParameterSpec("alpha", 0.0, 3.0, (0.0, 0.5, 1.0, 1.5, 2.0)),
        ParameterSpec("beta", 0.0, 3.0, (0.0, 0.5, 1.0, 1.5, 2.0)),
    )
    parameters_type = ChinchillaParameters

    def log_loss(self, theta, x, jacobian=True):
        log_n, log_d = np.log(x["N"]), np.log(x["D"])
        a, b, e, alpha, beta = (_col(theta, i) for i in range(5))
        lse, (w_n, w_d, w_e) = _softmax_lse([a - alpha * log_n, b - beta * log_d, e])
        if not jacobian:
            return lse, None
        jac = np.stack([w_n, w_d, w_e, -w_n * log_n, -w_d * log_d], axis=-1)
        return lse, jac

    def to_parameters(self, theta):
        a, b, e, alpha, beta = (float(v) for v in theta)
        return ChinchillaParameters(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)

    def to_theta(self, p):
        return np.array([math.log(p.A), math.log(p.B), math.log(p.E), p.alpha, p.beta])


# --- Kaplan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanParameters:
    """L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D."""

    N_c: float  # critical model size, non-embedding parameters
    D_c: float  # critical data size, tokens
    alpha_N: float
    alpha_D: float


class KaplanForm(LawForm):
    """Kaplan et al.'s joint law in model size and data, with no irreducible term.

    Source: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5 (and 4.1).
    In log space, with u = (alpha_N/alpha_D)(log N_c - log N) and v = log D_c - log D:
    log L = alpha_D · LSE(u, v). Fitted coordinates: log N_c, log D_c, alpha_N, alpha_D.
    """

    name = "kaplan"
    equation = "L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D"
    source = "Kaplan et al. 2020, eq. 1.5"
    covariates = ("N", "D")
    fitted = (
        ParameterSpec("log_N_c", -10.0, 120.0, (10.0, 20.0, 30.0, 45.0)),
        ParameterSpec("log_D_c", -10.0, 120.0, (10.0, 20.0, 30.0, 45.0)),
        ParameterSpec("alpha_N", 1e-3, 3.0, (0.05, 0.1, 0.2, 0.4, 0.8)),
        ParameterSpec("alpha_D", 1e-3, 3.0, (0.05, 0.1, 0.2, 0.4, 0.8)),
    )
    parameters_type = KaplanParameters

    def log_loss(self, theta, x, jacobian=True):
        log_n, log_d = np.log(x["N"]), np.log(x["D"])
        log_nc, log_dc, alpha_n, alpha_d = (_col(theta, i) for i in range(4))
        size_gap = log_nc - log_n
        u = (alpha_n / alpha_d) * size_gap
        lse, (w_u, w_v) = _softmax_lse([u, log_dc - log_d])
        log_loss = alpha_d * lse
        if not jacobian:
            return log_loss, None
        w_u, w_v = np.broadcast_arrays(w_u, log_loss)[0], np.broadcast_arrays(w_v, log_loss)[0]
        jac = np.stack(
            [
                alpha_n * w_u,  # d/d log N_c
                alpha_d * w_v,  # d/d log D_c
                w_u * size_gap,  # d/d alpha_N
                lse - w_u * u,  # d/d alpha_D: the exponent, and the ratio alpha_N/alpha_D inside u
            ],
            axis=-1,
        )
        return log_loss, jac

    def to_parameters(self, theta):
        log_nc, log_dc, alpha_n, alpha_d = (float(v) for v in theta)
        return KaplanParameters(N_c=math.exp(log_nc), D_c=math.exp(log_dc), alpha_N=alpha_n, alpha_D=alpha_d)

    def to_theta(self, p):
        return np.array([math.log(p.N_c), math.log(p.D_c), p.alpha_N, p.alpha_D])


# --- Kaplan's law with a free data exponent -------------------------------------------------


@dataclass(frozen=True)
class PowerSumParameters:
    """L(N, D) = (A / N^alpha + B / D^beta)^gamma."""

    A: float  # model-size coefficient
    B: float  # data coefficient
    alpha: float  # model-size exponent inside the sum (the loss falls as N^-(alpha gamma) once data suffice)
    beta: float  # data exponent inside the sum (the loss falls as D^-(beta gamma) once the model suffices)
    gamma: float  # outer exponent


class PowerSumForm(LawForm):
    """Kaplan et al.'s joint law with its data exponent set free, so that the two limits interact.

    Kaplan et al. 2020's eq. 1.5 is this form with beta = 1 (alpha = alpha_N / alpha_D, gamma =
    alpha_D). Unlike Chinchilla's sum, a larger model gains more from more data, which is what
    small models trained past their size limit show. It has no irreducible term: it suits models
    far above the data's entropy. In log space log L = gamma · LSE(a - alpha·log N, b - beta·log D)
    with a = log A, b = log B.
    """

    name = "power_sum"
    equation = "L(N, D) = (A / N^alpha + B / D^beta)^gamma"
    source = "Kaplan et al. 2020, eq. 1.5, with the data exponent beta free (Kaplan's law is beta = 1)"
    covariates = ("N", "D")
    fitted = (
        ParameterSpec("a", -10.0, 60.0, (2.0, 8.0, 15.0)),
        ParameterSpec("b", -10.0, 60.0, (2.0, 8.0, 15.0)),
        ParameterSpec("alpha", 1e-3, 3.0, (0.2, 0.6, 1.2)),
        ParameterSpec("beta", 1e-3, 3.0, (0.2, 0.6, 1.2)),
        ParameterSpec("gamma", 1e-3, 3.0, (0.1, 0.3, 0.8)),
    )
    parameters_type = PowerSumParameters

    def log_loss(self, theta, x, jacobian=True):
        log_n, log_d = np.log(x["N"]), np.log(x["D"])
        a, b, alpha, beta, gamma = (_col(theta, i) for i in range(5))
        lse, (w_n, w_d) = _softmax_lse([a - alpha * log_n, b - beta * log_d])
        log_loss = gamma * lse
        if not jacobian:
            return log_loss, None
        jac = np.stack([gamma * w_n, gamma * w_d, -gamma * w_n * log_n, -gamma * w_d * log_d,
                        np.broadcast_arrays(lse, log_loss)[0]], axis=-1)
        return log_loss, jac

    def to_parameters(self, theta):
        a, b, alpha, beta, gamma = (float(v) for v in theta)
        return PowerSumParameters(A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, gamma=gamma)

    def to_theta(self, p):
        return np.array([math.log(p.A), math.log(p.B), p.alpha, p.beta, p.gamma])


# --- Chinchilla's law with one exponent: Gadre et al.'s over-training law ---------------------


@dataclass(frozen=True)
class OvertrainingParameters:
    """L(N, D) = E + A / N^alpha + B / D^alpha; in compute C = 6ND and tokens per parameter M = D/N,
    L = E + (a M^eta + b M^-eta) C^-eta with eta = alpha / 2."""

    E: float  # irreducible loss, nats per token
    A: float
    B: float
    alpha: float  # the one exponent of model size and of data


class OvertrainingForm(LawForm):
    """Chinchilla's law with the model-size and data exponents tied, as Gadre et al. fit it.

    Source: Gadre et al. 2024, "Language models scale reliably with over-training and on downstream
    tasks", eq. 4-5: assuming alpha = beta turns Hoffmann et al.'s law into L(C, M) = E + (a M^eta +
    b M^-eta) C^-eta, where the over-training ratio M = D / N only scales the compute power law.
    Four parameters where Chinchilla's form has five: the small end of a sweep identifies the
    irreducible term E better when one exponent serves both terms.
    log L = LSE(a - alpha·log N, b - alpha·log D, e).
    """

    name = "overtraining"
    equation = "L(N, D) = E + A / N^alpha + B / D^alpha"
    source = "Gadre et al. 2024, eq. 4-5 (Hoffmann et al. 2022's law with alpha = beta)"
    covariates = ("N", "D")
    fitted = ChinchillaForm.fitted[:4]  # a, b, e, alpha: Chinchilla's bounds and start grid, without beta
    parameters_type = OvertrainingParameters

    def log_loss(self, theta, x, jacobian=True):
        log_n, log_d = np.log(x["N"]), np.log(x["D"])
        a, b, e, alpha = (_col(theta, i) for i in range(4))
        lse, (w_n, w_d, w_e) = _softmax_lse([a - alpha * log_n, b - alpha * log_d, e])
        if not jacobian:
            return lse, None
        w_e = np.broadcast_arrays(w_e, lse)[0]
        return lse, np.stack([w_n, w_d, w_e, -w_n * log_n - w_d * log_d], axis=-1)

    def to_parameters(self, theta):
        a, b, e, alpha = (float(v) for v in theta)
        return OvertrainingParameters(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha)

    def to_theta(self, p):
        return np.array([math.log(p.A), math.log(p.B), math.log(p.E), p.alpha])


# --- Per-run learning curve -----------------------------------------------------------------


@dataclass(frozen=True)
class LearningCurveParameters:
    """L(C) = E + A · C^-alpha for one run, C its training FLOPs so far."""

    E: float
    A: float
    alpha: float


class LearningCurveForm(LawForm):
    """Loss against training compute for one run (or for the compute-optimal frontier).

    Source: the power law in compute of Kaplan et al. 2020, eq. 1.3 (there for the frontier
    and without a constant), given the irreducible term E of Hoffmann et al. 2022, eq. 2, so
    that it saturates. log L = LSE(e, a - alpha·log C).
    """

    name = "learning_curve"
    equation = "L(C) = E + A * C^-alpha"
    source = "Kaplan et al. 2020 eq. 1.3 (power law in compute) with Hoffmann et al. 2022's irreducible term E"
    covariates = ("C",)
    fitted = (
        ParameterSpec("e", -10.0, 4.0, (-1.0, 0.0, 0.5, 1.0, 1.5)),
        ParameterSpec("a", -20.0, 200.0, (0.0, 2.0, 5.0, 10.0, 20.0, 40.0)),
        ParameterSpec("alpha", 0.0, 5.0, (0.05, 0.1, 0.2, 0.4, 0.8, 1.5)),
    )
    parameters_type = LearningCurveParameters

    def log_loss(self, theta, x, jacobian=True):
        log_c = np.log(x["C"])
        e, a, alpha = (_col(theta, i) for i in range(3))
        lse, (w_e, w_c) = _softmax_lse([e, a - alpha * log_c])
        if not jacobian:
            return lse, None
        w_e = np.broadcast_arrays(w_e, lse)[0]
        return lse, np.stack([w_e, w_c, -w_c * log_c], axis=-1)

    def to_parameters(self, theta):
        e, a, alpha = (float(v) for v in theta)
        return LearningCurveParameters(E=math.exp(e), A=math.exp(a), alpha=alpha)

    def to_theta(self, p):
        return np.array([math.log(p.E), math.log(p.A), p.alpha])


# --- The laws as plain functions of natural parameters (the forms above fit them in log space) --


def chinchilla_loss(N, D, p: ChinchillaParameters) -> np.ndarray:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2), nats per token."""
    return p.E + p.A / np.asarray(N, dtype=float) ** p.alpha + p.B / np.asarray(D, dtype=float) ** p.beta


def kaplan_loss(N, D, p: KaplanParameters) -> np.ndarray:
    """L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (Kaplan et al. 2020, eq. 1.5)."""
    size_term = (p.N_c / np.asarray(N, dtype=float)) ** (p.alpha_N / p.alpha_D)
    return (size_term + p.D_c / np.asarray(D, dtype=float)) ** p.alpha_D


def learning_curve_loss(C, p: LearningCurveParameters) -> np.ndarray:
    """L(C) = E + A · C^-alpha against training FLOPs C (Kaplan et al. 2020, eq. 1.3, with E)."""
    return p.E + p.A * np.asarray(C, dtype=float) ** -p.alpha


LAWS: dict[str, LawForm] = {form.name: form for form in (ChinchillaForm(), KaplanForm(), PowerSumForm(),
                                                          OvertrainingForm())}
"""The joint L(N, D) laws fitted to every sweep, by name."""
