"""``tlc fit RUNS_DIR``: flags and the printed table; reading the sweep and fitting is :mod:`tlc.fit.observations`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tlc.errors import UserError
from tlc.fit.from_table import fit_table
from tlc.fit.inputs import FORMAT as INPUTS_FORMAT
from tlc.fit.inputs import inputs_digest
from tlc.fit.observations import DEFAULT_BOOTSTRAP, fit_sweep
from tlc.fit.published import PUBLISHED
from tlc.io import atomic_write_json


def _recorded_digest(path: Path) -> str | None:
    """The inputs digest an existing fit.json records; None when there is none or it cannot be read."""
    try:
        inputs = json.loads(path.read_text(encoding="utf-8")).get("inputs") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return inputs.get("sha256") if isinstance(inputs, dict) and inputs.get("format") == INPUTS_FORMAT else None


def _interval(entry: dict) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.4g}"

    return f"{fmt(entry['value']):>10}  [{fmt(entry['low'])}, {fmt(entry['high'])}]"


def format_table(fit: dict, path: Path) -> str:
    """The short summary ``tlc fit`` prints: parameters with intervals, held-out error, status."""
    points = "finished-run points: final evaluations and cooldown-branch ends" if fit["final_only"] else (
        "every evaluation; --all-points overestimates the loss at small D, where the learning rate had not decayed")
    if fit.get("warmup_points_skipped"):
        points += f" after warmup; {fit['warmup_points_skipped']} warmup evaluations left out"
    lines = [f"skipped {reason}" for reason in fit.get("skipped_runs", [])]
    lines += [
        f"{fit['n_runs']} runs, {fit['n_points']} points ({points}), {fit['bootstrap']['resamples']} bootstrap "
        f"resamples over runs, {fit['bootstrap']['confidence']:.0%} intervals -> {path}",
        *([fit["size"]["note"]] if fit.get("size") else []),
        f"{'law':<12}{'parameter':<11}{'value':>10}  interval",
    ]
    for name, law in fit["laws"].items():
        heldout = law["heldout"]
        error = f"{heldout['relative_error']:.2%} on {', '.join(heldout['held_out_runs'])}" if heldout else "n/a"
        if law["parameters"] is None:
            lines.append(f"{name:<12}status {law['status']}: {law['reason']}")
            continue
        for i, (parameter, entry) in enumerate(law["parameters"].items()):
            lines.append(f"{name if i == 0 else '':<12}{parameter:<11}{_interval(entry)}")
        usable = ""
        if law["bootstrap"]:
            usable = f"; {law['bootstrap']['usable']}/{fit['bootstrap']['resamples']} bootstrap refits usable"
        lines.append(f"{'':<12}status {law['status']}; leave-largest-out error {error}{usable}")
        longest = law.get("heldout_tokens")
        if longest:
            direction = "over" if longest["bias"] > 0 else "under"
            lines.append(f"{'':<12}leave-longest-out error {longest['relative_error']:.2%} at "
                         f"{longest['tokens_ratio']:.3g}x the tokens kept ({direction}estimates the loss of longer "
                         f"runs by {abs(longest['bias']):.2%} on average)")
        if law["status"] != "converged":
            lines.append(f"{'':<12}{law['reason']}")
    lines.append(f"preferred law: {fit['preferred_law']['name']} ({fit['preferred_law']['reason']})")
    lines += _split_lines(fit.get("loss_split"))
    chinchilla = fit["allocation"].get("chinchilla", {})
    flops = fit["flops"]
    if "a" in chinchilla:
        lines.append(
            f"compute-optimal (chinchilla, C = {flops['k']:.3g} N^{flops['gamma']:.3g} D, the runs' own FLOPs): "
            f"N_opt ~ C^a, a = {_interval(chinchilla['a']).strip()}; "
            f"D_opt ~ C^b, b = {_interval(chinchilla['b']).strip()}"
        )
    elif "error" in chinchilla:
        lines.append(f"compute-optimal (chinchilla): not available, {chinchilla['error']}")
    preferred = fit["allocation"].get(fit["preferred_law"]["name"] or "chinchilla", {})
    if preferred.get("method") == "numeric":
        lines.append(
            f"compute-optimal ({fit['preferred_law']['name']}, the preferred law; local exponents at "
            f"{preferred['compute']:.3g} FLOPs): N_opt ~ C^a, a = {_interval(preferred['a']).strip()}; "
            f"D_opt ~ C^b, b = {_interval(preferred['b']).strip()}"
        )
    frontier = fit["frontier"]["fit"]
    if frontier["parameters"]:
        alpha = _interval(frontier["parameters"]["alpha"]).strip()
        lines.append(f"frontier {frontier['equation']}: alpha = {alpha}, status {frontier['status']}")
    else:
        lines.append(f"frontier: not fitted, {frontier['reason']}")
    compression = fit["compression"]
    models = [(f"pruning {m}", e) for m, e in compression["pruning"].items()]
    if compression["int8"]:
        models.append(("int8", compression["int8"]))
    models += [(f"quantization {m}", e) for m, e in (compression.get("quantization") or {}).items()]
    for label, entry in models:
        parameters = ", ".join(f"{p} = {_interval(v).strip()}" for p, v in entry["parameters"].items())
        lines.append(f"{label} ({entry['candidate']}): {parameters}; status {entry['status']}"
                     + _heldout_text(entry))
    for method, reason in compression["skipped"].items():
        lines.append(f"pruning {method}: not fitted, {reason}")
    if fit.get("design"):
        lines.append(fit["design"])
    lines += _table_lines(fit)
    return "\n".join(lines)


def _table_lines(fit: dict) -> list[str]:
    """Where a table's runs came from, and Frantar et al.'s sparse law when it had rows trained sparse."""
    lines = []
    source = fit.get("source") or {}
    if source.get("kind") == "published":
        lines.append(f"published set {source['name']}: {source['citation']}; licence {source['licence']}")
    sparse = fit.get("sparse_law")
    if sparse and sparse.get("parameters"):
        parameters = ", ".join(f"{p} = {_interval(v).strip()}" for p, v in sparse["parameters"].items())
        held = sparse.get("heldout")
        error = (f"; largest size held out at every sparsity: mean error {held['relative_error']:.2%}, "
                 f"max {held['max_relative_error']:.2%}" if held else "")
        lines.append(f"sparse law {sparse['equation']}: {parameters}; status {sparse['status']}{error}")
    elif sparse:
        lines.append(f"sparse law: {sparse['status']}, {sparse['reason']}")
    return lines


def _heldout_text(entry: dict) -> str:
    """The chosen compression model's held-out error, and between the sparsities where that was checked."""
    error = (entry.get("heldout_errors") or {}).get(entry["candidate"])
    if error is None:
        return ""
    between = (entry.get("sparsity_heldout_errors") or {}).get(entry["candidate"])
    text = f"; held-out error {error:.2%}"
    return text + (f" (the larger of leave-largest-out and leave-one-sparsity-out, {between:.2%})"
                   if between is not None else " (leave-largest-out)")


SPLIT_LABELS = {"repeat": "targets seen earlier in their window", "novel": "new targets"}


def _split_lines(split: dict | None) -> list[str]:
    """The preferred law refitted to each part of the loss (scaling.loss_split), and what it says."""
    if not split:
        return []
    lines, share = [], split["share"]
    shares = {"repeat": share, "novel": None if share is None else 1 - share}
    for part, label in SPLIT_LABELS.items():
        entry = split["parts"][part]
        of_targets = "" if shares[part] is None else f" ({shares[part]:.0%} of targets)"
        text = f"loss on {label}{of_targets}: {split['form']} refitted, rms error {entry['rms']:.2%}"
        longest = entry["heldout_tokens"]
        if longest:
            direction = "over" if longest["bias"] > 0 else "under"
            text += (f", leave-longest-out {longest['relative_error']:.2%} ({direction}estimates by "
                     f"{abs(longest['bias']):.2%})")
        lines.append(text)
    if split["copying_under_way"]:
        lines.append("the loss on targets seen earlier in their window fell faster at the runs' longest points than a "
                     "refit on the shorter ones predicts: the models were still learning to copy from their context "
                     "where the sweep stopped, so past its tokens losses will likely come out lower than predicted")
    return lines


def _only_events(folder: Path) -> bool:
    """A folder of TensorBoard event files and no tlc runs (no <run>/config.json)."""
    from tlc.fit.tensorboard import event_folders
    from tlc.io import list_runs

    return folder.is_dir() and not list_runs(folder) and bool(event_folders(folder))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc fit``."""
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR|TABLE", nargs="?",
                        help="the sweep's folder, holding <run-id>/ runs; or a .csv/.jsonl table of finished runs "
                        "(columns params and/or non_embedding_params, tokens, loss; optional flops, sparsity, bits, "
                        "seed, dataset, step, run_id); or a folder of TensorBoard event files, one run per folder")
    parser.add_argument("--published", metavar="NAME", choices=sorted(PUBLISHED),
                        help=f"fit a published set shipped with tlc instead: {', '.join(PUBLISHED)}")
    parser.add_argument("--out", type=Path, metavar="DIR", help="folder for fit.json (default: RUNS_DIR; for a "
                        "table, a folder named after it beside it; for --published NAME, runs/published-NAME)")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        help=f"bootstrap resamples over runs for the intervals (default {DEFAULT_BOOTSTRAP}; 0 for none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    parser.add_argument(
        "--all-points",
        action="store_true",
        help="fit L(N, D) to every evaluation, not only to finished-run points (final evaluations and "
        "cooldown-branch ends, the default): a mid-schedule evaluation overestimates the loss a run "
        "trained to that token count reaches, so the law overstates loss at small D",
    )
    parser.add_argument("--final-only", action="store_true", help=argparse.SUPPRESS)  # the default since --all-points
    parser.add_argument(
        "--size",
        choices=("total", "non-embedding"),
        default=None,
        help="what N counts in the laws: every parameter (the default, as Hoffmann et al. 2022) or those outside "
        "the embeddings (as Kaplan et al. 2020); small models are mostly embedding, and their loss follows the total",
    )
    parser.add_argument(
        "--skip-unchanged",
        action="store_true",
        help="leave RUNS_DIR/fit.json as it is when it was fitted with the same options, by the same code, to the "
        "run files as they are now (tlc demo does this when run again)",
    )
    parser.add_argument(
        "--include-warmup",
        action="store_true",
        help="keep evaluations taken before the learning rate peaked (left out by default: there the "
        "loss follows the warmup, not model size and data)",
    )


def run(args: argparse.Namespace) -> int:
    """Fit scaling laws to a sweep (and its compressed variants) and write RUNS_DIR/fit.json.

    Or fit a table of finished runs (CSV or JSON lines, e.g. from your own cluster or a paper) or a
    published set shipped with tlc (--published chinchilla|gadre-c4|gadre-rpj|gadre-rw|frantar-t5)
    into the same fit.json; rows trained sparse also fit Frantar et al.'s sparse law.

    Fits Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta and Kaplan's law to the finished-run
    points (each run's final evaluation, each cooldown branch's end) in log space (Huber loss,
    L-BFGS-B from a grid of starts), with bootstrap intervals over runs, the compute-optimal
    allocation under the runs' own FLOPs per token, the frontier of the learning curves, and
    the loss added by each pruning method and by 8-bit weights as a function of model size. A
    law the sweep does not pin down is reported as unidentified, with what the design lacks.
    """
    if (args.runs_dir is None) == (args.published is None):
        raise UserError("RUNS_DIR|TABLE: give a sweep folder or a run table, or --published NAME (one of them)")
    size = None if args.size is None else args.size.replace("-", "_")
    if args.published or args.runs_dir.is_file() or _only_events(args.runs_dir):
        if args.skip_unchanged:
            raise UserError("--skip-unchanged: applies to a sweep folder of runs; a table or --published set is "
                            "refitted each time (drop the flag)")
        fit = fit_table(args.runs_dir, args.published, bootstrap=args.bootstrap, seed=args.seed, size=size)
        out = args.out or (Path("runs") / f"published-{args.published}" if args.published
                           else args.runs_dir.with_suffix(""))
        path = out / "fit.json"
        atomic_write_json(path, fit)
        print(format_table(fit, path))
        return 0
    options = {"bootstrap": args.bootstrap, "seed": args.seed, "all_points": args.all_points,
               "include_warmup": args.include_warmup, "size": size or "total"}
    path = (args.out or Path(args.runs_dir)) / "fit.json"
    digest = inputs_digest(args.runs_dir, options)  # before fitting: a run that changes meanwhile means a refit next time
    if args.skip_unchanged and _recorded_digest(path) == digest:
        print(f"{path} is up to date: fitted with these options, by this code, to the run files as they are now "
              "(drop --skip-unchanged to refit)")
        return 0
    fit = fit_sweep(args.runs_dir, **options)
    fit["inputs"] = {"format": INPUTS_FORMAT, "sha256": digest}
    atomic_write_json(path, fit)
    print(format_table(fit, path))
    return 0
