"""What a sweep's runs say besides the law: how its models were trained, so a plan can be trained the same way.

A planned point becomes a *recipe*: the model shape, the training settings of the sweep's runs
(batch, schedule, warmup, precision, evaluations, data), the tokens the plan gives it, and a
learning rate from a rule the sweep states:

- every run trained at one peak learning rate: that rate ("constant");
- runs at per-shape rates (a sweep file's ``shapes[i].lr``, as sweeps/tiny.yaml gives): the
  power of width fitted to them by least squares in log space, lr = c * width^p
  ("power_of_width", with the fit's RMS error in log lr), which reproduces tiny.yaml's
  1/sqrt(width) rule and extends it to planned widths the sweep never trained.

The warmup follows the rule the sweep's runs share: one fraction of the trunk for every run
("fraction", a sweep with one train.warmup_frac), or one number of tokens whatever the trunk
("tokens", as sweeps/tiny.yaml gives each shape the same 52K tokens of warmup through its own
warmup_frac); runs that share neither give the reference run's fraction ("reference_run").

The compression half of a recipe takes the block size and recovery fine-tune steps of the
variants `tlc compress` measured for that method, and for a weight-only quantizer (gptq, rtn) its
bits, group size and calibration windows, so the plan compresses as the law was fitted.
Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.compression_fit import TIMINGS, timing_of
from tlc.config import PRUNE_DURING_DEFAULT
from tlc.io import list_runs, read_jsonl, read_run_config
from tlc.plan.cost import STORE_SPARSE, WeightOnly

# Training settings a recipe copies from the sweep's runs; tokens, flops, lr and prune are the plan's own,
# and an iso-FLOP sweep's budgets are not a planned run's.
PLAN_OWNED = ("tokens", "flops", "lr", "budgets", "prune")
# A planned run is trained the way the law's points were. A cosine sweep's points are run ends: a cosine
# run to the planned tokens. A WSD sweep's points are cooldown-branch ends: a WSD trunk with one branch at
# its end, so trunk plus branch are the planned tokens. The two match at a tuned peak rate, but a cosine
# run at a WSD sweep's rates ended 1.6% higher (bench/wsd_cosine.py, BENCHMARKS.md).
COSINE_RUN = {"schedule": "cosine", "cooldowns": []}
WSD_RUN = {"schedule": "wsd", "cooldowns": [1.0]}


def trunk_tokens(train: dict, tokens: float) -> int:
    """Tokens a recipe's ``train.tokens`` must say so that the finished model has seen ``tokens``: all of
    them for a cosine run, the trunk's share (tokens / (1 + cooldown_frac)) for a WSD run."""
    if train.get("schedule") == "wsd":
        return int(round(tokens / (1.0 + float(train.get("cooldown_frac", 0.2)))))
    return int(tokens)


WARMUP_AGREEMENT = 0.01  # runs warm up alike when their fractions (or warmup tokens) differ by at most 1%
MAX_WARMUP_FRAC = 0.5  # a planned trunk shorter than twice the sweep's warmup warms up for half its steps


@dataclass(frozen=True)
class WarmupRule:
    """How long a planned run warms up (module docstring): a share of its trunk, or a number of tokens."""

    kind: str  # "fraction", "tokens" or "reference_run"
    value: float  # the share of the trunk's steps, or the tokens

    def frac(self, trunk: int) -> float:
        """``train.warmup_frac`` for a trunk of ``trunk`` tokens."""
        if self.kind == "tokens":
            return min(self.value / max(trunk, 1), MAX_WARMUP_FRAC)
        return self.value


def warmup_rule(runs: list[tuple[float, float]]) -> WarmupRule:
    """The rule the runs' (warmup_frac, trunk tokens) pairs share; the first pair is the reference run's."""
    fracs = [f for f, _ in runs]
    tokens = [f * t for f, t in runs]

    def agree(values: list[float]) -> bool:
        return max(values) <= (1 + WARMUP_AGREEMENT) * min(values)

    if min(fracs) <= 0 or agree(fracs):
        return WarmupRule("fraction", fracs[0])
    if agree(tokens):
        return WarmupRule("tokens", float(np.median(tokens)))
    return WarmupRule("reference_run", fracs[0])


@dataclass(frozen=True)
class LrRule:
    """Peak learning rate as a function of width (module docstring)."""

    kind: str  # "constant" or "power_of_width"
    c: float  # lr = c * width^p
    p: float
    rms_log_error: float  # in-sample RMS of log lr residuals over the sweep's runs
    n_runs: int

    def lr(self, width: int) -> float:
        """Peak learning rate for a model of ``width``."""
        return float(self.c * width**self.p)

    def describe(self) -> dict:
        """JSON-ready summary for plan.json."""
        equation = "lr = c" if self.kind == "constant" else "lr = c * width^p"
        return {"kind": self.kind, "equation": equation, "c": self.c, "p": self.p,
                "rms_log_error": self.rms_log_error, "n_runs": self.n_runs,
                "source": "peak lr of each run in config.json (a sweep file's train.lr or shapes[i].lr)"}


def fit_lr_rule(widths: list[int], lrs: list[float]) -> LrRule | None:
    """The learning-rate rule of a sweep's runs (module docstring); None without runs."""
    if not lrs:
        return None
    if len(set(lrs)) == 1 or len(set(widths)) < 2:
        return LrRule("constant", float(np.median(lrs)), 0.0, 0.0 if len(set(lrs)) == 1 else
                      float(np.std(np.log(lrs))), len(lrs))
    X = np.stack([np.ones(len(widths)), np.log(widths)], axis=1)
    y = np.log(lrs)
    (log_c, p), *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ np.array([log_c, p])
    return LrRule("power_of_width", float(math.exp(log_c)), float(p), float(np.sqrt(np.mean(residuals**2))), len(lrs))


@dataclass(frozen=True)
class SweepRecipe:
    """How the sweep's runs were trained, read from their config.json and compress.jsonl."""

    train: dict  # the reference run's train settings without PLAN_OWNED
    data: dict  # source, val_percent, text_field (and the fingerprint the runs saw)
    world_size: int
    lr_rule: LrRule | None
    warmup: WarmupRule | None  # None when no run records its warmup and trunk: the reference run's settings stand
    unique_tokens: float | None  # tokens in the training split (config.json data.train_tokens_available)
    compression: dict  # {method: {"block": int | None, "recovery_steps": int}} as compress.jsonl measured it
    reference_run: str

    def point(self, shape: dict, tokens: float, method: str, sparsity: float, int8: bool,
              weight_only: WeightOnly | None = None) -> dict:
        """plan.json's recipe for one point: everything `tlc train --plan` and `tlc compress --plan` need.
        ``weight_only``: the quantizer a dense model is compressed with instead (method "none", no int8).

        Pruning at init or during training (`timing_of`) is a training setting, ``train.prune``, as the
        sweep's sparse runs were trained; the trained model is then stored as it is, its zeros found by
        global magnitude pruning at the same sparsity (the weights the masks removed are exactly zero,
        so nothing else goes) with no fine-tune, so its bytes are those of the bitmask encoding."""
        timing = timing_of(method) if sparsity > 0 else "none"
        prune = None
        if timing in TIMINGS:
            start, end = (0.0, 0.0) if timing == "init" else PRUNE_DURING_DEFAULT
            prune = {"method": method.split("-", 1)[1], "sparsity": sparsity, "start": start, "end": end}
            method = STORE_SPARSE
        measured = self.compression.get(method, {})
        lr = self.lr_rule.lr(shape["width"]) if self.lr_rule else None
        trunk = trunk_tokens(self.train, tokens)
        train = {**self.train, "tokens": trunk, "lr": lr, "prune": prune}
        if self.warmup is not None:
            train["warmup_frac"] = self.warmup.frac(trunk)
        compression = {
            "method": method if sparsity > 0 else "none",
            "sparsity": sparsity,
            "block": measured.get("block") if method == "block" else None,
            "recovery_steps": measured.get("recovery_steps", 0) if sparsity > 0 and prune is None else 0,
            "int8": int8,
            # wanda and sparsegpt: the training-split windows they were measured with ({split, sequences, tokens})
            **({"calibration": measured["calibration"]} if sparsity > 0 and measured.get("calibration") else {}),
        }
        if weight_only is not None:  # gptq or rtn codes of the dense model (tlc.compress.pipeline.planned_variants)
            compression.update(method=weight_only.method, bits=weight_only.bits, group_size=weight_only.group_size,
                               calibration=weight_only.calibration)
        return {
            "shape": shape,
            "train": train,
            "timing": timing,
            "tokens": int(tokens),  # what the finished model has seen (with a WSD recipe, trunk plus branch)
            "lr_rule": self.lr_rule.kind if self.lr_rule else None,
            "warmup_rule": self.warmup.kind if self.warmup else None,
            "data": self.data,
            "world_size": self.world_size,
            "seed": 0,
            "compression": compression,
        }


def read_sweep_recipe(runs_dir: Path) -> SweepRecipe | None:
    """The recipe of the sweep under ``runs_dir``; None when no run records its training settings."""
    configs = [(p, c) for p in list_runs(runs_dir) if (c := read_run_config(p)) and isinstance(c.get("train"), dict)
               and isinstance(c.get("shape"), dict)]
    if not configs:
        return None
    reference_dir, reference = configs[0]
    widths, lrs, warmups = [], [], []
    for _, c in configs:
        frac, trunk = c["train"].get("warmup_frac"), c["train"].get("tokens")
        if isinstance(frac, (int, float)) and isinstance(trunk, (int, float)) and trunk > 0:
            warmups.append((float(frac), float(trunk)))
        lr, width = c["train"].get("lr"), c["shape"].get("width")
        if isinstance(lr, (int, float)) and lr > 0 and isinstance(width, int) and width > 0:
            widths.append(width)
            lrs.append(float(lr))
    available = [c.get("data", {}).get("train_tokens_available") for _, c in configs]
    available = [float(a) for a in available if isinstance(a, (int, float)) and a > 0]
    compression: dict[str, dict] = {}
    for run_dir, _ in configs:
        for row in read_jsonl(run_dir / "compress.jsonl"):
            method = row.get("method")
            if isinstance(method, str) and method != "none" and method not in compression:
                compression[method] = {"block": row.get("block"), "recovery_steps": int(row.get("recovery_steps") or 0),
                                        "calibration": row.get("calibration")}
    data = {k: v for k, v in (reference.get("data") or {}).items()
            if k in ("source", "val_percent", "text_field", "fingerprint")}
    finished = WSD_RUN if reference["train"].get("schedule") == "wsd" else COSINE_RUN
    return SweepRecipe(
        train={**{k: v for k, v in reference["train"].items() if k not in PLAN_OWNED},
               **{k: v for k, v in finished.items() if k in reference["train"]}},
        data=data,
        world_size=int(reference.get("world_size") or 1),
        lr_rule=fit_lr_rule(widths, lrs),
        warmup=warmup_rule(warmups) if warmups else None,
        unique_tokens=min(available) if available else None,
        compression=compression,
        reference_run=reference_dir.name,
    )
