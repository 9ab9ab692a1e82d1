"""Reading a plan.json back: the checks and the run settings `tlc train --plan`, `tlc compress --plan`
and `tlc validate` share. JSON only (no torch), so a bad plan is refused before anything loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tlc.config import DataSettings, ModelShape, RunConfig, TrainSettings, parse_prune, validate_run
from tlc.errors import UserError

FORMAT = "tlc.plan/2"  # plan.json's "format": what tlc plan writes (tlc.plan.output) and these readers accept
POINTS = ("recommendation", "train_small")  # the plan's runnable points, in the order validate trains them


def read_plan(path: Path, flag: str = "--plan") -> dict:
    """plan.json's content; UserError naming ``flag`` for a missing file, bad JSON or another format."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{flag}: {path} not found; write one with tlc plan --runs RUNS_DIR") from None
    except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON, or a NUL in the path
        raise UserError(f"{flag}: cannot read {path} as JSON ({error})") from None
    if not isinstance(plan, dict):
        raise UserError(f"{flag}: {path} is not a plan.json (a JSON object written by tlc plan)")
    if plan.get("format") != FORMAT:
        raise UserError(f"{flag}: {path} has format {plan.get('format')!r}, this tlc reads {FORMAT!r}; "
                        "plan again with tlc plan")
    return plan


def parse_points(text: str | None, plan: dict, flag: str = "--points") -> list[str]:
    """Point names from ``recommendation,train_small``; each must exist in the plan and have a recipe."""
    if text is None:  # every point the plan has (train_small is null when no dense model meets the budgets)
        names = [p for p in POINTS if isinstance(plan.get(p), dict)]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag}: give at least one of {', '.join(POINTS)}")
    for name in names:
        point_recipe(plan, name, flag)
    return list(dict.fromkeys(names))


def point_recipe(plan: dict, name: str, flag: str = "--point") -> dict:
    """The recipe of one planned point; UserError naming ``flag`` when it does not exist or cannot be trained."""
    if name not in POINTS:
        raise UserError(f"{flag}: no point {name!r} in a plan; valid: {', '.join(POINTS)}")
    point = plan.get(name)
    if not isinstance(point, dict):
        raise UserError(f"{flag}: the plan has no {name} (no model met its budgets that way); valid: "
                        + ", ".join(p for p in POINTS if isinstance(plan.get(p), dict)))
    recipe = point.get("recipe")
    if not isinstance(recipe, dict):
        raise UserError(f"{flag}: {name} has no recipe: plans from a published law have no shapes to train; "
                        "plan with --runs RUNS_DIR")
    return recipe


def run_config(recipe: dict, seed: int | None = None, flag: str = "--plan") -> RunConfig:
    """The training run of a recipe (seed: the recipe's, or another for a repeat)."""
    try:
        shape = ModelShape(**recipe["shape"])
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["train"].items()}
        settings["prune"] = parse_prune(settings.get("prune"), f"{flag}: recipe train.prune")  # pruning while training
        train = TrainSettings(**settings)
        data = DataSettings(**{k: v for k, v in recipe["data"].items() if k != "fingerprint"})
        cfg = RunConfig(shape=shape, train=train, data=data, seed=int(recipe["seed"] if seed is None else seed))
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{flag}: the recipe is malformed ({error}); plan again with tlc plan") from None
    if cfg.train.lr is None:
        raise UserError(f"{flag}: the recipe has no learning rate (the sweep's runs record none); plan again")
    validate_run(cfg)
    return cfg


def fit_sha256(runs_dir: Path) -> str | None:
    """Hash of RUNS_DIR/fit.json, which plan.json's sweep.fit_sha256 records."""
    path = Path(runs_dir) / "fit.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_same_sweep(plan: dict, runs_dir: Path, flag: str = "--plan") -> None:
    """UserError unless the plan was made from RUNS_DIR's current fit.json."""
    sweep = plan.get("sweep")
    if not isinstance(sweep, dict):
        raise UserError(f"{flag}: the plan was made from a published law, not from {runs_dir}; "
                        f"plan with tlc plan --runs {runs_dir}")
    if sweep.get("fit_sha256") != fit_sha256(runs_dir):
        raise UserError(f"{flag}: the plan was made from another fit ({sweep.get('runs_dir')}) than "
                        f"{Path(runs_dir) / 'fit.json'} (another sweep, or refit since); plan again with "
                        f"tlc plan --runs {runs_dir}")


def run_name(recipe: dict, point: str, seed: int) -> str:
    """Folder name of a planned point's run: the point, a hash of its recipe (another plan, another
    folder) and the seed, e.g. ``recommendation-3f2a9c1e-s0``."""
    key = hashlib.sha256(json.dumps({k: v for k, v in recipe.items() if k != "seed"}, sort_keys=True).encode())
    return f"{point}-{key.hexdigest()[:8]}-s{seed}"


def validation_run_dir(runs_dir: Path, recipe: dict, point: str, seed: int) -> Path:
    """RUNS_DIR/validation/<run_name>: outside list_runs, which counts only RUNS_DIR's direct subfolders."""
    return Path(runs_dir) / "validation" / run_name(recipe, point, seed)
