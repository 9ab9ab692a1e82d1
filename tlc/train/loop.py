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
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlc.config import RunConfig, TrainSettings, validate_run
from tlc.train.data import TokenData, load_corpus, load_tokens, train_offsets, val_offsets, windows
from tlc.errors import UserError
from tlc.train.guard import checkpoint_tag, exit_with_worker, load_checkpoints_safely, lock_run_dir
from tlc.io import append_jsonl, atomic_replace_dir, atomic_write_json, read_jsonl, rewrite_jsonl
from tlc.train.model import build_model, flops_per_token, param_counts
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
# Distributed set-up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LONE_ENV = "TLC_LONE_PROCESS"


def init_distributed():
    """Start torch.distributed through DeepSpeed: gloo on CPU, nccl on GPU; a lone process needs no launcher."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # A lone process sets the launcher's variables itself and notes "<pid>:<port>" in LONE_ENV. A child
    # of such a process (a test runner, `tlc demo`) inherits them but must not reuse the parent's port;
    # a launcher (torchrun, deepspeed) sets its own MASTER_PORT, so its workers are left alone.
    marker = os.environ.get(LONE_ENV, "")
    inherited = marker.endswith(f":{os.environ.get('MASTER_PORT')}") and not marker.startswith(f"{os.getpid()}:")
    if "RANK" not in os.environ or inherited:
        port = str(_free_port())
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        os.environ[LONE_ENV] = f"{os.getpid()}:{port}"
    import logging

    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    return deepspeed, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def device_for_rank():
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def build_engine(deepspeed, model, train: TrainSettings, global_batch: int):
    """A DeepSpeed engine around ``model`` with AdamW (decay on matrices only) for these settings.

    Returns the engine and its optimizer, whose ``param_groups`` take the learning rate.
    """
    import torch

    def decays(name, p):
        return p.dim() >= 2 and "wte" not in name and "embed" not in name

    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if decays(n, p)], "weight_decay": train.weight_decay},
         {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}],
        lr=train.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    ds_config = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
    }
    engine, engine_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, engine_optimizer


# ----------------------------------------------------------------------------------------------
# Loss and evaluation


def lm_loss(model, batch):
    """Mean next-token cross-entropy (nats) of a (B, T+1) window batch, and the logits."""
    import torch.nn.functional as F

    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
    logits = model(input_ids=inputs).logits  # (B, T, V)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    return loss, logits


def evaluate(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int, device, rank=0, world=1):
    """Validation loss (nats/token), bits per byte and next-token accuracy over fixed windows.

    Windows are shared out over processes and the sums reduced, so the result does not depend
    on the world size.
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct predictions, predictions
    mine = offsets[rank::world]
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = torch.from_numpy(windows(tokens.val, mine[start : start + batch_size], context)).to(device)
            logits = model(input_ids=batch[:, :-1]).logits.float()  # (B, T, V)
            targets = batch[:, 1:]
            sums[0] += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum").item()
            sums[1] += (logits.argmax(-1) == targets).sum().item()
            sums[2] += targets.numel()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train(was_training)
    val_loss = float(sums[0] / sums[2])
    return {
        "val_loss": val_loss,
        "val_bpb": val_loss / math.log(2) / tokens.val_bytes_per_token,
        "val_acc": float(sums[1] / sums[2]),
    }


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


def is_complete(run_dir: Path) -> bool:
    """A run is complete once its final model folder is in place (it is moved there whole)."""
    return (Path(run_dir) / "model" / "config.json").exists()


# ----------------------------------------------------------------------------------------------
# The run


def train_run(cfg: RunConfig, run_dir: Path, progress: bool = True) -> dict:
    """Train one model into ``run_dir`` (resuming if it holds a checkpoint); return the last metrics line."""
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
    device = device_for_rank()

    # -- model, optimizer, engine ------------------------------------------------------------
    model = build_model(cfg.shape, eot_id=tokens.eot_id, seed=cfg.seed)
    engine, engine_optimizer = build_engine(deepspeed, model, cfg.train, plan.global_batch)

    # -- resume --------------------------------------------------------------------------------
    ckpt_dir = run_dir / "checkpoint"
    latest = ckpt_dir / "tlc_latest.json"
    start_step, wall_offset = 0, 0.0
    if latest.exists():
        load_checkpoints_safely(engine)  # DeepSpeed itself unpickles with weights_only=False
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=checkpoint_tag(latest)[0])
        start_step, wall_offset = int(client["step"]), float(client["wall_s"])
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
        if world > 1:
            torch.distributed.all_reduce(step_loss)
            step_loss /= world
        if not math.isfinite(step_loss.item()):
            raise UserError(f"train.lr: training diverged at step {step + 1} (loss {step_loss.item()}); lower train.lr")
        loss_sum, loss_steps = loss_sum + step_loss.item(), loss_steps + 1
        done = step + 1
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
        }
        loss_sum, loss_steps = 0.0, 0
        bar.set_postfix(loss=f"{last['train_loss']:.3f}", val=f"{metrics['val_loss']:.3f}")
        if rank == 0:
            append_jsonl(run_dir / "metrics.jsonl", last)
        evals_done += 1
        if evals_done % cfg.train.checkpoint_evals == 0 or done == plan.total_steps:
            save_checkpoint(engine, ckpt_dir, done, wall_s, rank)
        wall_start += time.perf_counter() - pause
    bar.close()

    # -- final weights -------------------------------------------------------------------------
    if rank == 0:
        save_final_model(engine.module, tokens, run_dir)
    if world > 1:
        torch.distributed.barrier()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return rows[-1] if rows else last


def save_checkpoint(engine, ckpt_dir: Path, step: int, wall_s: float, rank: int) -> None:
    """A DeepSpeed checkpoint tagged by step; ``tlc_latest.json`` moves to it only once it is complete."""
    import torch.distributed as dist

    tag = f"step{step:08d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "wall_s": wall_s}, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        atomic_write_json(ckpt_dir / "tlc_latest.json", {"tag": tag, "step": step})
        for old in ckpt_dir.iterdir():
            if old.is_dir() and old.name.startswith("step") and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def save_final_model(module, tokens: TokenData, run_dir: Path) -> None:
    """Weights (safetensors, fp32) and tokenizer in a form `transformers` loads; moved into place whole."""
    import torch
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from tlc.train.data import EOT

    hf_logging.disable_progress_bar()

    tmp = run_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokens.tokenizer, eos_token=EOT, bos_token=EOT, unk_token=None)
    wrapped.save_pretrained(tmp)
    atomic_replace_dir(tmp, run_dir / "model")
