"""Compression models: the loss added by pruning to sparsity s, and by 8-bit weights, against N.

Every model here predicts the compressed loss as the dense loss plus a positive added loss,
L = L_dense + dL(s, N), and is fitted like the other laws: Huber loss on log(L), so points
where pruning measured slightly *better* than dense (noise at low sparsity) are still usable.
N is the dense model's non-embedding parameter count, in units of N_REF so the coefficient
is the added loss of a 10^6-parameter model, which keeps the fit well conditioned.

Pruning candidates (s the fraction of prunable weights removed):
- "odds_power": dL = c·(s/(1-s))^gamma·(N/N_REF)^-delta. Grows as a power of the pruning
  odds, so it is flat at low sparsity and diverges as s -> 1; larger models are more robust
  when delta > 0, the effect Li et al. 2020 report.
- "density_power": dL = c·((1-s)^-gamma - 1)·(N/N_REF)^-delta. The sparsity-dependent
  coefficient of Frantar et al. 2023 ("Scaling Laws for Sparsely-Connected Foundation
  Models", their L(S, N, D) with a_S(1-S)^b_S + c_S multiplying the size term), taken as the
  difference between sparse and dense at fixed N and D.
- "odds_power_size_free": odds_power with delta = 0, for sweeps too small to measure delta.
- "odds_power_tokens" and "density_power_tokens": odds_power and density_power times
  ((D/N)/TPP_REF)^epsilon, D the tokens the compressed
  checkpoint was trained on: over-trained models compress worse when epsilon > 0 (Frantar et
  al. 2023 find the optimal sparsity rising with data; Kumar et al. 2024, "Scaling Laws for
  Precision", find post-training quantization degrading with data). Fitted from checkpoints of
  one model at several D: cooldown-branch ends of a WSD sweep, or an iso-FLOP sweep's models.
- "odds_curved" and "odds_curved_tokens": odds_power and odds_power_tokens with the slope of log dL
  in the log-odds x falling as sparsity rises, log dL = log c + gamma·x - kappa·x²/2 + ..., held at
  its peak past x = gamma/kappa. One-shot pruning measured so: on the demo's sweep the slope fell
  from about 3 between sparsities 0.2 and 0.3 to about 0.5 between 0.9 and 0.95, and a power of the
  odds through 0.5 and 0.9 put the added loss at 0.7 some 30% low (BENCHMARKS.md, "Pruning between
  the measured sparsities"). Their curvature needs three sparsity levels or more.
8-bit candidates: "size_power": dL = c·(N/N_REF)^-delta, "size_power_tokens": size_power times
((D/N)/TPP_REF)^epsilon, and "constant": dL = c.

Choice: the candidate with the lowest error predicting the *largest* model's compressed
losses from a fit on the smaller models (leave-largest-out), because extrapolating to larger
models is what the planner asks of it; in-sample error would favour the most flexible form. Where
three or more sparsity levels were measured, the error is the larger of that and the
leave-one-sparsity-out error (each level between the lowest and the highest predicted from a fit
without it), because the planner also asks for sparsities between those measured.
A candidate whose fit on all points then hits a bound (say, a size exponent when the added
loss is within the noise) is passed over for the next one that converges. With fewer than
three model sizes there is nothing to extrapolate from two, so the N-free candidate
("odds_power_size_free", "constant") is chosen. Every choice records its reason in fit.json.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from scaling.forms import LawForm, ParameterSpec, _col, _softmax_lse

N_REF = 1e6  # non-embedding parameters at which the coefficient c is quoted
TPP_REF = 20.0  # tokens per parameter at which c is quoted (Hoffmann et al. 2022's compute-optimal ratio)


def _log_total(dense_loss: np.ndarray, log_added: np.ndarray, d_log_added: list[np.ndarray], jacobian: bool):
    """log(L_dense + exp(g)) and its Jacobian from g = log dL and dg/dtheta."""
    lse, (_, w_added) = _softmax_lse([np.log(dense_loss), log_added])
    if not jacobian:
        return lse, None
    return lse, np.stack([np.broadcast_arrays(w_added * d, lse)[0] for d in d_log_added], axis=-1)


@dataclass(frozen=True)
class PruningParameters:
    """dL(s, N) for one pruning method; delta = 0 in the size-free candidate."""

    c: float  # added loss at the reference shape (see the candidate's formula), nats
    gamma: float  # sparsity exponent
    delta: float  # model-size exponent: > 0 means larger models lose less


@dataclass(frozen=True)
class Int8Parameters:
    """dL(N) of 8-bit weights; delta = 0 in the constant candidate."""

    c: float  # added loss at N = N_REF, nats
    delta: float


_LOG_C = ParameterSpec("log_c", -30.0, 5.0, (-6.0, -4.0, -2.0, 0.0))
_DELTA = ParameterSpec("delta", -1.0, 3.0, (0.0, 0.25, 0.5, 1.0))


class _LogCoefficientForm(LawForm):
    """A compression form fitted as (log c, then its parameters' other fields in order)."""

    def to_parameters(self, theta):
        return self.parameters_type(math.exp(theta[0]), *(float(v) for v in theta[1:]))

    def to_theta(self, p):
        values = dataclasses.astuple(p)
        return np.array([math.log(values[0]), *values[1:]])


class OddsPowerPruning(_LogCoefficientForm):
    """dL = c·(s/(1-s))^gamma·(N/N_REF)^-delta added to the dense loss (this module's docstring)."""

    name = "odds_power"
    equation = "L = L_dense + c * (s/(1-s))^gamma * (N/1e6)^-delta"
    source = "power law in the pruning odds; size dependence after Li et al. 2020 (larger models compress better)"
    covariates = ("sparsity", "N", "dense_loss")
    fitted = (_LOG_C, ParameterSpec("gamma", 0.0, 10.0, (0.5, 1.0, 2.0, 4.0)), _DELTA)
    parameters_type = PruningParameters

    def log_loss(self, theta, x, jacobian=True):
        log_odds = np.log(x["sparsity"]) - np.log1p(-x["sparsity"])
        log_size = np.log(x["N"] / N_REF)
        log_c, gamma, delta = (_col(theta, i) for i in range(3))
        g = log_c + gamma * log_odds - delta * log_size
        return _log_total(x["dense_loss"], g, [np.ones_like(g), log_odds, -log_size], jacobian)


class SizeFreeOddsPowerPruning(LawForm):
    """dL = c·(s/(1-s))^gamma, the same for every model size."""

    name = "odds_power_size_free"
    equation = "L = L_dense + c * (s/(1-s))^gamma"
    source = "odds_power with delta = 0"
    covariates = ("sparsity", "N", "dense_loss")
    fitted = (_LOG_C, ParameterSpec("gamma", 0.0, 10.0, (0.5, 1.0, 2.0, 4.0)))
    parameters_type = PruningParameters

    def log_loss(self, theta, x, jacobian=True):
        log_odds = np.log(x["sparsity"]) - np.log1p(-x["sparsity"])
        log_c, gamma = (_col(theta, i) for i in range(2))
        g = log_c + gamma * log_odds
        return _log_total(x["dense_loss"], g, [np.ones_like(g), log_odds], jacobian)

    def to_parameters(self, theta):
        return PruningParameters(c=math.exp(theta[0]), gamma=float(theta[1]), delta=0.0)

    def to_theta(self, p):
        return np.array([math.log(p.c), p.gamma])


class DensityPowerPruning(_LogCoefficientForm):
    """dL = c·((1-s)^-gamma - 1)·(N/N_REF)^-delta, after Frantar et al. 2023 (module docstring)."""

    name = "density_power"
    equation = "L = L_dense + c * ((1-s)^-gamma - 1) * (N/1e6)^-delta"
    source = "Frantar et al. 2023, sparsity-dependent coefficient a_S (1-S)^b_S + c_S of their L(S, N, D)"
    covariates = ("sparsity", "N", "dense_loss")
    fitted = (_LOG_C, ParameterSpec("gamma", 1e-3, 10.0, (0.25, 0.5, 1.0, 2.0)), _DELTA)
    parameters_type = PruningParameters

    def log_loss(self, theta, x, jacobian=True):
        log_inverse_density = -np.log1p(-x["sparsity"])  # u = -log(1-s) > 0
        log_size = np.log(x["N"] / N_REF)
        log_c, gamma, delta = (_col(theta, i) for i in range(3))
        gu = gamma * log_inverse_density
        g = log_c + np.log(np.expm1(gu)) - delta * log_size
        # d/dgamma log(exp(gamma u) - 1) = u / (1 - exp(-gamma u))
        d_gamma = log_inverse_density / -np.expm1(-gu)
        return _log_total(x["dense_loss"], g, [np.ones_like(g), d_gamma, -log_size], jacobian)


@dataclass(frozen=True)
class TokensPruningParameters:
    """dL(s, N, D/N) for one pruning method."""

    c: float  # added loss at N = N_REF and D/N = TPP_REF, nats
    gamma: float  # sparsity exponent
    delta: float  # model-size exponent
    epsilon: float  # tokens-per-parameter exponent: > 0 means over-trained models lose more


@dataclass(frozen=True)
class TokensInt8Parameters:
    """dL(N, D/N) of 8-bit weights."""

    c: float
    delta: float
    epsilon: float


_EPSILON = ParameterSpec("epsilon", -2.0, 3.0, (0.0, 0.25, 0.5))


def _log_tpp(x) -> np.ndarray:
    return np.log(x["tokens_per_param"] / TPP_REF)


class _TokensPruningForm(_LogCoefficientForm):
    """A pruning form with a tokens-per-parameter term: fitted (log c, gamma, delta, epsilon)."""

    covariates = ("sparsity", "N", "dense_loss", "tokens_per_param")
    parameters_type = TokensPruningParameters


class OddsPowerTokensPruning(_TokensPruningForm):
    """dL = c·(s/(1-s))^gamma·(N/N_REF)^-delta·((D/N)/TPP_REF)^epsilon (module docstring)."""

    name = "odds_power_tokens"
    equation = "L = L_dense + c * (s/(1-s))^gamma * (N/1e6)^-delta * ((D/N)/20)^epsilon"
    source = "odds_power with a tokens-per-parameter term (Frantar et al. 2023: sparsity costs more with more data)"
    fitted = (_LOG_C, ParameterSpec("gamma", 0.0, 10.0, (0.5, 1.0, 2.0, 4.0)), _DELTA, _EPSILON)

    def log_loss(self, theta, x, jacobian=True):
        log_odds = np.log(x["sparsity"]) - np.log1p(-x["sparsity"])
        log_size, log_tpp = np.log(x["N"] / N_REF), _log_tpp(x)
        log_c, gamma, delta, epsilon = (_col(theta, i) for i in range(4))
        g = log_c + gamma * log_odds - delta * log_size + epsilon * log_tpp
        return _log_total(x["dense_loss"], g, [np.ones_like(g), log_odds, -log_size, log_tpp], jacobian)


class DensityPowerTokensPruning(_TokensPruningForm):
    """dL = c·((1-s)^-gamma - 1)·(N/N_REF)^-delta·((D/N)/TPP_REF)^epsilon (module docstring)."""

    name = "density_power_tokens"
    equation = "L = L_dense + c * ((1-s)^-gamma - 1) * (N/1e6)^-delta * ((D/N)/20)^epsilon"
    source = ("density_power with a tokens-per-parameter term, as Frantar et al. 2023's L(S, N, D) lets "
              "the cost of sparsity change with data")
    fitted = (_LOG_C, DensityPowerPruning.fitted[1], _DELTA, _EPSILON)

    def log_loss(self, theta, x, jacobian=True):
        log_inverse_density = -np.log1p(-x["sparsity"])
        log_size, log_tpp = np.log(x["N"] / N_REF), _log_tpp(x)
        log_c, gamma, delta, epsilon = (_col(theta, i) for i in range(4))
        gu = gamma * log_inverse_density
        g = log_c + np.log(np.expm1(gu)) - delta * log_size + epsilon * log_tpp
        d_gamma = log_inverse_density / -np.expm1(-gu)
        return _log_total(x["dense_loss"], g, [np.ones_like(g), d_gamma, -log_size, log_tpp], jacobian)


class SizePowerTokensInt8(_LogCoefficientForm):
    """dL = c·(N/N_REF)^-delta·((D/N)/TPP_REF)^epsilon for 8-bit weights (Kumar et al. 2024)."""

    name = "size_power_tokens"
    equation = "L = L_dense + c * (N/1e6)^-delta * ((D/N)/20)^epsilon"
    source = "size_power with a tokens-per-parameter term (Kumar et al. 2024: quantization costs more with more data)"
    covariates = ("N", "dense_loss", "tokens_per_param")
    fitted = (_LOG_C, _DELTA, _EPSILON)
    parameters_type = TokensInt8Parameters

    def log_loss(self, theta, x, jacobian=True):
        log_size, log_tpp = np.log(x["N"] / N_REF), _log_tpp(x)
        log_c, delta, epsilon = (_col(theta, i) for i in range(3))
        g = log_c - delta * log_size + epsilon * log_tpp
        return _log_total(x["dense_loss"], g, [np.ones_like(g), -log_size, log_tpp], jacobian)


class SizePowerInt8(_LogCoefficientForm):
    """dL = c·(N/N_REF)^-delta for 8-bit weights."""

    name = "size_power"
    equation = "L = L_dense + c * (N/1e6)^-delta"
    source = "power law in model size, as for pruning"
    covariates = ("N", "dense_loss")
    fitted = (_LOG_C, _DELTA)
    parameters_type = Int8Parameters

    def log_loss(self, theta, x, jacobian=True):
        log_size = np.log(x["N"] / N_REF)
        log_c, delta = (_col(theta, i) for i in range(2))
        g = log_c - delta * log_size
        return _log_total(x["dense_loss"], g, [np.ones_like(g), -log_size], jacobian)


class ConstantInt8(LawForm):
    """dL = c for 8-bit weights, whatever the model size."""

    name = "constant"
    equation = "L = L_dense + c"
    source = "size_power with delta = 0"
    covariates = ("N", "dense_loss")
    fitted = (_LOG_C,)
    parameters_type = Int8Parameters

    def log_loss(self, theta, x, jacobian=True):
        g = _col(theta, 0) + np.zeros_like(x["N"])
        return _log_total(x["dense_loss"], g, [np.ones_like(g)], jacobian)

    def to_parameters(self, theta):
        return Int8Parameters(c=math.exp(theta[0]), delta=0.0)

    def to_theta(self, p):
        return np.array([math.log(p.c)])


@dataclass(frozen=True)
class CurvedPruningParameters:
    """dL(s, N) whose growth with the pruning odds slows as sparsity rises."""

    c: float  # added loss at s = 0.5 and N = N_REF, nats
    gamma: float  # log-odds slope at s = 0.5
    delta: float  # model-size exponent
    kappa: float  # how fast the slope falls per unit of log-odds (0: odds_power)


@dataclass(frozen=True)
class CurvedTokensPruningParameters:
    """CurvedPruningParameters with the tokens-per-parameter exponent."""

    c: float
    gamma: float
    delta: float
    epsilon: float
    kappa: float


_KAPPA = ParameterSpec("kappa", 0.0, 5.0, (0.0, 0.3, 1.0))


def _curved_odds(sparsity: np.ndarray, gamma: np.ndarray, kappa: np.ndarray):
    """gamma·x - kappa·x²/2 at x = log(s/(1-s)), held at its peak past x = gamma/kappa so that the added
    loss never falls as sparsity rises; returns the term and its derivatives by gamma and kappa."""
    x = np.log(sparsity) - np.log1p(-sparsity)
    peak = np.divide(gamma, kappa, out=np.full(np.broadcast_shapes(np.shape(gamma), np.shape(kappa)), np.inf),
                     where=kappa > 0)
    x = np.minimum(x, peak)  # at the peak the derivative of the term by x is 0, so the chain rule adds nothing
    return gamma * x - 0.5 * kappa * x**2, x, -0.5 * x**2


class OddsCurvedPruning(_LogCoefficientForm):
    """log dL = log c + gamma·x - kappa·x²/2 - delta·log(N/N_REF), x the log pruning odds (module docstring)."""

    name = "odds_curved"
    equation = "L = L_dense + c * exp(gamma x - kappa x^2 / 2) * (N/1e6)^-delta, x = log(s/(1-s)) up to gamma/kappa"
    source = "odds_power with a log-odds slope that falls as sparsity rises (measured: one-shot pruning saturates)"
    covariates = ("sparsity", "N", "dense_loss")
    fitted = (_LOG_C, ParameterSpec("gamma", 0.0, 10.0, (0.5, 1.0, 2.0, 4.0)), _DELTA, _KAPPA)
    parameters_type = CurvedPruningParameters

    def log_loss(self, theta, x, jacobian=True):
        log_size = np.log(x["N"] / N_REF)
        log_c, gamma, delta, kappa = (_col(theta, i) for i in range(4))
        term, d_gamma, d_kappa = _curved_odds(x["sparsity"], gamma, kappa)
        g = log_c + term - delta * log_size
        return _log_total(x["dense_loss"], g, [np.ones_like(g), d_gamma, -log_size, d_kappa], jacobian)


class OddsCurvedTokensPruning(_LogCoefficientForm):
    """odds_curved times ((D/N)/TPP_REF)^epsilon (module docstring)."""

    name = "odds_curved_tokens"
    equation = ("L = L_dense + c * exp(gamma x - kappa x^2 / 2) * (N/1e6)^-delta * ((D/N)/20)^epsilon, "
                "x = log(s/(1-s)) up to gamma/kappa")
    source = "odds_curved with a tokens-per-parameter term, as odds_power_tokens"
    covariates = ("sparsity", "N", "dense_loss", "tokens_per_param")
    fitted = (_LOG_C, OddsCurvedPruning.fitted[1], _DELTA, _EPSILON, _KAPPA)
    parameters_type = CurvedTokensPruningParameters

    def log_loss(self, theta, x, jacobian=True):
        log_size, log_tpp = np.log(x["N"] / N_REF), _log_tpp(x)
        log_c, gamma, delta, epsilon, kappa = (_col(theta, i) for i in range(5))
        term, d_gamma, d_kappa = _curved_odds(x["sparsity"], gamma, kappa)
        g = log_c + term - delta * log_size + epsilon * log_tpp
        return _log_total(x["dense_loss"], g, [np.ones_like(g), d_gamma, -log_size, log_tpp, d_kappa], jacobian)


PRUNING_CANDIDATES: dict[str, LawForm] = {
    f.name: f for f in (OddsPowerPruning(), DensityPowerPruning(), SizeFreeOddsPowerPruning(), OddsPowerTokensPruning(),
                        DensityPowerTokensPruning(), OddsCurvedPruning(), OddsCurvedTokensPruning())
}
INT8_CANDIDATES: dict[str, LawForm] = {f.name: f for f in (SizePowerInt8(), ConstantInt8(), SizePowerTokensInt8())}
# Candidates that need checkpoints at several tokens per parameter for one model size: without
# them D/N only restates N (every run saw the same tokens), and epsilon is not identified.
TOKEN_CANDIDATES = ("odds_power_tokens", "density_power_tokens", "size_power_tokens", "odds_curved_tokens")
# Candidates whose curvature needs three or more sparsity levels: through two, any curvature fits.
CURVED_CANDIDATES = ("odds_curved", "odds_curved_tokens")
MIN_CURVED_LEVELS = 3
SIZE_FREE = {"pruning": "odds_power_size_free", "int8": "constant"}


def added_loss(form: LawForm, parameters, dense_loss: np.ndarray | float, **covariates) -> np.ndarray:
    """dL predicted by a compression model: its compressed loss minus ``dense_loss``."""
    return form.predict(parameters, dense_loss=dense_loss, **covariates) - np.asarray(dense_loss, dtype=float)
