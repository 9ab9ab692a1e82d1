"""Carry a plan out and compare: train and compress each planned point, measure, and judge the plan.

Each point (recommendation, train_small) is trained by ``tlc train --plan`` in its own process
(one run directory per point and seed under ``RUNS_DIR/validation/``, where `tlc.io.list_runs`
never looks: ``validation/`` holds no config.json) and compressed as planned by the compression
stage (`tlc.compress.pipeline.compress_run` with the plan's variant). Both stages resume, so an
interrupted validation continues where it stopped when run again.

validation.json (format "tlc.validation/1") accumulates one entry per plan validated:

    validations [{plan {path, sha256, made_from}, corpus (tlc.corpus: the fingerprint the plan was made on,
                  the one trained on, allowed_other_corpus), budget, law {form, status}, seeds,
                  points {name: POINT}, verdict {predicted_gain, predicted_gain_low,
                  predicted_gain_high, measured_gain, measured_gain_sem, gain_interval_widened,
                  gain (confirmed, refuted or undecided), gain_reason, sentence}}]

    POINT = {run_dirs, compression, predicted {loss {mean, low, high}, nonzeros, bytes, latency_ms,
                                               dense_loss_split},
             measured {loss (mean over seeds), loss_per_seed, loss_sem (standard error of that mean; null
                       with one seed), dense_loss, nonzeros, bytes, latency_ms, latency_batch,
                       train_wall_s, compress_wall_s, dense_loss_split, loss_split},
             budget {max_params, max_bytes, max_latency_ms}, checks {loss_inside_interval,
             loss_interval_widened, loss_error_relative, nonzeros_within_budget, bytes_within_budget,
             latency_within_budget, dense_split_error_relative}}

A point "came true" (loss_inside_interval) when the measured mean over seeds lies in the predicted
interval widened on each side by the measured standard error of that mean: the plan predicts the
mean loss, and the measurement of it is itself uncertain by that much. With one seed there is no
measured spread, and the interval is not widened (validate with 2 seeds, the default, to measure it).

    dense_loss_split = {repeat, novel} or null: the trained model's loss before compression on
    targets seen earlier in their window and on the rest (predicted by plan.json's point, measured
    as the mean over seeds of the run's last evaluation); null where the plan or the runs lack it.
    Where a plan missed, it says on which part: a miss on "repeat" alone is copying from context
    that set in past the sweep's tokens (scaling.loss_split). measured.loss_split is the same split of
    the compressed model's loss (the planned variant's compress.jsonl rows, mean over seeds): compression
    costs repeated targets more once a model copies (BENCHMARKS.md, "Pruning between the measured
    sparsities").

Nothing here prints: progress goes through the ``log`` callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path

from scaling.loss_split import PARTS
from tlc.errors import UserError
from tlc.io import atomic_write_json, is_complete, read_jsonl
from tlc.plan.planfile import point_recipe, run_config, validation_run_dir

FORMAT = "tlc.validation/1"
VALIDATION_FILE = "validation.json"
GAIN_SEMS = 2.0  # the measured gain decides a winner only when it is this many standard errors from zero


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean of ``values`` (sample standard deviation / sqrt n); None under 2 values."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) >= 2 else None


def came_true(measured: float, sem: float | None, low: float | None, high: float | None) -> tuple[bool | None, list]:
    """(inside, [low, high] widened by ``sem``): whether a measured mean lies in a predicted interval
    widened on each side by its standard error; None where the plan gave no interval."""
    if low is None or high is None:
        return None, None
    widen = sem or 0.0
    return bool(low - widen <= measured <= high + widen), [low - widen, high + widen]


def plan_sha256(plan_path: Path) -> str:
    """Hash of the plan file: a validation entry belongs to exactly one plan."""
    return hashlib.sha256(Path(plan_path).read_bytes()).hexdigest()


def train_point(plan_path: Path, point: str, seed: int, run_dir: Path, log) -> None:
    """Train one planned point with ``tlc train --plan`` in its own process (resumes a started run).

    The process is forked from this process's fork server where that is safe (tlc.forkserver), so the second
    and later trainings of a validation skip the imports a fresh process pays (about 6 CPU-seconds each here).
    """
    import tempfile

    from tlc import forkserver

    if is_complete(run_dir):
        return
    log(f"training {point} (seed {seed}) -> {run_dir}")
    argv = ["train", "--plan", str(plan_path), "--point", point, "--seed", str(seed), "--out", str(run_dir),
            "--no-progress"]
    with open(os.devnull, "wb") as quiet, tempfile.TemporaryFile() as errors:
        code = forkserver.popen(argv, stdout=quiet.fileno(), stderr=errors.fileno()).wait()
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    if code != 0:
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"training {point} (seed {seed}) failed: {tail}; fix it and run tlc validate again to resume")


def compress_point(run_dir: Path, recipe: dict, latency_repeats: int, log) -> dict:
    """Compress a trained point as planned; returns the planned variant's compress.jsonl row."""
    from dataclasses import replace

    from tlc.compress.pipeline import compress_run, finished_model, planned_variants

    settings, specs = planned_variants(recipe["compression"])
    settings = replace(settings, latency_repeats=latency_repeats)
    rows = compress_run(run_dir, settings, log=log, specs=specs, checkpoint=finished_model(run_dir))
    return next(r for r in rows if r["variant"] == specs[-1].id)


def _within(measured: float | None, limit: float | None) -> bool | None:
    if limit is None:
        return None
    return measured is not None and measured <= limit


def measure_point(plan: dict, plan_path: Path, runs_dir: Path, point: str, seeds: list[int],
                  latency_repeats: int, log) -> dict:
    """Train and compress one point for every seed; its validation.json entry."""
    recipe = point_recipe(plan, point, "--points")
    planned = plan[point]
    budget = plan["budget"]
    batch = int(budget.get("latency_batch") or 1)
    losses, rows, last_evaluations, run_dirs = [], [], [], []
    for seed in seeds:
        cfg = run_config(recipe, seed)
        run_dir = validation_run_dir(runs_dir, recipe, point, cfg.seed)
        train_point(plan_path, point, cfg.seed, run_dir, log)
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        row = compress_point(run_dir, recipe, latency_repeats, log)
        losses.append(float(row["val_loss"]))
        last_evaluations.append(metrics[-1])
        rows.append(row)
        run_dirs.append(str(run_dir.relative_to(runs_dir)))
    loss, loss_sem = statistics.fmean(losses), standard_error(losses)
    latency = [r.get(f"latency_ms_b{batch}") for r in rows]
    latency = statistics.median(latency) if all(isinstance(v, (int, float)) for v in latency) else None
    predicted_loss = planned["loss"]
    inside, widened = came_true(loss, loss_sem, predicted_loss.get("low"), predicted_loss.get("high"))
    measured_split = _mean_split(last_evaluations)
    predicted_split = planned.get("dense_loss_split")
    measured = {
        "loss": loss, "loss_per_seed": losses, "loss_sem": loss_sem,
        "dense_loss": statistics.fmean(float(m["val_loss"]) for m in last_evaluations),
        "nonzeros": max(r["nonzeros"] for r in rows), "bytes": max(r["bytes"] for r in rows),
        "latency_ms": latency, "latency_batch": batch, "latency_repeats": latency_repeats,
        "latency_device": rows[0].get("device"),
        "train_wall_s": statistics.fmean(float(m["wall_s"]) for m in last_evaluations),
        "dense_loss_split": measured_split,
        "loss_split": _mean_split(rows),
        "compress_wall_s": statistics.fmean(float(r.get("wall_s") or 0.0) for r in rows),
    }
    limits = {"max_params": budget.get("max_params"), "max_bytes": budget.get("max_bytes"),
              "max_latency_ms": budget.get("max_latency_ms")}
    return {
        "run_dirs": run_dirs,
        "seeds": seeds,
        "compression": recipe["compression"],
        "predicted": {"loss": predicted_loss, **planned["inference"], "dense_loss_split": predicted_split},
        "measured": measured,
        "budget": limits,
        "checks": {
            "loss_inside_interval": inside,
            "loss_interval_widened": widened,
            "loss_error_relative": (loss - predicted_loss["mean"]) / loss,
            "nonzeros_within_budget": _within(measured["nonzeros"], limits["max_params"]),
            "bytes_within_budget": _within(measured["bytes"], limits["max_bytes"]),
            "latency_within_budget": _within(latency, limits["max_latency_ms"]),
            "dense_split_error_relative": None if not (measured_split and predicted_split) else {
                part: (measured_split[part] - predicted_split[part]) / measured_split[part] for part in PARTS},
        },
    }


def _mean_split(rows: list[dict]) -> dict | None:
    """The loss by target of evaluation or compress.jsonl rows, mean over seeds; None where a row lacks it."""
    if not all(isinstance(r.get(f"val_loss_{part}"), (int, float)) for r in rows for part in PARTS):
        return None
    return {part: statistics.fmean(r[f"val_loss_{part}"] for r in rows) for part in PARTS}


def split_summary(point: dict) -> str | None:
    """A point's loss by target before compression, measured against predicted, and after compression where
    the point was compressed, as a clause; None without."""
    error = point["checks"].get("dense_split_error_relative")
    if not error:
        return None
    measured, predicted = point["measured"]["dense_loss_split"], point["predicted"]["dense_loss_split"]
    text = (f"on new targets {measured['novel']:.3f} against {predicted['novel']:.3f} predicted "
            f"({error['novel']:+.1%}), on targets seen earlier in their window {measured['repeat']:.3f} against "
            f"{predicted['repeat']:.3f} ({error['repeat']:+.1%})")
    compression, after = point.get("compression") or {}, point["measured"].get("loss_split")
    if after and (compression.get("method", "none") != "none" or compression.get("int8")):
        text += (f"; compressed, {after['novel']:.3f} on new targets ({after['novel'] - measured['novel']:+.3f}) "
                 f"and {after['repeat']:.3f} on the others ({after['repeat'] - measured['repeat']:+.3f})")
    return text


def judge_gain(measured: float, sem: float | None, low: float | None, high: float | None) -> tuple[str, str]:
    """(confirmed | refuted | undecided, why) for the measured gain of compressing, train_small's loss minus
    the recommendation's, against the plan's interval for it.

    Refuted: the measured gain lies outside the predicted interval widened by its standard error.
    Confirmed: it lies inside, and where the plan's interval names a winner (excludes zero) the
    measured gain is at least GAIN_SEMS standard errors from zero on that side. Undecided
    otherwise: one seed (no measured spread), no predicted interval, or seeds too noisy to name
    the winner the plan named. Signs alone never decide.
    """
    if low is None or high is None:
        return "undecided", "the plan gives no interval for its gain"
    if sem is None:
        return "undecided", "one seed measures no seed-to-seed spread; validate with --seeds 0,1"
    if not low - sem <= measured <= high + sem:
        return "refuted", (f"the measured gain {measured:+.4f} ± {sem:.4f} lies outside the predicted "
                           f"[{low:+.4f}, {high:+.4f}] widened by its standard error")
    named = 1 if low > 0 else -1 if high < 0 else 0
    if named and measured * named < GAIN_SEMS * sem:
        return "undecided", (f"the measured gain {measured:+.4f} ± {sem:.4f} is inside the predicted interval but "
                             f"within {GAIN_SEMS:g} standard errors of zero: the seeds cannot name the winner")
    return "confirmed", (f"the measured gain {measured:+.4f} ± {sem:.4f} lies in the predicted "
                         f"[{low:+.4f}, {high:+.4f}]" + (f", {GAIN_SEMS:g}+ standard errors from zero" if named else ""))


def verdict(plan: dict, points: dict) -> dict:
    """Did "train large, then compress" gain what the plan said? (Needs both points; see `judge_gain`.)"""
    gain = plan.get("gain") or {}
    low, high = gain.get("low"), gain.get("high")
    out = {"predicted_gain": gain.get("loss"), "predicted_gain_low": low, "predicted_gain_high": high,
           "measured_gain": None, "measured_gain_sem": None, "gain_interval_widened": None, "gain": None,
           "gain_reason": None}
    if "recommendation" not in points or "train_small" not in points or gain.get("loss") is None:
        out["sentence"] = "validate both recommendation and train_small to compare them"
        return out
    small, large = points["train_small"]["measured"], points["recommendation"]["measured"]
    measured = small["loss"] - large["loss"]
    sems = [small.get("loss_sem"), large.get("loss_sem")]
    sem = None if None in sems else (sems[0] ** 2 + sems[1] ** 2) ** 0.5  # independent runs: variances add
    out["gain"], out["gain_reason"] = judge_gain(measured, sem, low, high)
    out.update(measured_gain=measured, measured_gain_sem=sem,
               gain_interval_widened=None if low is None or sem is None else [low - sem, high + sem])
    predicted = f"predicted {gain['loss']:+.4f}" + ("" if low is None else f" [{low:+.4f}, {high:+.4f}]")
    out["sentence"] = (f"gain {out['gain']}: {out['gain_reason']} ({predicted}, measured {measured:+.4f}"
                       + ("" if sem is None else f" ± {sem:.4f}") + ")")
    return out


def read_validations(runs_dir: Path) -> list[dict]:
    """Entries of RUNS_DIR/validation.json (empty when there is none)."""
    path = Path(runs_dir) / VALIDATION_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"RUNS_DIR: {path} is unreadable ({error}); remove it and validate again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("validations"), list):
        raise UserError(f"RUNS_DIR: {path} is not a {FORMAT} file; remove it and validate again")
    return data["validations"]


def write_validation(runs_dir: Path, entry: dict) -> None:
    """Add or replace (same plan hash and seeds) one entry of RUNS_DIR/validation.json, atomically."""
    key = (entry["plan"]["sha256"], tuple(entry["seeds"]))
    kept = [v for v in read_validations(runs_dir) if (v["plan"]["sha256"], tuple(v["seeds"])) != key]
    atomic_write_json(Path(runs_dir) / VALIDATION_FILE, {"format": FORMAT, "validations": [*kept, entry]})


def validate_plan(runs_dir: Path, plan: dict, plan_path: Path, points: list[str], seeds: list[int],
                  latency_repeats: int, log, corpus: dict | None = None) -> dict:
    """Carry out ``points`` of a plan (every seed), write validation.json after each point; the entry.
    ``corpus``: `tlc.corpus.check_corpus`'s record of the corpus trained on, stored as it is."""
    entry = {
        "plan": {"path": str(plan_path), "sha256": plan_sha256(plan_path), "made_from": plan.get("sweep")},
        "corpus": corpus,
        "budget": plan["budget"],
        "law": {"form": plan["law"].get("form"), "status": plan["law"].get("status")},
        "seeds": seeds,
        "points": {},
    }
    for point in points:
        entry["points"][point] = measure_point(plan, plan_path, runs_dir, point, seeds, latency_repeats, log)
        entry["verdict"] = verdict(plan, entry["points"])
        write_validation(runs_dir, entry)
    return entry
