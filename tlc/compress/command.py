"""``tlc compress RUNS_DIR``: flags, their checks and the printed summary; the work is :mod:`tlc.compress.pipeline`."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from tlc.compress.pipeline import ROWS, add_cie, compress_run, find_runs
from tlc.compress.variants import (
    DEFAULT_METHODS,
    DEFAULT_SPARSITIES,
    METHOD_HELP,
    CompressSettings,
    parse_methods,
    parse_sparsities,
)
from tlc.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tlc compress``."""
    d = CompressSettings()
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="a sweep's folder (runs/<sweep>) or one run")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated pruning methods (default %(default)s): "
                             + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()))
    parser.add_argument("--sparsity", default=",".join(map(str, DEFAULT_SPARSITIES)),
                        help="comma-separated sparsity levels in [0, 1) (default %(default)s; the fit needs three "
                             "or more to model how the cost of pruning bends between them)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=d.int8,
                        help="also 8-bit weights, alone and on top of every pruned variant (default on)")
    parser.add_argument("--recovery-steps", type=int, default=d.recovery_steps,
                        help=f"fine-tune steps of gradual/movement pruning (default {d.recovery_steps})")
    parser.add_argument("--block-size", type=int, default=d.block_size,
                        help=f"block side for block pruning: 16, 32 or 64 (default {d.block_size})")
    parser.add_argument("--calibration-sequences", type=int, default=d.calibration_sequences,
                        help="training-split windows of the model's context that wanda, sparsegpt and gptq calibrate "
                             f"on (default {d.calibration_sequences}); never validation text")
    parser.add_argument("--quant-bits", default=",".join(map(str, d.quant_bits)),
                        help="weight bits of the gptq and rtn variants, comma-separated from 8 and 4 (default %(default)s)")
    parser.add_argument("--group-size", type=int, default=d.group_size,
                        help=f"inputs per scale of gptq and rtn, 0 for one scale per output row (default {d.group_size})")
    parser.add_argument("--branches", action="store_true",
                        help="also compress every saved cooldown-branch model (<run>/branches/<tokens>/, a WSD sweep) "
                             "before the last, which is the run's own model: the same model at several tokens, which "
                             "the compression models' D/N term is fitted to")
    parser.add_argument("--plan", type=Path, metavar="PLAN.json",
                        help="compress RUNS_DIR (one run) as a plan.json's point says: its method, sparsity, block, "
                             "recovery steps and int8; the other compression flags are ignored. A planned WSD run's "
                             "model is its one cooldown branch, and its rows go to <run>/branches/<tokens>/")
    parser.add_argument("--point", default="recommendation",
                        help="with --plan: recommendation (default) or train_small")
    parser.add_argument("--latency-repeats", type=int, default=d.latency_repeats,
                        help=f"timed forward passes per batch size, median reported (default {d.latency_repeats})")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs (and cooldown-branch models) compressed side by side, one process each on one "
                             "thread (default 1: in this process). Latencies are then timed while other workers run")
    parser.add_argument("--ort-latency", action=argparse.BooleanOptionalAction, default=None,
                        help="also time every 8-bit variant as an ONNX Runtime int8 model (default: on when "
                             "onnx, onnxscript and onnxruntime are installed; about 15 s of export per variant)")


def settings_from_args(args: argparse.Namespace) -> CompressSettings:
    """Validate the flags into CompressSettings (UserError naming the flag)."""
    from tlc.compress.prune import BLOCK_SIZES

    if args.recovery_steps < 0:
        raise UserError(f"--recovery-steps: must be >= 0, got {args.recovery_steps}")
    if args.block_size not in BLOCK_SIZES:
        raise UserError(f"--block-size: must be one of {', '.join(map(str, BLOCK_SIZES))}, got {args.block_size}")
    if args.calibration_sequences < 1:
        raise UserError(f"--calibration-sequences: must be at least 1, got {args.calibration_sequences}")
    if args.group_size < 0:
        raise UserError(f"--group-size: must be 0 (one scale per row) or a positive number of inputs, "
                        f"got {args.group_size}")
    try:
        quant_bits = tuple(dict.fromkeys(int(b) for b in args.quant_bits.split(",") if b.strip()))
    except ValueError:
        quant_bits = ()
    if not quant_bits or any(b not in (4, 8) for b in quant_bits):
        raise UserError(f"--quant-bits: expected 8, 4 or 8,4, got {args.quant_bits!r}")
    if args.latency_repeats < 1:
        raise UserError(f"--latency-repeats: must be at least 1, got {args.latency_repeats}")
    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    from tlc.export import onnx_available as ort_available

    if args.ort_latency and not ort_available():
        raise UserError("--ort-latency: needs the onnx, onnxscript and onnxruntime packages; "
                        "pip install 'tlc[export]', or leave the flag out")
    return CompressSettings(methods=parse_methods(args.methods), sparsities=parse_sparsities(args.sparsity),
                            int8=args.int8, recovery_steps=args.recovery_steps, block_size=args.block_size,
                            latency_repeats=args.latency_repeats, calibration_sequences=args.calibration_sequences,
                            quant_bits=quant_bits, group_size=args.group_size,
                            ort_latency=ort_available() if args.ort_latency is None else args.ort_latency)


def _model_bytes(job: tuple[Path, Path | None]) -> int:
    """The size of a job's model file: the larger models take longest, so they start first."""
    run_dir, checkpoint = job
    model = (checkpoint or run_dir) / "model" / "model.safetensors"
    return model.stat().st_size if model.exists() else 0


def _compress_job(run_dir: Path, settings: CompressSettings, checkpoint: Path | None) -> None:
    """One worker's job: a run's (or a branch's) missing variants, on one thread."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    compress_run(run_dir, settings, log=lambda line: print(line, flush=True), checkpoint=checkpoint)


_shared: dict = {}  # inside shared_workers(): the "pool" and the (workers, environment) "key" it was made for


def _spawn_pool(workers: int):
    """Worker processes that are spawned: they inherit no threads from this one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _drop_shared_pool() -> None:
    pool = _shared.pop("pool", None)
    _shared.pop("key", None)
    if pool is not None:
        pool.shutdown(wait=True)


@contextlib.contextmanager
def shared_workers():
    """Within this block, successive ``tlc compress --workers N`` calls in this process share their worker
    processes (``tlc demo`` makes three passes): each worker starts and imports torch once, not once a pass.
    The workers end with the block; a call with another N or another environment gets workers of its own."""
    _shared["on"] = True
    try:
        yield
    finally:
        _drop_shared_pool()
        _shared.clear()


def compress_side_by_side(jobs: list[tuple[Path, Path | None]], settings: CompressSettings, workers: int) -> None:
    """Compress several runs at once, each worker a process of its own, the largest models first. A worker's
    error stops the rest and is raised here."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    jobs = sorted(jobs, key=_model_bytes, reverse=True)
    shared = bool(_shared.get("on"))
    if shared:
        key = (workers, tuple(sorted(os.environ.items())))
        if _shared.get("key") != key:
            _drop_shared_pool()
            _shared.update(pool=_spawn_pool(workers), key=key)
        pool = _shared["pool"]
    else:
        pool = _spawn_pool(min(workers, len(jobs)))
    try:
        futures = [pool.submit(_compress_job, run_dir, settings, checkpoint) for run_dir, checkpoint in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
    except BaseException:
        if shared:  # a pool that failed once is not shared further
            _drop_shared_pool()
        raise
    finally:
        if not shared:
            pool.shutdown(wait=True)


def check_planned_run(run_dir: Path, recipe: dict, point: str) -> None:
    """UserError (naming --plan) unless ``run_dir`` is one finished run of the recipe's shape."""
    import json

    from tlc.io import is_complete

    if not is_complete(run_dir):
        raise UserError(f"RUNS_DIR: {str(run_dir)!r} is not one finished run; with --plan give the run trained "
                        f"from the plan (tlc train --plan PLAN.json --point {point})")
    shape = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("shape") or {}
    planned = recipe["shape"]
    differs = [k for k in ("arch", "width", "depth", "heads", "context", "vocab_size") if shape.get(k) != planned.get(k)]
    if shape.get("objective", "clm") != planned.get("objective", "clm"):
        differs.append("objective")
    if differs:
        raise UserError(f"--plan: {run_dir.name} is not the planned {point} "
                        f"({', '.join(f'{k} {shape.get(k)} there, {planned.get(k)} planned' for k in differs)}); "
                        "a plan.json from another sweep, or another point (--point)")


def _run_planned(args: argparse.Namespace) -> int:
    from tlc.compress.pipeline import finished_model, planned_variants
    from tlc.plan.planfile import point_recipe, read_plan

    recipe = point_recipe(read_plan(args.plan), args.point)
    check_planned_run(args.runs_dir, recipe, args.point)
    settings, specs = planned_variants(recipe["compression"])
    from dataclasses import replace

    settings = replace(settings, latency_repeats=args.latency_repeats)
    model = finished_model(args.runs_dir)
    rows = compress_run(args.runs_dir, settings, specs=specs, checkpoint=model)
    final = next(r for r in rows if r["variant"] == specs[-1].id)
    print(f"{args.runs_dir.name}: planned {specs[-1].id}: loss {final['val_loss']:.4f}, {final['bytes']} bytes, "
          f"{final['nonzeros']} non-zeros -> {(model or args.runs_dir) / ROWS}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Prune and 8-bit quantize every trained model of a sweep; evaluate and measure each variant.

    For each run under RUNS_DIR, makes the dense baseline, int8 alone, and every --methods x
    --sparsity variant (each also with int8 on top), saves each under <run>/compressed/<variant>/
    and appends a line to <run>/compress.jsonl: method, sparsity, bits, non-zeros, bytes on disk,
    latency per token at batch 1 and 32, validation loss, bits per byte, accuracy, loss by
    token-frequency bucket and disagreement with the dense model (CIE across seeds where a shape
    has several). Run it again to resume: finished variants are skipped.
    """
    settings = settings_from_args(args)
    if args.plan is not None:
        return _run_planned(args)
    run_dirs = find_runs(args.runs_dir)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one line per variant
    from tlc.compress.pipeline import earlier_branches

    jobs = [(run_dir, None) for run_dir in run_dirs]
    if args.branches:  # the last branch is the run's own model, compressed with the run
        jobs += [(run_dir, branch) for run_dir in run_dirs for branch in earlier_branches(run_dir)]
    if args.workers > 1:  # a finished run is only read (here): workers start for the runs with work left
        from tlc.compress.pipeline import missing_variants

        pending = [job for job in jobs if missing_variants(job[0], settings, checkpoint=job[1])[1]]
        jobs = [job for job in jobs if job not in pending]
        if len(pending) > 1:
            compress_side_by_side(pending, settings, args.workers)
        else:
            jobs += pending
    for run_dir, checkpoint in jobs:
        compress_run(run_dir, settings, checkpoint=checkpoint)
    changed = add_cie(run_dirs)
    if changed:
        print(f"compression-identified exemplars computed for {changed} rows across seeds")
    print(f"{len(run_dirs)} run(s) compressed; rows in <run>/{ROWS}")
    return 0
