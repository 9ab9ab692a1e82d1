"""The planner's search space: model size, tokens from the compute budget, compression; and the local polish.

Model size is a GPT-2 (or Llama) shape when the law comes from a sweep whose run configs
give the architecture, context and vocabulary: width a multiple of 32 from 32 to 8192, depth
1 to 128, N = `tlc.shapes.param_counts(shape).non_embedding`, and FLOPs per token counted the
way `tlc train` counts them (`tlc.shapes.flops_per_token`: 6 per matmul parameter, vocabulary
projection and attention included; inference is its forward third). For a published law or
a bare {E, A, B, alpha, beta} file shapes mean nothing, so N is continuous in [1e4, C/(6 + 2I)] and
FLOPs are 6·N per training token and 2·N per inference token (Kaplan et al. 2020 sec. 2.1).

Tokens are never searched: loss falls with D, so the best plan spends all the compute left
after inference on training, D = (C - inference_tokens·inference_flops_per_token) /
train_flops_per_token (Sardana et al. 2024 add inference to the budget this way), less the
tokens of a gradual method's recovery fine-tune (charged to the same budget). A duration
budget T gives D = T / seconds_per_token(shape) instead (`tlc.plan.training_cost`). Where the
corpus's unique tokens are known, the law is evaluated at the effective tokens of repeated data
and plans above the epoch limit are infeasible.

Compression is a category (pruning method or none, times int8 or not; or a weight-only quantizer
such as gptq at 4 bits, never pruned) and a sparsity (fixed for a method measured at one sparsity
only, such as 2:4 at 0.5). The
polish fixes a category and, for each size, takes the smallest sparsity that meets every
inference budget (loss only grows with sparsity at a fixed size), found by bisection; it then
minimises loss over size: Brent's method on log N for continuous sizes, and an exhaustive
search of widths and depths within a factor 2 for shapes, re-centred on the best until the
best of a window is its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.optimize import minimize_scalar

from scaling.compression import CURVED_CANDIDATES
from tlc.config import ModelShape
from tlc.plan.cost import CostModel
from tlc.plan.law import PlanLaw
from tlc.plan.training_cost import DataLimit, ThroughputModel
from tlc.shapes import flops_per_token, param_counts

WIDTH_STEP = 32  # widths are multiples of this
MAX_WIDTH_STEPS, MAX_DEPTH = 256, 128  # widths 32..8192, depths 1..128
MIN_CONTINUOUS_N = 1e4
BISECTION_STEPS = 48
LATENCY_MARGIN = 0.10  # predicted latency must be this much under --max-latency-ms
INFEASIBLE = 1e300  # loss of an infeasible size in the polish (finite: Brent's method mishandles inf)


def heads_for_width(width: int) -> int:
    """Attention heads the planner gives a width: heads of 64 channels (32 where 64 does not divide it)."""
    return width // 64 if width % 64 == 0 else width // WIDTH_STEP


def make_shape(template: dict, width_steps: int, depth: int) -> ModelShape:
    """A shape of width ``width_steps``·32 with :func:`heads_for_width` heads."""
    width = WIDTH_STEP * width_steps
    heads = heads_for_width(width)
    t = template
    return ModelShape(width, depth, heads, t["context"], t["vocab_size"], t["arch"], t["ffn_mult"],
                      t.get("objective", "clm"))


@lru_cache(maxsize=None)
def _shape_sizes(template: tuple, width_steps: int, depth: int) -> tuple[float, float, float]:
    shape = make_shape(dict(template), width_steps, depth)
    counts = param_counts(shape)
    return float(counts.non_embedding), float(counts.embedding), float(flops_per_token(shape))


@dataclass(frozen=True)
class Budgets:
    """Training compute and the inference budgets a plan must meet (None: no limit)."""

    train_flops: float | None  # None when the budget is a duration
    inference_tokens: float = 0.0
    max_params: float | None = None  # non-zero parameters
    max_bytes: float | None = None
    max_latency_ms: float | None = None
    train_seconds: float | None = None  # a wall-clock budget instead of FLOPs

    def limits(self) -> dict[str, float]:
        """{cost name: budget} for the inference budgets that were given."""
        named = {"params": self.max_params, "bytes": self.max_bytes, "latency_ms": self.max_latency_ms}
        return {k: v for k, v in named.items() if v is not None}

    @property
    def primary(self) -> str:
        """The inference cost on the Pareto front's axis: latency, else bytes, else non-zero parameters."""
        return next((k for k in ("latency_ms", "bytes") if k in self.limits()), "params")


@dataclass(frozen=True)
class Category:
    """A compression choice: a pruning method ("none" for dense) and whether weights are 8-bit, or a weight-only
    quantizer of a dense model (method "none", int8 False)."""

    method: str
    int8: bool
    weight_only: str | None = None  # fit.json's quantization model, method and bits: "gptq-w4"

    @property
    def label(self) -> str:
        """How the category is written in studies and tables: "none", "magnitude+int8", "gptq-w4"."""
        return self.weight_only or self.method + ("+int8" if self.int8 else "")


@dataclass(frozen=True)
class Point:
    """One evaluated plan (arrays of one element are unwrapped by `PlanSpace.point`)."""

    width: int | None
    depth: int | None
    N: float  # non-embedding parameters (the law's N is `PlanLaw.law_params(N, embedding)`)
    embedding: float
    tokens: float
    train_flops_per_token: float
    inference_flops_per_token: float
    category: Category
    sparsity: float
    loss: float
    costs: dict  # {"params": nonzeros, "bytes": ..., "latency_ms": ... or NaN}
    feasible: bool
    effective_tokens: float | None = None  # the law's D: tokens discounted for repeats (None: = tokens)
    epochs: float | None = None  # tokens / the corpus's unique tokens (None: unknown)
    recovery_tokens: float = 0.0  # fine-tune tokens of gradual pruning, charged to the training budget
    train_seconds: float | None = None  # predicted training time (tokens + recovery) where a throughput is known


class PlanSpace:
    """Sizes, categories and costs for one law, cost model and set of budgets."""

    def __init__(self, law: PlanLaw, costs: CostModel, budgets: Budgets, max_sparsity: float,
                 categories: list[Category], fixed_sparsity: dict[str, float] | None = None,
                 data_limit: DataLimit | None = None, throughput: ThroughputModel | None = None,
                 recovery_tokens: dict[str, float] | None = None, aspect: tuple[float, float] | None = None,
                 depths: tuple[int, int] | None = None):
        self.law, self.costs, self.budgets, self.max_sparsity = law, costs, budgets, max_sparsity
        self.aspect = aspect  # the width/depth ratios a shape may have (the sweep's measured ones); None: any
        self.depths = depths  # the depths a shape may have (the sweep's measured range); None: any
        self.categories = categories
        self.fixed_sparsity = fixed_sparsity or {}  # methods measured at one sparsity only (2:4 at 0.5)
        self.data_limit, self.throughput = data_limit, throughput
        self.recovery_tokens = recovery_tokens or {}  # {method: fine-tune tokens}, charged to the budget
        self.template = law.shape_template
        C, inference = budgets.train_flops, budgets.inference_tokens
        # at least one training token (a duration budget needs shapes: its throughput is per shape)
        self.max_continuous_N = C / (6.0 + 2.0 * inference) if C is not None else MIN_CONTINUOUS_N * 2

    @property
    def shapes(self) -> bool:
        """Whether sizes are model shapes (True) or a continuous N."""
        return self.template is not None

    def with_limits(self, **limits: float | None) -> PlanSpace:
        """The same space under other inference budgets (e.g. a point of the Pareto front)."""
        return PlanSpace(self.law, self.costs, replace(self.budgets, **limits), self.max_sparsity, self.categories,
                         self.fixed_sparsity, self.data_limit, self.throughput, self.recovery_tokens, self.aspect,
                         self.depths)

    def sparsity_range(self, method: str) -> tuple[float, float]:
        """Sparsities a method may use: (0, 0) for dense, the one measured value for a fixed method."""
        if method == "none":
            return 0.0, 0.0
        fixed = self.fixed_sparsity.get(method)
        if fixed is not None:
            return fixed, fixed
        model, measured = self.law.fitted.pruning.get(method), self.law.ranges.sparsity.get(method)
        if model is not None and model.form.name in CURVED_CANDIDATES and measured:
            # a curved model's cost stops growing at its peak: past the sparsities measured it would call more
            # pruning free, so it is not asked there
            return 0.0, min(self.max_sparsity, measured[1])
        return 0.0, self.max_sparsity

    # -- sizes --------------------------------------------------------------------------------

    def shape(self, width_steps: int, depth: int) -> ModelShape:
        """The model shape for a width of ``width_steps``·32 (heads of 64 channels where they divide it)."""
        return make_shape(self.template, width_steps, depth)

    def shape_allowed(self, width_steps, depth) -> np.ndarray:
        """Whether each shape's width/depth lies in ``aspect`` and its depth in ``depths``, elementwise (all True
        without either)."""
        k, d = np.asarray(width_steps, dtype=float), np.asarray(depth, dtype=float)
        allowed = np.ones(np.broadcast(k, d).shape, dtype=bool)
        if self.aspect is not None:
            ratio = WIDTH_STEP * k / d
            allowed &= (ratio >= self.aspect[0] * (1 - 1e-9)) & (ratio <= self.aspect[1] * (1 + 1e-9))
        if self.depths is not None:
            allowed &= (d >= self.depths[0]) & (d <= self.depths[1])
        return allowed

    def sizes(self, width_steps, depth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(N, embedding, training FLOPs per token, inference FLOPs per token) for arrays of shapes."""
        key = tuple(sorted(self.template.items()))
        rows = np.array([_shape_sizes(key, int(k), int(d)) for k, d in zip(np.ravel(width_steps), np.ravel(depth))])
        return rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 2] / 3.0

    def continuous_sizes(self, N) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(N, embedding = 0, 6N, 2N) for a continuous N."""
        N = np.atleast_1d(np.asarray(N, dtype=float))
        return N, np.zeros_like(N), 6.0 * N, 2.0 * N

    def tokens(self, train_fpt: np.ndarray, inference_fpt: np.ndarray, category: Category | None = None) -> np.ndarray:
        """Training tokens the budget leaves after inference and the category's recovery fine-tune
        (<= 0: the model cannot be trained). A duration budget divides by the fitted seconds per token."""
        if self.budgets.train_seconds is not None:
            total = self.budgets.train_seconds / self.throughput.seconds_per_token(train_fpt)
        else:
            total = (self.budgets.train_flops - self.budgets.inference_tokens * inference_fpt) / train_fpt
        recovery = self.recovery_tokens.get(category.method, 0.0) if category is not None else 0.0
        return total - recovery

    def data_terms(self, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(effective tokens the law is evaluated at, epochs) for training tokens D."""
        D = np.maximum(np.asarray(D, dtype=float), 1.0)
        if self.data_limit is None:
            return D, np.zeros_like(D)
        return self.data_limit.effective_tokens(D), D / self.data_limit.unique_tokens

    # -- costs and constraints ----------------------------------------------------------------

    def cost(self, name: str, N, embedding, sparsity, category: Category) -> np.ndarray:
        """One inference cost ("params", "bytes", "latency_ms"), vectorised."""
        if name == "params":
            return self.costs.nonzeros(N, embedding, sparsity, category.method)
        if name == "bytes":
            return self.costs.bytes(N, embedding, sparsity, category.method, category.int8, category.weight_only)
        return self.costs.latency_ms(N, embedding, sparsity, category.method, category.int8, category.weight_only)

    def meets(self, N, embedding, sparsity, category: Category) -> np.ndarray:
        """Whether each model meets every inference budget."""
        ok = np.ones(np.shape(np.asarray(N) + np.asarray(sparsity)), dtype=bool)
        for name, limit in self.budgets.limits().items():
            margin = 1 + LATENCY_MARGIN if name == "latency_ms" else 1.0  # a measurement on a shared machine
            ok &= self.cost(name, N, embedding, sparsity, category) * margin <= limit * (1 + 1e-12)
        return ok

    def least_sparsity(self, N, embedding, category: Category) -> np.ndarray:
        """Smallest sparsity meeting every inference budget, per model; NaN where even max_sparsity fails."""
        N, embedding = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(embedding, dtype=float))
        dense_ok = self.meets(N, embedding, 0.0, category)
        if category.method == "none":
            return np.where(dense_ok, 0.0, np.nan)
        lowest, highest = self.sparsity_range(category.method)
        low, high = np.full_like(N, lowest), np.full_like(N, highest)
        sparse_ok = self.meets(N, embedding, high, category)
        for _ in range(BISECTION_STEPS):  # costs fall as sparsity rises, so feasibility is an interval [s*, max]
            middle = 0.5 * (low + high)
            ok = self.meets(N, embedding, middle, category)
            low, high = np.where(ok, low, middle), np.where(ok, middle, high)
        return np.where(dense_ok, 0.0, np.where(sparse_ok, high, np.nan))

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, sizes, category: Category, sparsity=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loss, sparsity, feasible) for arrays of sizes; sparsity None means the least that meets the budgets."""
        N, embedding, train_fpt, inference_fpt = sizes
        D = self.tokens(train_fpt, inference_fpt, category)
        effective, epochs = self.data_terms(D)
        s = self.least_sparsity(N, embedding, category) if sparsity is None else np.broadcast_to(sparsity, N.shape)
        feasible = (D >= 1.0) & np.isfinite(s)
        if self.data_limit is not None:
            feasible &= epochs <= self.data_limit.max_epochs * (1 + 1e-12)
        if sparsity is not None:
            feasible &= self.meets(N, embedding, s, category)
        s_used = np.where(np.isfinite(s), s, self.max_sparsity)
        loss = self.law.loss(N, effective, category.method, s_used, category.int8, embedding, category.weight_only)
        return loss, s_used, feasible

    def point(self, width_steps: int | None, depth: int | None, N: float | None, category: Category,
              sparsity: float | None = None) -> Point:
        """One plan, sparsity None meaning the least that meets the inference budgets."""
        if self.shapes:
            sizes = self.sizes([width_steps], [depth])
        else:
            sizes = self.continuous_sizes([N])
        loss, s, feasible = self.evaluate(sizes, category, sparsity)
        if float(s[0]) == 0.0 and category.method != "none":  # dense after all: no pruning, no recovery fine-tune
            category = Category("none", category.int8)
            loss, s, feasible = self.evaluate(sizes, category, 0.0)
        n, emb, train_fpt, inference_fpt = (float(a[0]) for a in sizes)
        s0 = float(s[0])
        D = float(self.tokens(train_fpt, inference_fpt, category))
        effective, epochs = (float(a) for a in self.data_terms(D))
        recovery = self.recovery_tokens.get(category.method, 0.0)
        seconds = None
        if self.throughput is not None:
            seconds = float((D + recovery) * self.throughput.seconds_per_token(train_fpt))
        costs = {name: float(self.cost(name, n, emb, s0, category)) for name in ("params", "bytes", "latency_ms")}
        return Point(
            width=WIDTH_STEP * width_steps if self.shapes else None,
            depth=depth if self.shapes else None,
            N=n, embedding=emb,
            tokens=D,
            train_flops_per_token=train_fpt, inference_flops_per_token=inference_fpt,
            category=category if s0 > 0 else replace(category, method="none"),
            sparsity=s0, loss=float(loss[0]), costs=costs,
            feasible=bool(feasible[0]) and (not self.shapes or bool(self.shape_allowed(width_steps, depth))),
            effective_tokens=effective, epochs=epochs if self.data_limit is not None else None,
            recovery_tokens=recovery, train_seconds=seconds,
        )

    # -- polish -------------------------------------------------------------------------------

    def polish(self, category: Category, start_steps: int | None, start_depth: int | None,
               start_N: float | None) -> Point | None:
        """The best plan of ``category`` near a start (module docstring); None if nothing there is feasible."""
        if self.shapes:
            return self._polish_shapes(category, start_steps, start_depth)
        return self._polish_continuous(category, start_N)

    def _polish_shapes(self, category: Category, k0: int, d0: int) -> Point | None:
        best = None
        for _ in range(16):
            ks = np.arange(max(1, k0 // 2), min(MAX_WIDTH_STEPS, 2 * k0) + 1)
            ds = np.arange(max(1, d0 // 2), min(MAX_DEPTH, 2 * d0) + 1)
            K, Dp = (a.ravel() for a in np.meshgrid(ks, ds, indexing="ij"))
            loss, _, feasible = self.evaluate(self.sizes(K, Dp), category)
            feasible &= self.shape_allowed(K, Dp)
            if not feasible.any():
                return best
            i = int(np.argmin(np.where(feasible, loss, np.inf)))
            best = int(K[i]), int(Dp[i])
            if best == (k0, d0):  # the best of its own window
                break
            k0, d0 = best
        return self.point(best[0], best[1], None, category)

    def _polish_continuous(self, category: Category, N0: float) -> Point | None:
        lo, hi = math.log(MIN_CONTINUOUS_N), math.log(self.max_continuous_N)
        if hi <= lo:
            return None

        def objective(log_n: np.ndarray) -> np.ndarray:
            loss, _, feasible = self.evaluate(self.continuous_sizes(np.exp(log_n)), category)
            return np.where(feasible, loss, INFEASIBLE)

        x0 = min(max(math.log(N0), lo), hi)
        for _ in range(32):
            grid = np.linspace(max(lo, x0 - math.log(4)), min(hi, x0 + math.log(4)), 33)
            values = objective(grid)
            if not (values < INFEASIBLE).any():
                return None
            i = int(np.argmin(values))
            at_edge = (i == 0 and grid[0] > lo) or (i == len(grid) - 1 and grid[-1] < hi)
            if not at_edge:
                break
            x0 = grid[i]
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        result = minimize_scalar(lambda x: float(objective(np.array([x]))[0]), bounds=(a, b), method="bounded",
                                 options={"xatol": 1e-9})
        x = result.x if result.fun <= values[i] else grid[i]
        return self.point(None, None, math.exp(x), category)
