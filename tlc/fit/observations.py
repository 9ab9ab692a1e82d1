"""``tlc fit RUNS_DIR``: fit scaling laws to a trained (and compressed) sweep, write fit.json.

Reads the run-directory contract written by ``tlc sweep`` and ``tlc compress``:

- ``<run-id>/config.json``: run_id and params (N in every law is params.total by default, or
  params.non_embedding with ``size="non_embedding"``: see SIZES);
- ``<run-id>/metrics.jsonl``: one evaluation per line with step, tokens (D), flops (C, the
  model's own FLOPs per token times D), val_loss and lr; lines marked ``final`` are finished-run
  points (a cosine run's end, each WSD cooldown branch's end: those carry ``fork_step``); the
  learning curve is every line that is not a branch's. Without any ``final`` field (runs from
  before it) the last evaluation is the finished point. Points at step 0 or with no tokens seen
  are skipped, and so are warmup points (before the learning rate peaks) unless --include-warmup;
- ``<run-id>/compress.jsonl`` (optional): one compressed variant per line with method,
  sparsity, bits and val_loss; the dense baseline is the line's dense_val_loss, else the
  file's dense row (method none, 32 bits, sparsity 0), else the run's last evaluation;
- a run trained sparse (config.json ``train.prune``) is not a point of the dense laws: each of its
  finished points is a variant of its dense twin at the same tokens, method ``init-<method>`` or
  ``during-<method>`` (`timing_variants`), so pruning at initialization and during training get
  compression models as after-training methods do.

and writes ``RUNS_DIR/fit.json`` atomically (layout in `scaling.sweep_fit`). All fitting is in
`scaling`; this module only reads files, reports and turns input problems into UserError.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import scaling
from scaling.observations import MIN_MODEL_SIZES, MIN_POINTS, MIN_TOKEN_COUNTS
from tlc.config import PRUNE_AT_INIT
from tlc.errors import UserError
from tlc.corpus import runs_corpus
from tlc.io import list_runs, read_jsonl, read_run_config

DEFAULT_BOOTSTRAP = 200

# What N counts in the laws. Hoffmann et al. 2022 count every parameter; Kaplan et al. 2020 leave
# the embeddings out. At the sizes a CPU trains the embeddings are most of a model (85% of w16-d1 at
# vocabulary 1024) and the output projection most of its compute, and the loss follows the total:
# w32-d1 and w32-d2 (12K and 25K non-embedding, 49K and 62K in all) ended 0.004 nats apart at 1.26M
# tokens. On the seven-shape tiny sweep of depths 1 and 2, Kaplan's law predicted the largest shape
# within 0.20% counting the total and 1.48% counting the rest (BENCHMARKS.md, "Which N").
SIZES = {"total": "every parameter, embeddings included (Hoffmann et al. 2022)",
         "non_embedding": "parameters outside the token and position embeddings (Kaplan et al. 2020)"}
DEFAULT_SIZE = "total"


def _read_json_lines(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a malformed line is a UserError naming it."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            cut = "" if line.endswith("\n") else " (cut short: an interrupted write? resume the run or delete the line)"
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg}){cut}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _number(path: Path, where: str, row: dict, field: str, positive: bool = False) -> float:
    """A finite number from ``row[field]`` (strictly positive if asked), else a UserError naming it."""
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{path}{where}: {field} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise UserError(f"{path}{where}: {field} must be > 0, got {value!r}")
    return float(value)


class RunNotTrained(Exception):
    """A run directory without any evaluation yet (a sweep still in progress); it is skipped."""


def branch_compress_files(run_dir: Path) -> list[Path]:
    """The compression rows of a run's cooldown branches, ``<run>/branches/<tokens>/compress.jsonl``, that exist."""
    root = run_dir / "branches"
    if not root.is_dir():
        return []
    return [b / "compress.jsonl" for b in sorted(root.iterdir())
            if b.name.isdigit() and (b / "compress.jsonl").is_file()]


def read_run(
    run_dir: Path, include_warmup: bool = False, size: str = DEFAULT_SIZE
) -> tuple[scaling.RunCurve, list[scaling.CompressedVariant], int]:
    """One run's learning curve and compressed variants, validated, from its directory, and
    how many warmup evaluations were left out. N is the run's ``params[size]`` (see SIZES).

    Evaluations before the learning rate first reaches its largest logged value are warmup:
    there the loss follows the learning-rate ramp rather than N and D, and with evaluations
    spaced evenly in log-FLOPs they can be half of a run's points. They are left out unless
    ``include_warmup``; a run without an lr field keeps every point.
    Raises RunNotTrained when metrics.jsonl is missing or has no evaluation after step 0.
    """
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{config_path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a JSON object")
    run_id = str(config.get("run_id") or run_dir.name)
    params = config.get("params")
    if not isinstance(params, dict):
        raise UserError(f"{config_path}: params must be an object with total and non_embedding counts")
    n_params = _number(config_path, "", params, size, positive=True)
    if not metrics_path.exists():
        raise RunNotTrained(f"{run_id}: no metrics.jsonl yet")

    by_step: dict[float, tuple[float, float, float, float]] = {}  # the learning curve (trunk)
    finished: dict[float, tuple[float, float, float, float]] = {}  # by tokens: (step, tokens, flops, loss)
    split: dict[float, tuple[float, float] | None] = {}  # by tokens: loss on repeated and on novel targets
    marked = False
    for number, row in _read_json_lines(metrics_path):
        where = f":{number}"
        step = _number(metrics_path, where, row, "step")
        tokens = _number(metrics_path, where, row, "tokens")
        flops = _number(metrics_path, where, row, "flops")
        val_loss = _number(metrics_path, where, row, "val_loss", positive=True)
        final = row.get("final", False)
        if not isinstance(final, bool):
            raise UserError(f"{metrics_path}{where}: final must be true or false, got {final!r}")
        marked = marked or "final" in row
        if step <= 0 or tokens <= 0:
            continue  # the initial evaluation: no training yet, no point on a scaling law
        if flops <= 0:
            raise UserError(f"{metrics_path}{where}: flops must be > 0 once tokens > 0, got {flops!r}")
        lr = _number(metrics_path, where, row, "lr") if "lr" in row else math.nan
        if final:
            finished[tokens] = (step, tokens, flops, val_loss)  # logged twice (a resumed run): the last counts
            parts = row.get("val_loss_repeat"), row.get("val_loss_novel")
            split[tokens] = (None if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in parts)
                             else (float(parts[0]), float(parts[1])))
        if "fork_step" not in row:
            by_step[step] = (tokens, flops, val_loss, lr)
    if not by_step:
        raise RunNotTrained(f"{run_id}: no evaluation after step 0 in metrics.jsonl yet")
    steps = sorted(by_step)
    if not marked:  # written before finished points were marked: the last evaluation is the one
        finished = {by_step[steps[-1]][0]: (steps[-1], *by_step[steps[-1]][:3])}
    rates = [by_step[s][3] for s in steps]
    warmup = 0
    if not include_warmup and all(math.isfinite(r) for r in rates):
        warmup = rates.index(max(rates))  # evaluations before the learning rate's peak
        finished = {d: p for d, p in finished.items() if p[0] >= steps[warmup]}
        steps = steps[warmup:]
    if not finished:
        raise RunNotTrained(f"{run_id}: no finished-run point (a line marked final) in metrics.jsonl yet")
    ends = [finished[d] for d in sorted(finished)]
    curve = scaling.RunCurve(
        run_id=run_id,
        params=n_params,
        tokens=[by_step[s][0] for s in steps],
        train_flops=[by_step[s][1] for s in steps],
        val_loss=[by_step[s][2] for s in steps],
        finished_tokens=[p[1] for p in ends],
        finished_flops=[p[2] for p in ends],
        finished_loss=[p[3] for p in ends],
        finished_split=None if any(split.get(d) is None for d in finished) else [split[d] for d in sorted(finished)],
    )

    variants = []
    # The run's final model, then each cooldown branch's model compressed at its own D
    # (<run>/branches/<tokens>/compress.jsonl): what the compression models' D/N term is fitted to.
    sources = [(run_dir / "compress.jsonl", None)]
    # the last branch's model is the run's model/ too: counted once, from the run's own rows
    own = (run_dir / "compress.jsonl").is_file()
    sources += [(path, float(path.parent.name)) for path in branch_compress_files(run_dir)
                if not (own and float(path.parent.name) == curve.final_tokens)]
    for compress_path, branch_tokens in sources:
        if not compress_path.exists():
            continue
        rows = _read_json_lines(compress_path)
        # The baseline for the loss compression adds: the dense row the compression stage
        # evaluated alongside its variants (same evaluation, no offset), else the last metrics line.
        dense_rows = [
            row for _, row in rows if row.get("method") in ("none", "dense") and row.get("bits") == 32
            and not row.get("sparsity")
        ]
        stage_dense = dense_rows[-1].get("val_loss") if dense_rows else None
        for number, row in rows:
            where = f":{number}"
            method = row.get("method")
            if not isinstance(method, str) or not method:
                raise UserError(f"{compress_path}{where}: method must be a non-empty string, got {method!r}")
            sparsity = _number(compress_path, where, row, "sparsity")
            bits = _number(compress_path, where, row, "bits")
            val_loss = _number(compress_path, where, row, "val_loss", positive=True)
            if "dense_val_loss" in row:
                dense = _number(compress_path, where, row, "dense_val_loss", positive=True)
            else:
                dense = stage_dense if isinstance(stage_dense, (int, float)) and stage_dense > 0 else None
            tokens = _number(compress_path, where, row, "tokens", positive=True) if "tokens" in row else branch_tokens
            try:
                variants.append(scaling.CompressedVariant(run_id, method, sparsity, int(bits), val_loss, dense,
                                                          tokens))
            except ValueError as error:
                raise UserError(f"{compress_path}{where}: {str(error).split(': ', 1)[-1]}") from None
    return curve, variants, warmup


def _trained_sparse(config: dict) -> bool:
    """Whether the run pruned while it trained (config.json train.prune set)."""
    return isinstance(config.get("train"), dict) and bool(config["train"].get("prune"))


def timing_method(prune: dict) -> str:
    """The compression-model name of a way of pruning while training: ``init-<method>`` for a mask fixed at
    step 0 (tlc.config.PRUNE_AT_INIT), ``during-<method>`` for one grown on a schedule; after-training
    methods keep their own names (magnitude, gradual, ...)."""
    return f"{'init' if prune.get('method') in PRUNE_AT_INIT else 'during'}-{prune.get('method')}"


# A sparse run's finished point counts only once its masks reach the target sparsity (a branch forked
# before a gradual ramp ends is a partly pruned model no planned run ends as).
SPARSITY_REACHED = 0.01


def _dense_key(config: dict) -> str:
    """What a sparse run and its dense twin share: shape, seed, data and every training setting but prune."""
    train = {k: v for k, v in (config.get("train") or {}).items() if k != "prune"}
    return json.dumps([config.get("shape"), config.get("seed"), (config.get("data") or {}).get("fingerprint"), train],
                      sort_keys=True)


def timing_variants(sparse: list[tuple[Path, dict]], dense: dict[str, scaling.RunCurve],
                    dense_configs: dict[str, dict]) -> tuple[list[scaling.CompressedVariant], list[str]]:
    """Each finished point of a run trained sparse (train.prune) as a compressed variant of its dense twin
    (the run with the same shape, seed, data and training settings) at the same tokens: what pruning at
    initialization or during training adds to the loss, fitted per timing like an after-training method.
    Returns the variants and a line for each sparse run or point left out."""
    twins = {_dense_key(c): run_id for run_id, c in dense_configs.items()}
    variants, skipped = [], []
    for run_dir, config in sparse:
        prune = config["train"]["prune"]
        method = timing_method(prune)
        twin = twins.get(_dense_key(config))
        if twin is None:
            skipped.append(f"{run_dir.name}: trained sparse ({method}) with no dense run of the same shape, seed "
                           "and settings to compare with; left out")
            continue
        curve = dense[twin]
        dense_at = {round(d): loss for d, loss in zip(curve.finished_tokens, curve.finished_loss)}
        target = float(prune.get("sparsity") or 0.0)
        used = 0
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            if row.get("final") is not True or round(float(row.get("tokens", 0))) not in dense_at:
                continue
            achieved = float(row.get("sparsity", target))
            if achieved < target - SPARSITY_REACHED or not 0 < achieved < 1:
                continue
            variants.append(scaling.CompressedVariant(twin, method, achieved, 32, float(row["val_loss"]),
                                                      dense_at[round(float(row["tokens"]))], float(row["tokens"])))
            used += 1
        if not used:
            skipped.append(f"{run_dir.name}: trained sparse ({method}), but no finished point at its target "
                           f"sparsity matches a finished point of {twin}; left out")
    return variants, skipped


def run_objective(config: dict) -> str:
    """A run's training objective from its config.json: clm (causal, the default) or mlm (masked LM)."""
    return ((config or {}).get("shape") or {}).get("objective", "clm")


def check_one_objective(run_dirs: list[Path]) -> str:
    """The one objective of ``run_dirs``; a UserError when causal and masked-LM runs are mixed (a masked-token
    loss and a next-token loss are different quantities: no law fits both)."""
    seen: dict[str, str] = {}
    for run_dir in run_dirs:
        seen.setdefault(run_objective(read_run_config(run_dir) or {}), run_dir.name)
    if len(seen) > 1:
        examples = ", ".join(f"{name} ({objective})" for objective, name in sorted(seen.items()))
        raise UserError(f"RUNS_DIR: mixes causal (clm) and masked-LM (mlm) runs, e.g. {examples}; their losses are not "
                        "one quantity, so fit each objective's runs from a folder of their own")
    return next(iter(seen), "clm")


def read_sweep(runs_dir: Path, include_warmup: bool = False,
               size: str = DEFAULT_SIZE) -> tuple[scaling.SweepObservations, list[str], int]:
    """Every trained run under ``runs_dir`` (a subdirectory holding config.json), in name order,
    a line for each run skipped because it has no evaluation yet, and the number of warmup
    evaluations left out (see `read_run`)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"RUNS_DIR: {runs_dir} is not a directory; give the sweep's output folder, e.g. runs/tiny")
    run_dirs = list_runs(runs_dir)
    if not run_dirs:
        raise UserError(f"RUNS_DIR: no runs under {runs_dir} (expected <run-id>/config.json); run tlc sweep first")
    curves, variants, skipped, warmup = [], [], [], 0
    sparse, dense_configs = [], {}
    for run_dir in run_dirs:
        config = read_run_config(run_dir) or {}  # read_run names a problem with it
        if _trained_sparse(config):  # a train.prune run: not a point of the dense laws, but of its timing's model
            sparse.append((run_dir, config))
            continue
        try:
            curve, run_variants, run_warmup = read_run(run_dir, include_warmup, size)
        except RunNotTrained as reason:
            skipped.append(str(reason))
            continue
        curves.append(curve)
        dense_configs[curve.run_id] = config
        variants.extend(run_variants)
        warmup += run_warmup
    check_one_objective(run_dirs)
    timed, left_out = timing_variants(sparse, {c.run_id: c for c in curves}, dense_configs)
    variants.extend(timed)
    skipped.extend(left_out)
    if not curves:
        raise UserError(f"RUNS_DIR: no run under {runs_dir} has an evaluation yet ({'; '.join(skipped)}); train first")
    try:
        return scaling.SweepObservations(runs=tuple(curves), variants=tuple(variants)), skipped, warmup
    except ValueError as error:
        raise UserError(f"RUNS_DIR {runs_dir}: {error}") from None


def design_message(fit: dict, observations: scaling.SweepObservations) -> str | None:
    """One line naming what the sweep's design lacks when the Chinchilla law is not identified, else None."""
    law = fit["laws"]["chinchilla"]
    if law["status"] == "converged":
        return None
    points = observations.points(final_only=fit["final_only"])
    token_counts, sizes = len(set(points.D.tolist())), len(set(points.N.tolist()))
    reason = law.get("reason") or ""
    first = reason.split(";")[0].split("'")[0].split(" ")[0]  # the parameter the first problem names
    if len(observations.runs) > 1 and token_counts == 1:
        why = "every run has the same tokens, so D is not identified: add train.cooldowns or train.budgets"
    elif token_counts < MIN_TOKEN_COUNTS:
        why = (f"the finished runs end at only {token_counts} token counts, so D is not identified: "
               "add train.cooldowns or more train.budgets")
    elif sizes < MIN_MODEL_SIZES:
        why = f"only {sizes} model size(s), so N is not identified: add shapes"
    elif len(points.loss) < MIN_POINTS:
        why = (f"{len(points.loss)} finished-run points, fewer than the {MIN_POINTS} a "
               "five-parameter law needs: add train.cooldowns (a point per branch) or train.budgets")
    elif reason.startswith("the prediction is not pinned"):
        why = (f"{reason}: widen the range of model sizes in shapes and of token counts (train.cooldowns, "
               "train.budgets), or add seeds")
    elif first in ("alpha", "a"):
        why = f"N is not identified ({reason}): widen the range of model sizes in shapes, or add seeds"
    elif first in ("beta", "b"):
        why = (f"D is not identified ({reason}): spread the token counts wider (an earlier first fork in "
               "train.cooldowns, or train.budgets further apart)")
    elif first == "e":
        why = (f"the irreducible loss E is not identified ({reason}): the losses show no floor yet; "
               "train the shapes longer or add larger ones")
    else:
        why = reason
    return f"chinchilla is {law['status']}: {why}"


def fit_sweep(
    runs_dir: Path,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    all_points: bool = False,
    include_warmup: bool = False,
    size: str = DEFAULT_SIZE,
) -> dict:
    """Fit the sweep under ``runs_dir`` and return fit.json's content (nothing is written).

    The L(N, D) laws fit each run's finished-run points (its final evaluation, every cooldown
    branch's end); ``all_points`` fits every evaluation instead, which overestimates the loss at
    small D. Learning curves and the frontier use every evaluation either way. A sweep whose
    points cannot identify the laws gets them as "unidentified" with the reason, and
    fit["design"] names what the sweep lacks. Runs with no evaluation yet (a sweep still
    training) are left out and listed under "skipped_runs"; warmup evaluations are left out
    unless ``include_warmup`` (see `read_run`) and counted under "warmup_points_skipped".
    N counts ``size`` parameters (SIZES), named in fit["size"].
    Raises UserError for unreadable input and for a sweep with fewer than two runs.
    """
    if bootstrap < 0:
        raise UserError(f"--bootstrap: must be >= 0 resamples, got {bootstrap}")
    if size not in SIZES:
        raise UserError(f"--size: {size!r} is not a parameter count; use one of {', '.join(SIZES)}")
    observations, skipped, warmup = read_sweep(Path(runs_dir), include_warmup, size)
    if len(observations.runs) < 2:
        waiting = f" ({len(skipped)} more run(s) not trained yet)" if skipped else ""
        raise UserError(f"RUNS_DIR {runs_dir}: {len(observations.runs)} run(s); a scaling law needs runs of at "
                        f"least {MIN_MODEL_SIZES} sizes{waiting}")
    fit = scaling.fit_sweep_observations(observations, bootstrap=bootstrap, seed=seed, final_only=not all_points)
    fit["size"] = {"definition": size, "note": f"N in every law counts {SIZES[size]}"}
    fit["corpus"] = runs_corpus(runs_dir)  # what the runs trained on: tlc plan and tlc validate check it
    fit["objective"] = check_one_objective(list_runs(Path(runs_dir)))
    fit["design"] = design_message(fit, observations)
    fit["skipped_runs"] = skipped
    fit["include_warmup"] = include_warmup
    fit["warmup_points_skipped"] = warmup
    return fit
