"""Optuna over the planner's space: TPE with constraints for one answer, NSGA-II for the Pareto front.

Both samplers are seeded and run in memory, so a rerun with the same seed asks for the same
trials and gets the same answer; the finished trials are then copied into the storage
(SQLite ``RUNS_DIR/study.db`` by default, or ``--storage URL``) under study names that encode
the law, the budgets, the seed and the trial count. A study of the same name is deleted and
recreated on every invocation, so the stored study is always exactly this run's trials.
(Copying finished trials is much faster than optimising against SQLite, which commits on every
trial; the planner's SQLite connections also skip fsync, since a lost study is recomputed from
its seed.)

Each trial picks a size (width and depth steps, or log N), a compression category and, for a
pruning method, a sparsity; tokens follow from the compute budget. Constraints are relative
excesses (cost / budget - 1 <= 0 is feasible), one per inference budget plus one that the model
can be trained on at least one token.
"""

from __future__ import annotations

import hashlib
import json
import math

from tlc.errors import UserError
from tlc.plan.space import MAX_DEPTH, MAX_WIDTH_STEPS, MIN_CONTINUOUS_N, WIDTH_STEP, Category, PlanSpace, Point

DEFAULT_TPE_TRIALS = 48
DEFAULT_PARETO_TRIALS = 64
PARETO_POPULATION = 16


def study_key(space: PlanSpace, seed: int, trials: int, pareto_trials: int) -> str:
    """A study-name suffix that encodes the law, every budget, the seed and the trial counts."""
    b = space.budgets
    law = hashlib.sha1(json.dumps([space.law.source, space.law.parameters], sort_keys=True).encode()).hexdigest()[:8]
    parts = [f"C{b.train_flops:.6g}" if b.train_flops is not None else f"T{b.train_seconds:.6g}s",
             f"I{b.inference_tokens:.6g}"]
    if space.data_limit is not None:
        parts.append(f"U{space.data_limit.unique_tokens:.6g}-e{space.data_limit.max_epochs:g}")
    parts += [f"{name}{limit:.6g}" for name, limit in b.limits().items()]
    if space.costs.latency is not None:
        parts.append(f"on-{space.costs.latency.device}-b{space.costs.latency.batch}")
    if space.aspect is not None:
        parts.append(f"wd{space.aspect[0]:.6g}-{space.aspect[1]:.6g}")
    if space.depths is not None:
        parts.append(f"d{space.depths[0]}-{space.depths[1]}")
    parts += [f"s{space.max_sparsity:g}", f"law-{law}", f"seed{seed}", f"n{trials}-{pareto_trials}"]
    return "-".join(parts)


def _suggest(space: PlanSpace, trial) -> Point:
    labels = [c.label for c in space.categories]
    category = space.categories[labels.index(trial.suggest_categorical("compression", labels))]
    lowest, highest = space.sparsity_range(category.method)
    sparsity = trial.suggest_float("sparsity", 0.0, highest) if highest > lowest else lowest
    if space.shapes:
        k = trial.suggest_int("width_steps", 1, MAX_WIDTH_STEPS, log=True)
        d = trial.suggest_int("depth", 1, MAX_DEPTH, log=True)
        return space.point(k, d, None, category, sparsity)
    N = trial.suggest_float("N", MIN_CONTINUOUS_N, max(space.max_continuous_N, 2 * MIN_CONTINUOUS_N), log=True)
    return space.point(None, None, N, category, sparsity)


def _set_constraints(space: PlanSpace, trial, point: Point, skip: str | None = None) -> None:
    for name, limit in space.budgets.limits().items():
        if name != skip:
            trial.set_constraint(name, point.costs[name] / limit - 1.0)
    trial.set_constraint("train_tokens", 1.0 - point.tokens)  # at least one token of training
    if space.shapes:  # a width/depth ratio and depth the sweep measured (PlanSpace.aspect, .depths)
        trial.set_constraint("shape", 0.0 if space.shape_allowed(point.width // WIDTH_STEP, point.depth) else 1.0)
    if space.data_limit is not None and point.epochs is not None:
        trial.set_constraint("epochs", point.epochs / space.data_limit.max_epochs - 1.0)


def _quiet():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def run_tpe(space: PlanSpace, trials: int, seed: int):
    """A seeded TPE study (in memory) minimising predicted loss under the inference budgets."""
    optuna = _quiet()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(16, trials)))

    def objective(trial) -> float:
        point = _suggest(space, trial)
        _set_constraints(space, trial, point)
        return point.loss

    study.optimize(objective, n_trials=trials)
    return study


def run_nsga2(space: PlanSpace, trials: int, seed: int):
    """A seeded NSGA-II study (in memory) of (predicted loss, primary inference cost), other budgets as constraints."""
    optuna = _quiet()
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=PARETO_POPULATION)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    primary = space.budgets.primary

    def objective(trial) -> tuple[float, float]:
        point = _suggest(space, trial)
        _set_constraints(space, trial, point, skip=primary)
        cost = point.costs[primary]
        return point.loss, cost if math.isfinite(cost) else 1e300

    study.optimize(objective, n_trials=trials)
    return study


def trial_start(space: PlanSpace, trial) -> tuple[Category, int | None, int | None, float | None]:
    """(category, width steps, depth, N) of a finished trial, to start the polish from."""
    labels = [c.label for c in space.categories]
    category = space.categories[labels.index(trial.params["compression"])]
    return category, trial.params.get("width_steps"), trial.params.get("depth"), trial.params.get("N")


def feasible(trial) -> bool:
    """Whether a finished trial met every constraint."""
    return all(v <= 0 for v in trial.constraints.values())


def open_storage(url: str):
    """An Optuna RDB storage for ``url``; SQLite connections skip fsync (the studies are reproducible)."""
    optuna = _quiet()
    from optuna.storages import RDBStorage

    is_sqlite = url.startswith("sqlite")
    try:
        storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if is_sqlite else {})
    except Exception as error:  # noqa: BLE001  (drivers raise many kinds; the user needs the message)
        raise UserError(f"--storage: cannot open {url!r}: {str(error).splitlines()[0]}") from None
    if is_sqlite:
        from sqlalchemy import event

        @event.listens_for(storage.engine, "connect")
        def _no_fsync(connection, _record):
            connection.execute("PRAGMA synchronous=OFF")

        storage.engine.dispose()  # later connections run the pragma
    return optuna, storage
