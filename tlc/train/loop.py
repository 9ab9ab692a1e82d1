"""One training run through a DeepSpeed engine, resumable after a kill.

Per optimizer step: ``global_batch = micro_batch x grad_accum x world_size`` windows of
``context + 1`` tokens, drawn as a pure function of (seed, step) so that any split over
processes and micro-batches, and any resume, sees the same data. Evaluations are spaced
evenly in log training FLOPs; each appends one line to ``metrics.jsonl``, then a DeepSpeed
checkpoint is written. A restarted run loads the newest complete checkpoint, drops metric
lines written after it, and continues; the final weights go to ``model/`` (safetensors).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlc.config import RunConfig, validate_run
from tlc.errors import UserError
from tlc.io import append_jsonl, atomic_write_json, is_complete, read_jsonl, rewrite_jsonl
from tlc.shapes import flops_per_token, param_counts
from tlc.train.data import cache_dir, load_corpus, load_tokens, train_offsets, val_offsets, windows
from tlc.train.engine import (build_engine, device_for_rank, init_distributed, monitor_scalars, save_checkpoint,
                              save_final_model)
from tlc.train.evaluation import evaluate, lm_loss
from tlc.train.guard import checkpoint_tag, exit_with_worker, load_checkpoints_safely, lock_run_dir
from tlc.train.model import build_model
from tlc.train.precision import choose_for_run
from tlc.versions import package_versions


@dataclass(frozen=True)
class RunPlan:
    """The numbers a run's settings resolve to once the world size is known."""

    world_size: int
    global_batch: int  # sequences per optimizer step
    tokens_per_step: int  # global_batch * context
    total_steps: int
    flops_per_token: float
    eval_steps: tuple[int, ...]  # optimizer steps after which the model is evaluated


def eval_schedule(total_steps: int, evals: int) -> tuple[int, ...]:
    """Steps spaced evenly in log FLOPs (FLOPs grow linearly with steps); always ends at the last step."""
    if evals >= total_steps:
        return tuple(range(1, total_steps + 1))
    points = np.geomspace(1, total_steps, num=evals)
    return tuple(sorted(set(int(round(p)) for p in points) | {total_steps}))


def plan_run(cfg: RunConfig, world_size: int) -> RunPlan:
    """Resolve the budget into optimizer steps; refuse a budget smaller than one step."""
    t = cfg.train
    global_batch = t.micro_batch * t.grad_accum * world_size
    tokens_per_step = global_batch * cfg.shape.context
    fpt = flops_per_token(cfg.shape)
    if t.tokens is not None:
        budget_tokens, flag = t.tokens, "train.tokens (--tokens)"
    else:
        budget_tokens, flag = int(t.flops / fpt), "train.flops (--flops)"
    total_steps = budget_tokens // tokens_per_step
    if total_steps < 1:
        need = f"{tokens_per_step} tokens" if t.tokens is not None else f"{tokens_per_step * fpt:.3g} FLOPs"
        raise UserError(
            f"{flag}: the budget is less than one optimizer step; one step of {global_batch} sequences x "
            f"{cfg.shape.context} tokens needs at least {need}"
        )
    return RunPlan(world_size, global_batch, tokens_per_step, total_steps, fpt, eval_schedule(total_steps, t.evals))


def get_lr(step: int, total_steps: int, peak_lr: float, warmup_frac: float, min_lr_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    warmup = max(1, round(warmup_frac * total_steps)) if warmup_frac > 0 else 0
    # 1) linear warmup from peak/warmup to peak
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    # 2) cosine decay from peak to min_lr_ratio * peak over the remaining steps
    progress = (step - warmup) / max(1, total_steps - warmup)
    min_lr = peak_lr * min_lr_ratio
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------
# Run directory


def check_run_dir(run_dir: Path) -> None:
    """Fail early, naming --out, when the run directory could not be created or written (creates nothing)."""
    if "\x00" in str(run_dir):  # os calls raise ValueError on it
        raise UserError(f"--out: {str(run_dir)!r} contains a NUL character; choose a folder name without it")
    existing = Path(run_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out: cannot write to run directory {str(run_dir)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out: cannot write to run directory {str(run_dir)!r}: {str(existing)!r} is not writable; "
                        "choose a folder you can write")


IDENTITY_KEYS = ("run_id", "shape", "train", "data", "seed", "global_batch", "total_steps")


def resolved_config(cfg: RunConfig, plan: RunPlan, data_info: dict) -> dict:
    counts = param_counts(cfg.shape)
    return {
        "run_id": cfg.run_id,
        "shape": dataclasses.asdict(cfg.shape),
        "train": dataclasses.asdict(cfg.train),
        "data": {**dataclasses.asdict(cfg.data), **data_info},
        "seed": cfg.seed,
        "params": dataclasses.asdict(counts),
        "flops_per_token": plan.flops_per_token,
        "world_size": plan.world_size,
        "global_batch": plan.global_batch,
        "tokens_per_step": plan.tokens_per_step,
        "total_steps": plan.total_steps,
        "train_tokens": plan.total_steps * plan.tokens_per_step,
        "train_flops": plan.total_steps * plan.tokens_per_step * plan.flops_per_token,
        "eval_steps": list(plan.eval_steps),
        "versions": package_versions(),
    }


def write_or_check_config(run_dir: Path, config: dict) -> None:
    """Write config.json, or check that an existing one describes the same run."""
    path = run_dir / "config.json"
    if path.exists():
        import json

        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--out: {str(path)!r} is unreadable ({e}); remove the run directory to start it again") from None
        for key in IDENTITY_KEYS:
            if old.get(key) != config[key]:
                raise UserError(
                    f"--out: {str(run_dir)!r} holds a run with a different {key!r} "
                    f"({old.get(key)!r} there, {config[key]!r} now); use another --out or remove that folder"
                )
        return
    atomic_write_json(path, config)


# ----------------------------------------------------------------------------------------------
# The run


def _sparse_training(cfg: RunConfig, model, tokens, run_dir: Path, plan: RunPlan, rank: int):
    """train.prune's masks (tlc.train.sparsity), set on the model before the engine copies it; None when dense."""
    if cfg.train.prune is None:
        return None
    import torch

    from tlc.train.sparsity import SNIP_SEED, SparseTraining

    calibration = None
    if cfg.train.prune.method.startswith("snip"):  # one global batch of windows apart from the training data
        offsets = train_offsets(len(tokens.train), cfg.shape.context, plan.global_batch, cfg.seed + SNIP_SEED, 0)
        calibration = torch.from_numpy(windows(tokens.train, offsets, cfg.shape.context))
    resuming = (run_dir / "checkpoint" / "tlc_latest.json").exists()
    return SparseTraining.before_engine(cfg.train.prune, model, run_dir, plan.total_steps, resuming, calibration,
                                        cfg.seed, rank)


def train_run(cfg: RunConfig, run_dir: Path, progress: bool = True, notify=None) -> dict:
    """Train one model into ``run_dir`` (resuming if it holds a checkpoint); return the last metrics line.

    ``notify(line)`` (rank 0 only) is told the precision chosen and why, before training starts.
    """
    import torch

    validate_run(cfg)
    exit_with_worker()  # a trainer started by a sweep worker must not outlive it
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    if is_complete(run_dir):
        rows = read_jsonl(run_dir / "metrics.jsonl")
        return rows[-1] if rows else {}

    plan = plan_run(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    corpus = load_corpus(cfg.data.source, cfg.data.val_percent, cfg.data.text_field)
    deepspeed, rank, world = init_distributed()
    precision = choose_for_run(cfg.train.precision, cache_dir(), run_dir, rank, world)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision.precision))
    tokens = load_tokens(corpus, cfg.shape.vocab_size)
    if len(tokens.train) <= cfg.shape.context + 1:
        raise UserError(f"--data: the training split has {len(tokens.train)} tokens, fewer than one context")
    data_info = {
        "fingerprint": corpus.fingerprint,
        "train_tokens_available": int(len(tokens.train)),
        "val_tokens_available": int(len(tokens.val)),
        "val_bytes_per_token": tokens.val_bytes_per_token,
    }
    config = resolved_config(cfg, plan, data_info)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)  # one trainer per run directory; released when this process ends
        write_or_check_config(run_dir, config)
        if notify is not None:  # after the checks, so that a refused run's error stays its only line
            notify(f"{cfg.run_id}: precision {precision.precision} ({precision.reason})")
    device = device_for_rank()

    # -- model, optimizer, engine ------------------------------------------------------------
    model = build_model(cfg.shape, eot_id=tokens.eot_id, seed=cfg.seed)
    sparse = _sparse_training(cfg, model, tokens, run_dir, plan, rank)  # train.prune; None for a dense run
    engine, engine_optimizer = build_engine(deepspeed, model, cfg.train, plan.global_batch, run_dir / "tensorboard")

    # -- resume --------------------------------------------------------------------------------
    ckpt_dir = run_dir / "checkpoint"
    latest = ckpt_dir / "tlc_latest.json"
    start_step, wall_offset = 0, 0.0
    if latest.exists():
        load_checkpoints_safely(engine)  # DeepSpeed itself unpickles with weights_only=False
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=checkpoint_tag(latest)[0])
        start_step, wall_offset = int(client["step"]), float(client["wall_s"])
    if sparse is not None:
        sparse.after_resume(run_dir, engine.module, start_step)
    if rank == 0:
        rows = read_jsonl(run_dir / "metrics.jsonl")
        if rows or (run_dir / "metrics.jsonl").exists():
            # drop lines (and a torn tail) written after the checkpoint we resume from
            rewrite_jsonl(run_dir / "metrics.jsonl", [r for r in rows if r["step"] <= start_step])

    # -- train ---------------------------------------------------------------------------------
    from tqdm import tqdm

    val_windows = val_offsets(len(tokens.val), cfg.shape.context, cfg.train.eval_tokens)
    mb, ga = cfg.train.micro_batch, cfg.train.grad_accum
    bar = tqdm(total=plan.total_steps, initial=start_step, desc=cfg.run_id, unit="step",
               disable=not progress or rank != 0, dynamic_ncols=True, leave=True)
    engine.train()
    loss_sum, loss_steps = 0.0, 0
    wall_start = time.perf_counter()
    last = {}
    evals_done = sum(1 for s in plan.eval_steps if s <= start_step)
    for step in range(start_step, plan.total_steps):
        lr = get_lr(step, plan.total_steps, cfg.train.lr, cfg.train.warmup_frac, cfg.train.min_lr_ratio)
        for group in engine_optimizer.param_groups:
            group["lr"] = lr
        offsets = train_offsets(len(tokens.train), cfg.shape.context, plan.global_batch, cfg.seed, step)
        step_loss = torch.zeros(1, dtype=torch.float64)
        for micro in range(ga):
            first = (micro * world + rank) * mb  # this process's slice of the step's windows
            batch = torch.from_numpy(windows(tokens.train, offsets[first : first + mb], cfg.shape.context)).to(device)
            loss, _ = lm_loss(engine, batch)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().double().cpu() / ga
        if sparse is not None:
            sparse.after_step(engine, step + 1)
        if world > 1:
            torch.distributed.all_reduce(step_loss)
            step_loss /= world
        if not math.isfinite(step_loss.item()):
            raise UserError(f"train.lr: training diverged at step {step + 1} (loss {step_loss.item()}); lower train.lr")
        loss_sum, loss_steps = loss_sum + step_loss.item(), loss_steps + 1
        done = step + 1
        monitor_scalars(engine, done, done * plan.tokens_per_step, {"train/loss": step_loss.item()})
        bar.update(1)
        if done not in plan.eval_steps:
            continue

        # -- evaluate, log, checkpoint ---------------------------------------------------------
        pause = time.perf_counter()  # evaluation and checkpoint time is not training time
        wall_s = wall_offset + pause - wall_start
        metrics = evaluate(engine.module, tokens, val_windows, cfg.shape.context, mb, device, rank, world)
        last = {
            "step": done,
            "tokens": done * plan.tokens_per_step,
            "flops": done * plan.tokens_per_step * plan.flops_per_token,
            "wall_s": round(wall_s, 3),
            "train_loss": loss_sum / loss_steps,
            **metrics,
            "lr": lr,
            **(sparse.metrics() if sparse is not None else {}),
        }
        loss_sum, loss_steps = 0.0, 0
        bar.set_postfix(loss=f"{last['train_loss']:.3f}", val=f"{metrics['val_loss']:.3f}")
        if rank == 0:
            append_jsonl(run_dir / "metrics.jsonl", last)
        monitor_scalars(engine, done, last["tokens"], {"val/loss": last["val_loss"], "val/bpb": last["val_bpb"],
                                                       "val/acc": last["val_acc"], "train/loss_mean": last["train_loss"]})
        evals_done += 1
        if evals_done % cfg.train.checkpoint_evals == 0 or done == plan.total_steps:
            if sparse is not None:
                sparse.before_checkpoint(run_dir, done, rank)
            save_checkpoint(engine, ckpt_dir, done, wall_s, rank)
            if sparse is not None:
                sparse.after_checkpoint(run_dir, done, rank)
        wall_start += time.perf_counter() - pause
    bar.close()

    # -- final weights -------------------------------------------------------------------------
    if rank == 0:
        save_final_model(engine.module, tokens, run_dir)
    if world > 1:
        torch.distributed.barrier()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return rows[-1] if rows else last
