"""Typed settings for one training run and for a sweep, with validation that speaks to the user.

A sweep file (YAML, see ``sweeps/tiny.yaml``) and the ``tlc train`` flags both resolve to the
same :class:`RunConfig`. Every check happens here, before any data is read or model is built,
and every problem names the field (or flag) and says what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

# ModelShape, ARCHS and OBJECTIVES are described in tlc.architecture and importable from here as before
from tlc.architecture import ARCHS, OBJECTIVES, ModelShape, flops_per_token
from tlc.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "wsd")
MIN_BUDGET_STEPS = 200  # an iso-FLOP run with fewer optimizer steps is mostly warmup: skipped
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# ----------------------------------------------------------------------------------------------
# Pruning while training (train.prune): when to prune, see tlc/train/sparsity.py

PRUNE_AT_INIT = ("snip", "synflow", "grasp", "random", "snip-shuffle", "synflow-shuffle", "grasp-shuffle")
PRUNE_DURING = ("magnitude",)
PRUNE_LOTTERY = ("imp",)  # iterative magnitude pruning with rewinding: several trainings, see tlc/train/lottery.py
PRUNE_METHODS = PRUNE_AT_INIT + PRUNE_DURING + PRUNE_LOTTERY
IMP_DEFAULT_ROUNDS = 4  # Frankle et al. 2020 prune 20% per round; 4 rounds reach 59% at 20%, 80% at 33%
IMP_DEFAULT_REWIND = 0.05  # rewind to 5% of the run (Frankle et al. 2020 rewind to an early iteration; 0: init)
PRUNE_DURING_DEFAULT = (0.25, 0.75)  # Zhu & Gupta's cubic ramp over these fractions of the run (Frantar et al. 2023)


@dataclass(frozen=True)
class PruneSettings:
    """How a run prunes while it trains: a mask fixed at step 0, or grown on the cubic schedule."""

    method: str  # snip, synflow, random (control), snip-shuffle / synflow-shuffle (layer-wise shuffled), magnitude
    sparsity: float  # fraction of zeros among the block matrices at the end of training, in [0, 1)
    start: float = 0.0  # fraction of the run's tokens where gradual pruning starts (0 for pruning at init)
    end: float = 0.0  # fraction of the run's tokens where it reaches `sparsity` (0 for pruning at init)
    rounds: int = 0  # imp only: prune-retrain rounds after the dense one; each removes the same fraction of what remains
    rewind: float = 0.0  # imp only: fraction of the run's steps whose weights survivors rewind to (0: initialization)

    @property
    def at_init(self) -> bool:
        return self.method in PRUNE_AT_INIT

    @property
    def round_fraction(self) -> float:
        """imp: the fraction of the remaining weights each round removes, 1 - (1 - sparsity)^(1/rounds)."""
        return 1.0 - (1.0 - self.sparsity) ** (1.0 / self.rounds) if self.rounds else 0.0

    def run_suffix(self) -> str:
        """The part of a run id that names this setting, e.g. ``snip50``, ``magnitude90`` or ``imp80-r4-k5``."""
        suffix = f"{self.method}{round(100 * self.sparsity):d}"
        if self.method in PRUNE_LOTTERY:
            return f"{suffix}-r{self.rounds}-k{100 * self.rewind:g}"
        if not self.at_init and (self.start, self.end) != PRUNE_DURING_DEFAULT:
            suffix += f"-t{round(100 * self.start):d}-{round(100 * self.end):d}"
        return suffix


def parse_prune(raw: Any, where: str) -> PruneSettings | None:
    """``{method, sparsity[, start, end]}`` (or null / ``{method: none}`` for dense) to validated settings."""
    if raw is None or raw == "none" or (isinstance(raw, Mapping) and raw.get("method") == "none" and len(raw) == 1):
        return None
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: expected a mapping like {{method: snip, sparsity: 0.5}}, got {raw!r}")
    _check_keys(raw, ("method", "sparsity", "start", "end", "rounds", "rewind"), where)
    method = raw.get("method")
    if method not in PRUNE_METHODS:
        raise UserError(f"{where}.method: unknown method {method!r}; valid: {', '.join(PRUNE_METHODS)}, none")
    if "sparsity" not in raw:
        raise UserError(f"{where}.sparsity: missing; give the fraction of zeros in [0, 1), e.g. 0.5")
    sparsity = _number(raw["sparsity"], f"{where}.sparsity", float)
    default = PRUNE_DURING_DEFAULT if method in PRUNE_DURING else (0.0, 0.0)
    start = _number(raw.get("start", default[0]), f"{where}.start", float)
    end = _number(raw.get("end", default[1]), f"{where}.end", float)
    lottery = method in PRUNE_LOTTERY
    rounds = _number(raw.get("rounds", IMP_DEFAULT_ROUNDS if lottery else 0), f"{where}.rounds", int)
    rewind = _number(raw.get("rewind", IMP_DEFAULT_REWIND if lottery else 0.0), f"{where}.rewind", float)
    settings = PruneSettings(method, sparsity, start, end, rounds, rewind)
    validate_prune(settings, where)
    return settings


def validate_prune(prune: PruneSettings, where: str = "train.prune") -> None:
    """Check one pruning setting; raise UserError naming the field."""
    if prune.method not in PRUNE_METHODS:
        raise UserError(f"{where}.method: unknown method {prune.method!r}; valid: {', '.join(PRUNE_METHODS)}, none")
    if not 0.0 <= prune.sparsity < 1.0:
        raise UserError(f"{where}.sparsity: must be in [0, 1), got {prune.sparsity}")
    if prune.method in PRUNE_LOTTERY:
        if not 1 <= prune.rounds <= 20:
            raise UserError(f"{where}.rounds: imp needs 1 to 20 prune-retrain rounds (each one more training), "
                            f"got {prune.rounds}")
        if not 0.0 <= prune.rewind < 1.0:
            raise UserError(f"{where}.rewind: must be a fraction of the run's steps in [0, 1) (0: rewind to "
                            f"initialization), got {prune.rewind}")
        if prune.start != 0 or prune.end != 0:
            raise UserError(f"{where}: imp prunes between trainings, so start and end must be 0 "
                            f"(got {prune.start}, {prune.end}); set rounds and rewind instead")
        return
    if prune.rounds != 0 or prune.rewind != 0:
        raise UserError(f"{where}: rounds and rewind belong to method imp, not {prune.method}")
    if prune.at_init:
        if prune.start != 0 or prune.end != 0:
            raise UserError(f"{where}: {prune.method} prunes at initialization, so start and end must be 0 "
                            f"(got {prune.start}, {prune.end}); for pruning during training use method magnitude")
        return
    if not 0.0 <= prune.start < prune.end <= 1.0:
        raise UserError(f"{where}: start and end must satisfy 0 <= start < end <= 1 (fractions of the run's tokens), "
                        f"got start {prune.start}, end {prune.end}")


@dataclass(frozen=True)
class TrainSettings:
    """How long and how one run trains."""

    tokens: int | None = None  # training tokens for the run; give this or `flops`
    flops: float | None = None  # training FLOPs for the run (converted to tokens by the model's FLOPs/token)
    micro_batch: int = 16  # sequences per process per forward/backward
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_frac: float = 0.05  # share of optimizer steps spent in linear warmup
    weight_decay: float = 0.1  # decoupled weight decay on matrices only
    grad_clip: float = 1.0  # global gradient-norm clip; 0 turns it off
    zero_stage: int = 0  # DeepSpeed ZeRO stage: 0, 1 or 2
    precision: str = "auto"  # "fp32", "bf16" (bf16 weights and activations, fp32 master weights), or "auto": by the hardware (tlc.train.precision)
    evals: int = 12  # evaluations, spaced evenly in log training FLOPs
    eval_tokens: int = 8192  # validation tokens scored at each evaluation
    checkpoint_evals: int = 1  # write a DeepSpeed checkpoint every this many evaluations
    prune: PruneSettings | None = None  # prune at init or during training (train.prune); None trains dense
    # "cosine": warmup then cosine decay to min_lr_ratio; one finished-run point per run.
    # "wsd": warmup then a constant-rate trunk, with a decay branch forked at each of `cooldowns`
    # (Hagele et al. 2024): one finished-run point per branch.
    schedule: str = "cosine"
    cooldowns: tuple[float, ...] = ()  # wsd forks, as increasing fractions in (0, 1] of the run's tokens
    cooldown_frac: float = 0.2  # a branch trains this share of its fork's tokens, decaying to zero
    # Iso-FLOP sweeps (Hoffmann et al. 2022, approach 2): every shape at every budget, tokens = C / FLOPs
    # per token; given instead of `tokens` or `flops`, in a sweep file only.
    budgets: tuple[float, ...] = ()


@dataclass(frozen=True)
class DataSettings:
    """Where the text comes from and how it is tokenized."""

    source: str = "stdlib"  # "stdlib", a text file, a folder, a glob, or a .jsonl file with a "text" field
    val_percent: float = 5.0  # share of documents (by path hash) held out for validation
    text_field: str = "text"  # field read from JSONL records
    # the most times a sweep's longest model may go through the training split; a law's D counts tokens seen
    # once, so a sweep leaves out runs beyond it (default 1)
    max_epochs: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run."""

    shape: ModelShape
    train: TrainSettings
    data: DataSettings = field(default_factory=DataSettings)
    seed: int = 0
    budget: float | None = None  # the iso-FLOP budget this run belongs to (train.flops holds it too)

    @property
    def run_id(self) -> str:
        """The shape's id, with the budget before the seed for an iso-FLOP run (``w64-d2-c3e13-s0``) and the
        pruning setting after it (``w32-d2-s0-snip50``)."""
        base = self.shape.run_id(self.seed)
        if self.budget is not None:
            head, seed = base.rsplit("-", 1)
            base = f"{head}-c{budget_label(self.budget)}-{seed}"
        return f"{base}-{self.train.prune.run_suffix()}" if self.train.prune else base

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def budget_label(flops: float) -> str:
    """A compute budget as run ids spell it: 3e13, 1.5e14 (no '+', which run ids do not allow)."""
    mantissa, exponent = f"{flops:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass(frozen=True)
class LaunchSettings:
    """How a sweep starts each run's process."""

    nproc: int = 1  # processes per run (torchrun); 1 runs a plain Python process
    retries: int = 1  # times a failed run is tried again before the sweep records it as failed


@dataclass(frozen=True)
class SweepConfig:
    """A grid of shapes (times seeds), each trained with the same settings."""

    name: str
    shapes: tuple[ModelShape, ...]
    seeds: tuple[int, ...]
    train: TrainSettings
    data: DataSettings
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    # per shape, the training settings its entry in `shapes` overrides (SHAPE_TRAIN_KEYS: lr, tokens, warmup,
    # forks); () when no shape overrides any
    shape_train: tuple[dict, ...] = ()
    prunes: tuple[PruneSettings | None, ...] = ()  # train.prune as a list: one run per entry (None: dense)

    def all_runs(self) -> list[RunConfig]:
        """Every run the grid names, usable or not, in a stable order (shapes as listed, budgets, pruning
        settings, seeds)."""
        overrides = self.shape_train or ({},) * len(self.shapes)
        prunes = self.prunes or (self.train.prune,)
        runs = []
        for shape, override in zip(self.shapes, overrides):
            train = _overridden(self.train, override)
            for budget in self.train.budgets or (None,):
                run_train = train if budget is None else dataclasses.replace(train, budgets=(), flops=budget)
                for prune in prunes:
                    runs.extend(RunConfig(shape=shape, train=dataclasses.replace(run_train, prune=prune), data=self.data,
                                          seed=seed, budget=budget)
                                for seed in self.seeds)
        return runs

    def budget_steps(self, run: RunConfig) -> int:
        """Optimizer steps an iso-FLOP run gets: tokens = C / FLOPs per token, over the global batch."""
        tokens_per_step = self.train.micro_batch * self.train.grad_accum * self.launch.nproc * run.shape.context
        return int(run.train.flops / flops_per_token(run.shape)) // tokens_per_step

    def skipped(self) -> list[tuple[str, str]]:
        """(run id, why) for each iso-FLOP run left out because its budget buys too few optimizer steps."""
        if not self.train.budgets:
            return []
        return [
            (r.run_id, f"{self.budget_steps(r)} optimizer steps at {r.budget:.3g} FLOPs; train.budgets runs need "
                       f"at least {MIN_BUDGET_STEPS}")
            for r in self.all_runs()
            if self.budget_steps(r) < MIN_BUDGET_STEPS
        ]

    def runs(self) -> list[RunConfig]:
        """Every run to train, in a stable order; iso-FLOP runs with too few steps are left out (`skipped`)."""
        left_out = {run_id for run_id, _ in self.skipped()}
        return [r for r in self.all_runs() if r.run_id not in left_out]

    def run(self, run_id: str) -> RunConfig:
        for r in self.runs():
            if r.run_id == run_id:
                return r
        valid = ", ".join(r.run_id for r in self.runs())
        raise UserError(f"--run-id: no run named {run_id!r} in sweep {self.name!r}; valid: {valid}")


# ----------------------------------------------------------------------------------------------
# Validation


def _number(value: Any, where: str, kind: type) -> Any:
    """Coerce YAML scalars to numbers. PyYAML reads ``3e6`` (no dot) as a string, so accept that."""
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise UserError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _check_keys(mapping: Mapping, valid, where: str) -> None:
    """Refuse keys that are not in ``valid``, naming the first and listing the valid ones."""
    unknown = sorted(set(map(str, mapping)) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")


def _from_mapping(cls: type, mapping: Any, where: str) -> Any:
    """Build a settings dataclass from a mapping, refusing unknown keys and wrong types."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise UserError(f"{where}: expected a mapping of settings, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(mapping, fields, where)
    kwargs = {}
    for key, value in mapping.items():
        hint = str(fields[key].type)
        if value is None and "None" in hint:
            kwargs[key] = None
        elif hint.startswith("int"):
            kwargs[key] = _number(value, f"{where}.{key}", int)
        elif hint.startswith("float"):
            kwargs[key] = _number(value, f"{where}.{key}", float)
        elif hint.startswith("tuple[float"):
            if not isinstance(value, list):
                raise UserError(f"{where}.{key}: expected a list of numbers, e.g. [0.25, 0.5, 1.0], got {value!r}")
            kwargs[key] = tuple(_number(v, f"{where}.{key}", float) for v in value)
        elif hint == "str":
            if not isinstance(value, str):
                raise UserError(f"{where}.{key}: expected text, got {value!r}")
            kwargs[key] = value
        else:
            raise AssertionError(f"unhandled field type {hint} for {cls.__name__}.{key}")
    return cls(**kwargs)


def validate_shape(shape: ModelShape, where: str = "shape") -> None:
    """Check one model shape; raise UserError naming the field."""
    for name in ("width", "depth", "heads", "context", "vocab_size", "ffn_mult"):
        value = getattr(shape, name)
        if value <= 0:
            raise UserError(f"{where}.{name}: must be a positive integer, got {value}")
    if shape.width % shape.heads:
        divisors = [h for h in range(1, shape.width + 1) if shape.width % h == 0 and h <= 64]
        raise UserError(
            f"{where}: width {shape.width} is not divisible by heads {shape.heads}; "
            f"heads that divide it: {', '.join(map(str, divisors))}"
        )
    if shape.arch == "llama" and (shape.width // shape.heads) % 2:
        raise UserError(f"{where}: llama needs an even head size (width/heads), got {shape.width // shape.heads}")
    if shape.arch not in ARCHS:
        raise UserError(f"{where}.arch: unknown architecture {shape.arch!r}; valid: {', '.join(ARCHS)}")
    if shape.objective not in OBJECTIVES:
        raise UserError(f"{where}.objective: unknown objective {shape.objective!r}; valid: {', '.join(OBJECTIVES)}")
    if shape.objective == "mlm" and shape.arch != "gpt2":
        raise UserError(f"{where}.arch: objective mlm trains a RoBERTa-style encoder (learned positions, GELU, "
                        f"LayerNorm), so arch must be gpt2 (the default), got {shape.arch!r}")
    if shape.vocab_size < 260:
        raise UserError(f"{where}.vocab_size: must be at least 260 (256 bytes plus merges), got {shape.vocab_size}")
    if shape.vocab_size > 65535:
        raise UserError(f"{where}.vocab_size: must be at most 65535, got {shape.vocab_size}")


def validate_train(train: TrainSettings, where: str = "train") -> None:
    """Check training settings; raise UserError naming the field."""
    given = [name for name in ("tokens", "flops", "budgets") if getattr(train, name)]
    if len(given) != 1:
        raise UserError(f"{where}: give exactly one budget per run, {where}.tokens, {where}.flops or {where}.budgets"
                        + (f"; got {' and '.join(given)}" if given else ""))
    if any(not (b > 0 and math.isfinite(b)) for b in train.budgets):
        raise UserError(f"{where}.budgets: every budget must be a positive number of FLOPs, got {list(train.budgets)}")
    if len(set(train.budgets)) != len(train.budgets):
        raise UserError(f"{where}.budgets: budgets must be distinct, got {list(train.budgets)}")
    if train.tokens is not None and train.tokens <= 0:
        raise UserError(f"{where}.tokens: must be positive, got {train.tokens}")
    if train.flops is not None and train.flops <= 0:
        raise UserError(f"{where}.flops: must be positive, got {train.flops}")
    for name in ("micro_batch", "grad_accum", "evals", "eval_tokens", "checkpoint_evals"):
        if getattr(train, name) <= 0:
            raise UserError(f"{where}.{name}: must be a positive integer, got {getattr(train, name)}")
    if not train.lr > 0:
        raise UserError(f"{where}.lr: must be positive, got {train.lr}")
    if not 0 <= train.min_lr_ratio <= 1:
        raise UserError(f"{where}.min_lr_ratio: must be in [0, 1], got {train.min_lr_ratio}")
    if not 0 <= train.warmup_frac < 1:
        raise UserError(f"{where}.warmup_frac: must be in [0, 1), got {train.warmup_frac}")
    if train.weight_decay < 0 or train.grad_clip < 0:
        raise UserError(f"{where}: weight_decay and grad_clip must be >= 0")
    if train.zero_stage not in (0, 1, 2):
        raise UserError(f"{where}.zero_stage: must be 0, 1 or 2, got {train.zero_stage}")
    if train.precision not in PRECISIONS:
        raise UserError(f"{where}.precision: must be one of {', '.join(PRECISIONS)}, got {train.precision!r}")
    if train.prune is not None:
        validate_prune(train.prune, f"{where}.prune")
        if train.prune.method in PRUNE_LOTTERY and train.schedule != "cosine":
            raise UserError(f"{where}.prune: imp rewinds and retrains a cosine run; set {where}.schedule: cosine "
                            f"(got {train.schedule!r})")
    validate_schedule(train, where)


def validate_schedule(train: TrainSettings, where: str = "train") -> None:
    """Check the learning-rate schedule and its cooldown branches; raise UserError naming the field."""
    if train.schedule not in SCHEDULES:
        raise UserError(f"{where}.schedule: must be one of {', '.join(SCHEDULES)}, got {train.schedule!r}")
    if not (train.cooldown_frac > 0 and train.cooldown_frac <= 1):
        raise UserError(f"{where}.cooldown_frac: must be in (0, 1] (a branch's share of its fork's tokens), "
                        f"got {train.cooldown_frac}")
    forks = list(train.cooldowns)
    if train.schedule != "wsd":
        if forks:
            raise UserError(f"{where}.cooldowns: cooldown branches need {where}.schedule: wsd (got {train.schedule!r})")
        return
    if not forks:
        raise UserError(f"{where}.cooldowns: schedule wsd needs at least one fork, e.g. [0.25, 0.5, 1.0]")
    if any(not 0 < f <= 1 for f in forks):
        raise UserError(f"{where}.cooldowns: every fork must be a fraction of the run's tokens in (0, 1], got {forks}")
    if any(b <= a for a, b in zip(forks, forks[1:])):
        raise UserError(f"{where}.cooldowns: forks must be strictly increasing, got {forks}")
    if forks[0] <= train.warmup_frac:
        raise UserError(f"{where}.cooldowns: the first fork ({forks[0]}) must come after the warmup "
                        f"({where}.warmup_frac {train.warmup_frac})")
    if train.evals < len(forks):
        raise UserError(f"{where}.evals: {train.evals} evaluations are too few for {len(forks)} cooldown branches; "
                        f"wsd evaluates the trunk at every fork, so {where}.evals must be at least {len(forks)}")


def validate_data(data: DataSettings, where: str = "data") -> None:
    """Check data settings (the source's existence is checked when the corpus is read)."""
    if not 0 < data.val_percent < 50:
        raise UserError(f"{where}.val_percent: must be in (0, 50), got {data.val_percent}")
    if not data.source:
        raise UserError(f"{where}.source: must not be empty; use 'stdlib' for the embedded corpus")
    if not (math.isfinite(data.max_epochs) and data.max_epochs > 0):
        raise UserError(f"{where}.max_epochs: must be a number > 0 (1: every token seen once), got {data.max_epochs}")


def validate_run(cfg: RunConfig) -> None:
    """Check a whole run configuration."""
    validate_shape(cfg.shape)
    validate_train(cfg.train)
    if cfg.train.budgets:
        raise UserError("train.budgets: iso-FLOP budgets belong in a sweep file; for one run give --flops")
    validate_data(cfg.data)
    if cfg.seed < 0:
        raise UserError(f"seed: must be >= 0, got {cfg.seed}")


# ----------------------------------------------------------------------------------------------
# Sweep files

SWEEP_KEYS = ("name", "objective", "model", "shapes", "seeds", "train", "data", "launch")
SHAPE_DEFAULT_KEYS = ("context", "vocab_size", "arch", "ffn_mult", "objective")
# Training settings one entry of `shapes` may set for its own runs: a peak learning rate per width, and (for
# a sweep whose small shapes should see more tokens than its large ones) the trunk's tokens, with the warmup
# and the forks that go with them.
SHAPE_TRAIN_KEYS = ("lr", "tokens", "warmup_frac", "cooldowns")


def parse_sweep(doc: Any, where: str = "sweep") -> SweepConfig:
    """Turn a parsed YAML document into a validated :class:`SweepConfig`."""
    if not isinstance(doc, Mapping):
        raise UserError(f"{where}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    _check_keys(doc, SWEEP_KEYS, where)
    name = doc.get("name")
    if not isinstance(name, str) or not RUN_ID_PATTERN.match(name):
        raise UserError(
            f"{where}.name: must be a simple name of letters, digits, '.', '_' or '-' (no slashes), got {name!r}"
        )
    model_defaults = doc.get("model") or {}
    if not isinstance(model_defaults, Mapping):
        raise UserError(f"{where}.model: expected a mapping of {', '.join(SHAPE_DEFAULT_KEYS)}")
    _check_keys(model_defaults, SHAPE_DEFAULT_KEYS, f"{where}.model")
    if "objective" in doc:  # the sweep's objective (clm or mlm), a default for every shape like model.objective
        if "objective" in model_defaults:
            raise UserError(f"{where}.objective: give the objective once, at the top or as model.objective")
        model_defaults = {**model_defaults, "objective": doc["objective"]}
    raw_shapes = doc.get("shapes")
    if not isinstance(raw_shapes, list) or not raw_shapes:
        raise UserError(f"{where}.shapes: expected a non-empty list of {{width, depth, heads}} mappings")
    shapes, shape_train = [], []
    for i, raw in enumerate(raw_shapes):
        if not isinstance(raw, Mapping):
            raise UserError(f"{where}.shapes[{i}]: expected a mapping like {{width: 64, depth: 2, heads: 2}}")
        missing = [k for k in ("width", "depth", "heads") if k not in raw]
        if missing:
            raise UserError(f"{where}.shapes[{i}]: missing {', '.join(missing)}")
        raw = dict(raw)
        override = {k: raw.pop(k) for k in SHAPE_TRAIN_KEYS if k in raw}
        shape = _from_mapping(ModelShape, {**model_defaults, **raw}, f"{where}.shapes[{i}]")
        validate_shape(shape, f"{where}.shapes[{i}]")
        shapes.append(shape)
        shape_train.append(_shape_train(override, f"{where}.shapes[{i}]"))
    seeds_raw = doc.get("seeds", [0])
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise UserError(f"{where}.seeds: expected a non-empty list of integers, e.g. [0, 1]")
    seeds = tuple(_number(s, f"{where}.seeds", int) for s in seeds_raw)
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"{where}.seeds: seeds must be distinct integers >= 0, got {list(seeds)}")
    raw_train = doc.get("train")
    prunes: tuple[PruneSettings | None, ...] = ()
    if isinstance(raw_train, Mapping) and "prune" in raw_train:
        raw_train = dict(raw_train)
        raw_prune = raw_train.pop("prune")
        if isinstance(raw_prune, list):  # several settings to compare: one run per entry
            if not raw_prune:
                raise UserError(f"{where}.train.prune: expected a setting or a non-empty list of settings")
            prunes = tuple(parse_prune(p, f"{where}.train.prune[{i}]") for i, p in enumerate(raw_prune))
        elif raw_prune is not None:  # null, as the resolved sweep.yaml writes a dense sweep, is no setting
            prunes = (parse_prune(raw_prune, f"{where}.train.prune"),)
    train = _from_mapping(TrainSettings, raw_train, f"{where}.train")
    validate_train(train, f"{where}.train")
    for prune in prunes:  # the listed settings are each a run's train.prune
        if prune is not None:
            validate_train(dataclasses.replace(train, prune=prune), f"{where}.train")
    for i, override in enumerate(shape_train):  # each shape's runs must be valid runs too
        if override.get("tokens") is not None and train.budgets:
            raise UserError(f"{where}.shapes[{i}].tokens: an iso-FLOP sweep (train.budgets) sets every run's tokens "
                            "from its budget; drop the shape's tokens or the budgets")
        if override:
            validate_train(_overridden(train, override), f"{where}.shapes[{i}]")
    data = _from_mapping(DataSettings, doc.get("data"), f"{where}.data")
    validate_data(data, f"{where}.data")
    launch = _from_mapping(LaunchSettings, doc.get("launch"), f"{where}.launch")
    if launch.nproc < 1 or launch.retries < 0:
        raise UserError(f"{where}.launch: nproc must be >= 1 and retries >= 0")
    sweep = SweepConfig(name=name, shapes=tuple(shapes), seeds=seeds, train=train, data=data, launch=launch,
                        shape_train=tuple(shape_train) if any(shape_train) else (), prunes=prunes)
    ids = [r.run_id for r in sweep.all_runs()]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UserError(f"{where}.shapes: run {dupes[0]!r} appears twice; each (shape, seed, train.prune) must be unique")
    if train.budgets and not sweep.runs():
        best = max(sweep.all_runs(), key=sweep.budget_steps)
        need = max(train.budgets) * MIN_BUDGET_STEPS / max(1, sweep.budget_steps(best))
        raise UserError(f"{where}.train.budgets: no shape gets {MIN_BUDGET_STEPS} optimizer steps at any budget "
                        f"(best: {best.run_id}, {sweep.budget_steps(best)} steps); raise the largest budget to "
                        f"at least {need:.2g} FLOPs")
    return sweep


def _shape_train(override: dict, where: str) -> dict:
    """The training settings a shape entry overrides (SHAPE_TRAIN_KEYS), typed as TrainSettings holds them."""
    settings = _from_mapping(TrainSettings, override, where)
    return {k: getattr(settings, k) for k in override}


def _overridden(train: TrainSettings, override: dict) -> TrainSettings:
    """A shape's training settings: the sweep's, with its own in place (its tokens replace a flops budget)."""
    return dataclasses.replace(train, **override, **({"flops": None} if "tokens" in override else {}))


def load_sweep(path: Path) -> SweepConfig:
    """Read and validate a sweep YAML file (``yaml.safe_load``: nothing in it is executed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"SWEEP: no such file {str(path)!r}; see sweeps/tiny.yaml for an example") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or a NUL byte in the path
        raise UserError(f"SWEEP: cannot read {str(path)!r}: {e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # reader errors span several lines
        raise UserError(f"SWEEP: {path.name} is not valid YAML{at}: {problem}") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, or nesting deeper than Python's stack
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"SWEEP: {path.name} holds a value that cannot be read: {reason}") from None
    return parse_sweep(doc, where=path.name)


def prune_to_dict(prune: PruneSettings | None) -> dict | None:
    """A pruning setting as plain data; rounds and rewind only for imp, so other runs' config.json stay as before."""
    if prune is None:
        return None
    raw = dataclasses.asdict(prune)
    return raw if prune.method in PRUNE_LOTTERY else {k: v for k, v in raw.items() if k not in ("rounds", "rewind")}


def train_to_dict(train: TrainSettings) -> dict:
    """Training settings as plain data (lists, not tuples), as sweep files, sweep.yaml and config.json hold them."""
    raw = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(train).items()}
    return {**raw, "prune": prune_to_dict(train.prune)}


def sweep_to_dict(sweep: SweepConfig) -> dict:
    """The sweep as plain data, in the same layout as a sweep file (for the resolved copy)."""
    return {
        "name": sweep.name,
        "shapes": [
            {**dataclasses.asdict(s), **{k: list(v) if isinstance(v, tuple) else v for k, v in override.items()}}
            for s, override in zip(sweep.shapes, sweep.shape_train or ({},) * len(sweep.shapes))
        ],
        "seeds": list(sweep.seeds),
        "train": {**train_to_dict(sweep.train),
                  "prune": [prune_to_dict(p) for p in sweep.prunes] if sweep.prunes else None},
        "data": dataclasses.asdict(sweep.data),
        "launch": dataclasses.asdict(sweep.launch),
    }
