"""``tlc plan --budget FLOPS``: the model to train and how to compress it, searched with Optuna.

The pieces: `tlc.plan.law` (the law and its measured ranges), `tlc.plan.cost` (non-zeros,
bytes, latency), `tlc.plan.space` (sizes, tokens from the budget, the polish),
`tlc.plan.search` (TPE, NSGA-II, storage) and `tlc.plan.output` (plan.json and the table).
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from scaling.bootstrap import percentile_interval
from scaling.loss_split import predict_split
from tlc.errors import UserError
from tlc.plan.cost import WEIGHT_ONLY_LATENCY, CostModel, build_cost_model
from tlc.plan.law import PlanLaw
from tlc.plan.output import FORMAT, WHEN, plan_json
from tlc.plan.planfile import fit_sha256
from tlc.plan.recipe import read_sweep_recipe
from tlc.plan.search import feasible, run_nsga2, run_tpe, study_key, trial_start
from tlc.plan.space import LATENCY_MARGIN, MIN_CONTINUOUS_N, Budgets, Category, PlanSpace, Point
from tlc.plan.training_cost import DataLimit, fit_throughput
from tlc.plan.trial_store import persist
from tlc.units import format_bytes, format_count

DEFAULT_MAX_SPARSITY = 0.95
FLAGS = {"params": "--max-params", "bytes": "--max-bytes", "latency_ms": "--max-latency-ms"}
COST_KEYS = {"params": "nonzeros", "bytes": "bytes", "latency_ms": "latency_ms"}  # keys of a PLAN's "inference"


def _format_cost(name: str, value: float) -> str:
    return {"params": format_count, "bytes": format_bytes}.get(name, lambda v: f"{v:.3g} ms per token")(value)


def _categories(law: PlanLaw, args: argparse.Namespace, latency_groups: set | None, costs: CostModel) -> list[Category]:
    """Compression choices: dense, then each fitted pruning method, each with and without int8, then each fitted
    weight-only quantizer (gptq-w4, ...) that compress.jsonl measured."""
    compression_flags = [f for f, given in (("--methods", args.methods is not None),
                                             ("--max-sparsity", args.max_sparsity is not None),
                                             ("--no-int8", args.no_int8)) if given]
    quantizers = [k for k in law.quantizers if k in costs.weight_only]  # fitted, and their encoding measured
    if not law.methods and not law.has_int8 and not quantizers and compression_flags:
        why = ("its sweep has no compressed variants; run tlc compress, then tlc fit" if law.runs_dir else
               "a published or bare law describes dense models only; plan with --runs RUNS_DIR after tlc compress "
               "and tlc fit")
        raise UserError(f"{compression_flags[0]}: {law.source} has no compression model ({why})")
    methods = list(law.methods)
    if args.methods is not None:
        asked = [m.strip() for m in args.methods.split(",") if m.strip()]
        named = [k for k in quantizers if k in asked or costs.weight_only[k].method in asked]
        asked = [m for m in asked if m not in quantizers and m not in {costs.weight_only[k].method for k in quantizers}]
        quantizers = named
        withheld = [m for m in asked if m in law.withheld]
        if withheld:
            raise UserError(f"--methods: {withheld[0]}'s model is {law.withheld[withheld[0]]}; the sweep cannot defend "
                            f"it (train more shapes or sparsities with it), so the planner does not use it")
        unknown = [m for m in asked if m != "none" and m not in law.methods]
        if unknown:
            valid = [*law.methods, *dict.fromkeys(costs.weight_only[k].method for k in law.quantizers
                                                  if k in costs.weight_only), *law.quantizers]
            raise UserError(f"--methods: no compression model for {', '.join(unknown)} in {law.source}; "
                            f"valid: {', '.join(valid) or 'none (no compression was fitted)'}")
        methods = [m for m in asked if m != "none"]
    int8_options = [False, True] if law.has_int8 and not args.no_int8 else [False]
    categories = [Category(m, q) for m in ["none", *methods] for q in int8_options]
    categories += [Category("none", False, k) for k in quantizers
                   if not (args.no_int8 and costs.weight_only[k].bits == 8)]
    if latency_groups is not None:
        categories = [c for c in categories if costs.latency_group(c.method, c.int8, c.weight_only) in latency_groups]
        if not categories:
            raise UserError("--device: no compression variant measured there is also in the fit's models")
    return categories


def _smallest_costs(space: PlanSpace) -> dict[str, tuple[float, str]]:
    """Per inference budget, the least cost any model of the space reaches, and which model that is."""
    sizes = space.sizes([1], [1]) if space.shapes else space.continuous_sizes([MIN_CONTINUOUS_N])
    N, emb = sizes[0], sizes[1]
    size = "width 32, depth 1" if space.shapes else f"N {format_count(MIN_CONTINUOUS_N)}"
    out = {}
    for name in space.budgets.limits():
        options = []
        for c in space.categories:
            for s in sorted({0.0, space.sparsity_range(c.method)[1]}):
                desc = (f"{size}, " + ("dense" if s == 0 else f"{c.method} {s:.0%}") + (" int8" if c.int8 else "")
                        + (f" {c.weight_only}" if c.weight_only else ""))
                options.append((float(space.cost(name, N, emb, s, c)[0]), desc))
        out[name] = min(options)
    return out


def _check_feasible(space: PlanSpace) -> None:
    """UserError (one line, with the smallest budget that could be met) when no model can meet a budget."""
    sizes = space.sizes([1], [1]) if space.shapes else space.continuous_sizes([MIN_CONTINUOUS_N])
    if space.tokens(sizes[2], sizes[3])[0] < 1.0:
        if space.budgets.train_seconds is not None:
            raise UserError(f"--budget: {space.budgets.train_seconds:g} s cannot train even the smallest model "
                            "one token at the sweep's measured throughput")
        needed = space.budgets.inference_tokens * sizes[3][0] + sizes[2][0]
        raise UserError(f"--budget: {space.budgets.train_flops:.3g} FLOPs cannot train even the smallest model and "
                        f"serve --inference-tokens; it needs at least {needed:.3g} FLOPs")
    for name, (cost, desc) in _smallest_costs(space).items():
        limit = space.budgets.limits()[name]
        if cost > limit:
            raise UserError(f"{FLAGS[name]}: {_format_cost(name, limit)} cannot be met; the smallest model the planner "
                            f"can make ({desc}) needs {_format_cost(name, cost)}, the smallest {FLAGS[name]} that "
                            f"could be met")


def _polish_best(space: PlanSpace, study, categories: list[Category], extra_starts=()) -> Point | None:
    """Polish the best feasible trial of each category (and the extra starts); the lowest loss wins."""
    starts = {}
    for trial in sorted((t for t in study.get_trials(deepcopy=False) if t.values and feasible(t)),
                        key=lambda t: t.values[0]):
        category, k, d, N = trial_start(space, trial)
        if category in categories:
            starts.setdefault(category, (k, d, N))  # trials come best first
    smallest = (1, 1, None) if space.shapes else (None, None, MIN_CONTINUOUS_N)
    overall = next(iter(starts.values()), smallest)  # the best feasible trial of any category
    results = []
    for category in categories:
        for k, d, N in dict.fromkeys([starts.get(category, smallest), overall, *extra_starts]):  # ordered, unique
            point = space.polish(category, k, d, N)
            if point is not None and point.feasible:
                results.append(point)
    return min(results, key=lambda p: p.loss) if results else None


def _start_of(point: Point) -> tuple[int | None, int | None, float | None]:
    return (point.width // 32, point.depth, None) if point.width is not None else (None, None, point.N)


def _pareto_front(space: PlanSpace, study) -> list[Point]:
    """Feasible non-dominated NSGA-II trials, each polished under its own cost as the budget."""
    primary = space.budgets.primary
    raw = [t for t in study.best_trials if feasible(t)]
    points = []
    for trial in raw:
        category, k, d, N = trial_start(space, trial)
        sampled = space.point(k, d, N, category, trial.params.get("sparsity", space.sparsity_range(category.method)[0]))
        polished = space.with_limits(**{f"max_{primary}": sampled.costs[primary]}).polish(category, k, d, N)
        best = polished if polished is not None and polished.feasible and polished.loss < sampled.loss else sampled
        points.append(space.point(*_start_of(best), best.category, best.sparsity))  # costs under the real budgets
    points.sort(key=lambda p: (p.costs[primary], p.loss))
    front, best_loss = [], math.inf
    for p in points:
        if p.loss < best_loss:
            front.append(p)
            best_loss = p.loss
    return front


# A pruning model whose held-out error is above this gets a warning: wider than any plan's interval
# half-width measured on the tiny sweep (1.5-2.9%; BENCHMARKS.md, "Planner calibration").
PRUNING_ERROR_WARN = 0.05


def _range_warnings(law: PlanLaw, label: str, point: Point) -> list[str]:
    r, out = law.ranges, []
    n = float(law.law_params(point.N, point.embedding))
    if r.N and not (r.N[0] <= n <= r.N[1]):
        counted = "all parameters" if law.size == "total" else "non-embedding parameters"
        out.append(f"{label}: N = {format_count(n)} ({counted}, as the law counts them) is outside the measured "
                   f"sizes {format_count(r.N[0])}..{format_count(r.N[1])} (an extrapolation)")
    if r.D and not (r.D[0] <= point.tokens <= r.D[1]):
        out.append(f"{label}: {format_count(point.tokens)} tokens is outside the measured final tokens "
                   f"{format_count(r.D[0])}..{format_count(r.D[1])} (an extrapolation)" + _longest_out(law)
                   + _copying(law))
    elif point.tokens > (longest := max((d for size, d in r.reach if size >= n), default=math.inf)):
        # inside the sweep's tokens, but its long runs may all be of smaller models
        out.append(f"{label}: {format_count(point.tokens)} tokens is more than any run of at least its size "
                   f"(N = {format_count(n)}) was trained on, {format_count(longest)} (an extrapolation for its size)"
                   + _longest_out(law) + _copying(law))
    if r.aspect and point.width and point.depth and not (r.aspect[0] <= point.width / point.depth <= r.aspect[1]):
        out.append(f"{label}: width/depth {point.width}/{point.depth} = {point.width / point.depth:.3g} is outside the "
                   f"sweep's shapes' {r.aspect[0]:.3g}..{r.aspect[1]:.3g}; the law sees only N, not the shape "
                   "(an extrapolation)")
    if r.depth and point.depth and not (r.depth[0] <= point.depth <= r.depth[1]):
        out.append(f"{label}: depth {point.depth} is outside the sweep's depths {r.depth[0]}..{r.depth[1]}; the law "
                   "sees only N, not the shape (an extrapolation)")
    method = point.category.method
    if point.sparsity > 0:
        measured = r.sparsity.get(method)
        if measured is None:
            out.append(f"{label}: no measured sparsities recorded for {method} (no compress.jsonl found)")
        elif point.sparsity > measured[1] + 1e-9:  # below the lowest it interpolates towards dense, measured at 0
            out.append(f"{label}: sparsity {point.sparsity:.1%} is above the highest measured {method} sparsity "
                       f"{measured[1]:.0%} (an extrapolation)")
        check = law.pruning_checks.get(method) or {}
        if (check.get("error") or 0) > PRUNING_ERROR_WARN:
            out.append(f"{label}: the {method} pruning model ({check['candidate']}) missed held-out measurements by "
                       f"{check['error']:.1%} on average, so the loss pruning adds here is less certain than its "
                       "interval says")
        if check.get("levels") == 2 and measured and measured[0] < point.sparsity < measured[1]:
            out.append(f"{label}: {method} was measured at two sparsities, {measured[0]:.0%} and {measured[1]:.0%}; "
                       "between them nothing checks the fitted curve (compress at three or more, as tlc compress "
                       "does by default)")
    return out


def extrapolation(law: PlanLaw, point: Point, entry: dict) -> dict:
    """How far a plan point reaches past what the law was fitted on: its training compute over the sweep's
    largest run's, its N (as the law counts it) over the largest measured, its tokens over the longest finished
    point; each None where the sweep does not record it. Above 1 is an extrapolation."""
    r = law.ranges
    n = float(law.law_params(point.N, point.embedding))
    return {
        "compute": entry["train_flops"] / r.compute if r.compute else None,
        "N": n / r.N[1] if r.N else None,
        "tokens": point.tokens / r.D[1] if r.D else None,
        "largest_run_flops": r.compute,
        "largest_N": r.N[1] if r.N else None,
        "longest_tokens": r.D[1] if r.D else None,
    }


def _copying(law: PlanLaw) -> str:
    """A clause when the fit saw the loss on repeated targets still falling faster at the runs' ends ('' else)."""
    split = law.fitted.loss_split
    if not split or not split.get("copying_under_way"):
        return ""
    bias = split["parts"]["repeat"]["heldout_tokens"]["bias"]
    return ("; the sweep's models were still learning to copy from their context where it stopped (the loss on "
            f"targets seen earlier in their window fell {bias:.1%} below a refit on shorter runs), so this loss will "
            "likely come out lower than predicted")


def _longest_out(law: PlanLaw) -> str:
    """How the law did at predicting longer runs than it was fitted to, as a clause ('' when not measured)."""
    longest = law.choice.get("heldout_tokens")
    if not longest:
        return ""
    direction = "over" if longest["bias"] > 0 else "under"
    return (f"; refitted without each run's longest point, this law {direction}estimated those losses by "
            f"{abs(longest['bias']):.1%} on average at {longest['tokens_ratio']:.3g}x the tokens")


def _law_tokens(point: Point) -> float:
    """The D the law is evaluated at: effective tokens where the corpus is repeated."""
    return max(point.effective_tokens if point.effective_tokens is not None else point.tokens, 1.0)


def _gain_interval(law: PlanLaw, small: Point, large: Point) -> tuple[float | None, float | None]:
    """Bootstrap interval of loss(train small) - loss(recommendation), paired draw by draw."""
    def draws(p: Point) -> np.ndarray:
        return law.loss_draws(p.N, _law_tokens(p), p.category.method, p.sparsity, p.category.int8, p.embedding,
                              p.category.weight_only)

    difference = draws(small) - draws(large)
    if not len(difference) or not np.isfinite(difference).any():
        return None, None
    low, high = percentile_interval(difference, law.fitted.confidence)
    return float(low), float(high)


def sweep_identity(runs_dir: Path) -> dict:
    """Which sweep and which fit a plan came from: `tlc validate` and `--plan` refuse a plan of another."""
    return {"runs_dir": str(runs_dir.resolve()), "name": runs_dir.resolve().name, "fit_sha256": fit_sha256(runs_dir)}


def make_plan(law: PlanLaw, budgets: Budgets, args: argparse.Namespace, storage: str | None) -> dict:
    """Search, polish and assemble plan.json's content (see `tlc.plan.output`)."""
    latency_flag = "--max-latency-ms" if budgets.max_latency_ms is not None else "--device" if args.device else None
    costs = build_cost_model(law.runs_dir, args.device, args.latency_batch, latency_flag, law.shape_template)
    # Under a latency budget only measured (method, int8) groups can be priced; --device alone just reports latency.
    groups = set(costs.latency.offsets) if costs.latency and budgets.max_latency_ms is not None else None
    categories = _categories(law, args, groups, costs)
    max_sparsity = args.max_sparsity if args.max_sparsity is not None else DEFAULT_MAX_SPARSITY
    # A method measured at one sparsity (2:4 at 0.5; achieved sparsities may differ in the last digits) stays there.
    fixed = {m: low for m, (low, high) in law.ranges.sparsity.items() if high - low < 0.01 and m in law.methods}
    recipe = read_sweep_recipe(law.runs_dir) if law.runs_dir is not None and law.shape_template else None
    data_limit = None
    if recipe is not None and recipe.unique_tokens:
        data_limit = DataLimit(recipe.unique_tokens, args.max_epochs)
    elif args.max_epochs_given:
        raise UserError("--max-epochs: the law records no corpus size (plan with --runs on a trained sweep)")
    if budgets.train_seconds is not None:
        throughput = fit_throughput(law.runs_dir if law.shape_template else None)
    else:
        try:  # with a FLOPs budget, the predicted training time is shown where the sweep measured it
            throughput = fit_throughput(law.runs_dir) if law.shape_template else None
        except UserError:
            throughput = None
    recovery = {}
    if recipe is not None:
        tokens_per_step = recipe.train.get("micro_batch", 1) * law.shape_template["context"]  # gradual's fine-tune
        recovery = {m: c["recovery_steps"] * tokens_per_step for m, c in recipe.compression.items()
                    if c.get("recovery_steps")}
    measured = getattr(args, "measured_shapes", False) and law.shape_template
    aspect, depths = (law.ranges.aspect, law.ranges.depth) if measured else (None, None)
    space = PlanSpace(law, costs, budgets, max_sparsity, categories, fixed, data_limit, throughput, recovery, aspect,
                      depths)
    _check_feasible(space)

    tpe = run_tpe(space, args.trials, args.seed)
    recommendation = _polish_best(space, tpe, categories)
    if recommendation is None:
        flags = [FLAGS[n] for n in budgets.limits()] + (["--max-epochs"] if data_limit is not None else [])
        raise UserError("inference budgets: no model meets all of them together"
                        + (f" within {data_limit.max_epochs:g} epochs of {data_limit.unique_tokens:.3g} unique tokens"
                           if data_limit is not None else "") + "; loosen one of " + ", ".join(flags))
    dense = Category("none", False)
    train_small = _polish_best(space, tpe, [dense], extra_starts=[_start_of(recommendation)])
    unlimited = space.with_limits(max_params=None, max_bytes=None, max_latency_ms=None)
    compute_optimal = _polish_best(unlimited, tpe, [dense], extra_starts=[_start_of(recommendation)])
    nsga = run_nsga2(space, args.pareto_trials, args.seed)
    front = _pareto_front(space, nsga)

    key = study_key(space, args.seed, args.trials, args.pareto_trials)
    studies = {"tpe": f"plan-tpe-{key}", "nsga2": f"plan-nsga2-{key}"}
    if storage:
        persist(storage, {studies["tpe"]: tpe, studies["nsga2"]: nsga})

    def entry(point: Point | None) -> dict | None:
        if point is None:
            return None
        weight_only = point.category.weight_only
        interval = law.interval(point.N, _law_tokens(point), point.category.method, point.sparsity,
                                point.category.int8, point.embedding, weight_only)
        out = plan_json(point, interval, budgets.inference_tokens, COST_KEYS[budgets.primary])
        if weight_only is not None:  # plan.json names the quantizer, its encoding and the loss it is predicted to add
            measured = costs.weight_only[weight_only]
            out["compression"].update(
                method=measured.method, bits=measured.bits, group_size=measured.group_size,
                calibration=measured.calibration, timing=WHEN["after"],
                added_loss=law.added_loss(point.N, _law_tokens(point), weight_only, point.embedding),
                latency=WEIGHT_ONLY_LATENCY)
        out["dense_loss_split"] = predict_split(law.fitted.loss_split, law.law_params(point.N, point.embedding),
                                                _law_tokens(point))
        if recipe is not None:
            shape = {"width": point.width, "depth": point.depth, "heads": out["heads"], **space.template}
            out["recipe"] = recipe.point(shape, point.tokens, point.category.method, point.sparsity,
                                         point.category.int8, costs.weight_only.get(weight_only))
        return out

    rec, small = entry(recommendation), entry(train_small)
    gain = None
    if small is not None:
        difference = small["loss"]["mean"] - rec["loss"]["mean"]
        low, high = _gain_interval(law, train_small, recommendation)
        gain = {"loss": difference, "relative": difference / small["loss"]["mean"], "low": low, "high": high}
    warnings = [f"{method}: not planned with, its model is {why}" for method, why in law.withheld.items()]
    warnings += _range_warnings(law, "recommended", recommendation)
    if train_small is not None:
        warnings += _range_warnings(law, "train small", train_small)
    r = law.ranges
    return {
        "format": FORMAT,
        "sweep": sweep_identity(law.runs_dir) if law.runs_dir is not None else None,
        "lr_rule": recipe.lr_rule.describe() if recipe is not None and recipe.lr_rule else None,
        "law": {
            "source": law.source, "description": law.description, "form": law.law, "parameters": law.parameters,
            "status": law.choice.get("status"), "why": law.choice.get("why"),
            "copying_under_way": (law.fitted.loss_split or {}).get("copying_under_way"),
            "heldout_error": law.choice.get("heldout_error"), "candidates": law.choice.get("candidates", []),
            "shapes": (f"{_family_label(law.shape_template)} shapes, context {law.shape_template['context']}, "
                       f"vocab {law.shape_template['vocab_size']}") if space.shapes else "continuous N",
            "flops": ("tlc.shapes.flops_per_token per training token, a third of it per inference token"
                      if space.shapes else "6N per training token, 2N per inference token"),
        },
        "budget": {
            "train_flops": budgets.train_flops, "inference_tokens": budgets.inference_tokens,
            "max_params": budgets.max_params, "max_bytes": budgets.max_bytes,
            "max_latency_ms": budgets.max_latency_ms, "device": costs.latency.device if costs.latency else None,
            "latency_batch": args.latency_batch, "latency_unit": "ms per token at latency_batch",
            "latency_margin": LATENCY_MARGIN, "train_seconds": budgets.train_seconds,
            "recovery_tokens": recovery,
        },
        "throughput": throughput.describe() if throughput is not None else None,
        "data": data_limit.describe() if data_limit is not None else None,
        "cost_model": costs.describe(),
        "search": {
            "seed": args.seed, "tpe_trials": args.trials, "pareto_trials": args.pareto_trials,
            "max_sparsity": max_sparsity, "fixed_sparsity": fixed, "categories": [c.label for c in categories],
            "storage": storage, "studies": studies,
        },
        "recommendation": rec,
        "train_small": small,
        "gain": gain,
        "compute_optimal": entry(compute_optimal),
        "pareto_cost": COST_KEYS[budgets.primary],
        "pareto_front": [entry(p) for p in front],
        "measured_ranges": {
            "N": list(r.N) if r.N else None, "tokens": list(r.D) if r.D else None,
            "sparsity": {m: list(v) for m, v in r.sparsity.items()}, "note": r.note,
            "aspect": list(r.aspect) if r.aspect else None, "depth": list(r.depth) if r.depth else None,
        },
        "extrapolation": extrapolation(law, recommendation, rec),
        "warnings": warnings,
    }


def _family_label(template: dict) -> str:
    """What the plan's shapes are: their arch, or the masked-LM encoder for an mlm sweep."""
    return "mlm encoder (BERT)" if template.get("objective", "clm") == "mlm" else template["arch"]
