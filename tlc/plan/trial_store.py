"""Finished Optuna trials written into an RDB storage: Optuna's ``add_trials``, or one SQLite transaction.

``add_trials`` commits once per trial, about 30 ms each on SQLite: storing a plan's 112 trials
took 4.2x longer than one transaction (BENCHMARKS.md). So on SQLite, at the one schema version
this was written against, the rows Optuna's own RDB storage writes for a finished trial are
inserted in a single transaction. Any other storage, schema version or trial this path does not
cover (intermediate values, a non-finite objective) goes through ``add_trials``. A test stores the
same trials both ways and compares what Optuna reads back.
"""

from __future__ import annotations

import json
import math

from tlc.plan.search import open_storage

SQLITE_SCHEMA_VERSION = 12  # Optuna's RDB schema (optuna/storages/_rdb/models.py) that the transaction writes


def persist(url: str, studies: dict[str, object]) -> None:
    """Copy finished in-memory studies into the storage at ``url``, replacing studies of the same names."""
    optuna, storage = open_storage(url)
    for name, study in studies.items():
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass  # no study of that name yet
        optuna.create_study(study_name=name, storage=storage, directions=study.directions)
        store_trials(storage, name, study.get_trials(deepcopy=False))


def store_trials(storage, study_name: str, trials, transaction: bool = True) -> str:
    """Add finished ``trials`` to the existing study ``study_name``; return the path that wrote them.

    "transaction" where the single-transaction path applies (and ``transaction`` is on), else
    "add_trials".
    """
    import optuna

    if transaction and storage.url.startswith("sqlite") and _covered(trials):
        if _insert_sqlite(storage, storage.get_study_id_from_name(study_name), trials):
            return "transaction"
    optuna.load_study(study_name=study_name, storage=storage).add_trials(trials)
    return "add_trials"


def _covered(trials) -> bool:
    """Whether every trial holds only what the transaction writes."""
    return all(not t.intermediate_values and all(math.isfinite(v) for v in t.values or []) for t in trials)


def _insert_sqlite(storage, study_id: int, trials) -> bool:
    """Insert finished trials in one transaction; False (nothing written) at another schema version."""
    from optuna.distributions import distribution_to_json
    from sqlalchemy import text

    with storage.engine.begin() as connection:
        version = connection.execute(text("SELECT schema_version FROM version_info")).scalar()
        if version != SQLITE_SCHEMA_VERSION:
            return False
        for trial in trials:
            trial_id = connection.execute(
                text("INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                     "VALUES (:number, :study, :state, :start, :complete)"),
                {"number": trial.number, "study": study_id, "state": trial.state.name,
                 "start": trial.datetime_start.isoformat(" ") if trial.datetime_start else None,
                 "complete": trial.datetime_complete.isoformat(" ") if trial.datetime_complete else None},
            ).lastrowid
            rows = {
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                "VALUES (:trial, :name, :value, :distribution)":
                    [{"trial": trial_id, "name": name, "value": distribution.to_internal_repr(trial.params[name]),
                      "distribution": distribution_to_json(distribution)}
                     for name, distribution in trial.distributions.items()],
                "INSERT INTO trial_values (trial_id, objective, value, value_type) "
                "VALUES (:trial, :objective, :value, 'FINITE')":
                    [{"trial": trial_id, "objective": i, "value": v} for i, v in enumerate(trial.values or [])],
                'INSERT INTO trial_system_attributes (trial_id, "key", value_json) VALUES (:trial, :key, :value)':
                    [{"trial": trial_id, "key": k, "value": json.dumps(v)} for k, v in trial.system_attrs.items()],
                'INSERT INTO trial_user_attributes (trial_id, "key", value_json) VALUES (:trial, :key, :value)':
                    [{"trial": trial_id, "key": k, "value": json.dumps(v)} for k, v in trial.user_attrs.items()],
            }
            for statement, values in rows.items():
                if values:
                    connection.execute(text(statement), values)
    return True
