"""One training run through a DeepSpeed engine, resumable after a kill.

Per optimizer step: ``global_batch = micro_batch x grad_accum x world_size`` windows of
``context + 1`` tokens, drawn as a pure function of (seed, step) so that any split over
processes and micro-batches, and any resume, sees the same data. Evaluations are spaced
evenly in log training FLOPs; each appends one line to ``metrics.jsonl``, then a DeepSpeed
checkpoint is written. A restarted run loads the newest complete checkpoint, drops metric
lines written after it, and continues; the final weights go to ``model/`` (safetensors).

Under ``schedule: wsd`` the trunk is checkpointed at each fork, a cooldown branch trains from
there (checkpointed at its midpoint in ``<run>/branches/<tokens>/checkpoint/``), logs its end
as a ``final`` line and saves its weights to ``<run>/branches/<tokens>/model/``; then the trunk
checkpoint is loaded back and the trunk goes on. A run killed inside a branch resumes inside
it. ``model/`` is a copy of the last branch's weights. Schedules are in `tlc.train.schedule`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlc.config import RunConfig, train_to_dict, validate_run
from tlc.errors import UserError
from tlc.io import append_jsonl, atomic_replace_dir, atomic_write_json, is_complete, read_jsonl, rewrite_jsonl
from tlc.shapes import flops_per_token, param_counts
from tlc.train.data import (cache_dir, load_corpus, load_tokens, train_offsets, val_offsets, windows,
                            write_data_record)
from tlc.train.engine import (build_engine, device_for_rank, init_distributed, monitor_scalars, save_checkpoint,
                              save_final_model)
from tlc.train.evaluation import eval_batch_size, evaluate, lm_loss
from tlc.train.guard import checkpoint_tag, exit_with_worker, load_checkpoints_safely, lock_run_dir
from tlc.train.model import build_model
from tlc.train.precision import choose_for_run
from tlc.train.schedule import Branch, cooldown_lr, eval_schedule, get_lr, plan_branches, trunk_lr
from tlc.versions import package_versions


@dataclass(frozen=True)
class RunPlan:
    """The numbers a run's settings resolve to once the world size is known."""

    world_size: int
    global_batch: int  # sequences per optimizer step
    tokens_per_step: int  # global_batch * context
    total_steps: int  # optimizer steps the budget buys (cosine: the run; wsd: the trunk, if its last fork is 1.0)
    flops_per_token: float
    eval_steps: tuple[int, ...]  # trunk optimizer steps after which the model is evaluated
    branches: tuple[Branch, ...] = ()  # wsd cooldown branches, by fork step

    @property
    def trunk_steps(self) -> int:
        """Steps the trunk trains: to the budget under cosine, to the last fork under wsd."""
        return self.branches[-1].fork_step if self.branches else self.total_steps

    @property
    def final_steps(self) -> int:
        """Optimizer steps behind the run's final model (model/): the last branch's end under wsd."""
        return self.branches[-1].end_step if self.branches else self.total_steps

    @property
    def steps_spent(self) -> int:
        """Optimizer steps the run costs in all: trunk plus every branch."""
        return self.trunk_steps + sum(b.steps for b in self.branches)


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
    branches = plan_branches(t, total_steps)
    trunk = branches[-1].fork_step if branches else total_steps
    evals = eval_schedule(trunk, t.evals, tuple(b.fork_step for b in branches))
    return RunPlan(world_size, global_batch, tokens_per_step, total_steps, fpt, evals, branches)


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
    """config.json: every resolved setting. train_tokens and train_flops are those of the final model
    (model/; under wsd the last branch's end); spent_flops counts every step the run trains, branches included."""
    counts = param_counts(cfg.shape)
    tps, fpt = plan.tokens_per_step, plan.flops_per_token
    return {
        "run_id": cfg.run_id,
        "shape": dataclasses.asdict(cfg.shape),
        "train": train_to_dict(cfg.train),
        "data": {**dataclasses.asdict(cfg.data), **data_info},
        "seed": cfg.seed,
        "budget": cfg.budget,
        "params": dataclasses.asdict(counts),
        "flops_per_token": fpt,
        "world_size": plan.world_size,
        "global_batch": plan.global_batch,
        "tokens_per_step": tps,
        "total_steps": plan.total_steps,
        "train_tokens": plan.final_steps * tps,
        "train_flops": plan.final_steps * tps * fpt,
        "spent_flops": plan.steps_spent * tps * fpt,
        "eval_steps": list(plan.eval_steps),
        "branches": [
            {"fork_step": b.fork_step, "steps": b.steps, "fork_tokens": b.fork_step * tps,
             "tokens": b.end_step * tps, "dir": branch_dir_name(b, tps)}
            for b in plan.branches
        ],
        "versions": package_versions(),
    }


def branch_dir_name(branch: Branch, tokens_per_step: int) -> str:
    """A branch's folder under ``<run>/branches/``: the tokens its model has seen (its D)."""
    return str(branch.end_step * tokens_per_step)


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


@dataclass
class _Session:
    """What every optimizer step and evaluation of one run needs, and the training time so far."""

    cfg: RunConfig
    plan: RunPlan
    run_dir: Path
    tokens: Any  # tlc.train.data.TokenData
    val_windows: Any
    engine: Any
    optimizer: Any
    device: Any
    rank: int
    world: int
    bar: Any
    wall_s: float = 0.0  # training time only: evaluations and checkpoints are excluded
    sparse: Any = None  # tlc.train.sparsity.SparseTraining for a run with train.prune, else None

    def step(self, step: int, lr: float) -> float:
        """Optimizer step ``step`` (0-based; it picks the data) at rate ``lr``; the mean loss over the global batch."""
        import torch

        started = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        cfg, mb, ga = self.cfg, self.cfg.train.micro_batch, self.cfg.train.grad_accum
        offsets = train_offsets(len(self.tokens.train), cfg.shape.context, self.plan.global_batch, cfg.seed, step)
        # on the model's device: NCCL reduces CUDA tensors only, and the sum needs no host sync per micro-batch
        step_loss = torch.zeros(1, dtype=torch.float64, device=self.device)
        for micro in range(ga):
            first = (micro * self.world + self.rank) * mb  # this process's slice of the step's windows
            batch = windows(self.tokens.train, offsets[first : first + mb], cfg.shape.context)
            loss, _ = lm_loss(self.engine, torch.from_numpy(batch).to(self.device), salt=(cfg.seed, step))
            self.engine.backward(loss)
            self.engine.step()
            step_loss += loss.detach().double() / ga
        if self.sparse is not None:
            self.sparse.after_step(self.engine, step + 1)
        if self.world > 1:
            torch.distributed.all_reduce(step_loss)
            step_loss /= self.world
        if not math.isfinite(step_loss.item()):
            raise UserError(f"train.lr: training diverged at step {step + 1} (loss {step_loss.item()}); lower train.lr")
        self.wall_s += time.perf_counter() - started
        monitor_scalars(self.engine, step + 1, (step + 1) * self.plan.tokens_per_step, {"train/loss": step_loss.item()})
        self.bar.update(1)
        return step_loss.item()

    def log(self, done: int, lr: float, train_loss: float, final: bool, **extra) -> dict:
        """Evaluate the model after ``done`` optimizer steps and append the line to metrics.jsonl."""
        plan = self.plan
        context = self.cfg.shape.context
        metrics = evaluate(self.engine.module, self.tokens, self.val_windows, context,
                           eval_batch_size(self.cfg.train.micro_batch, context), self.device, self.rank, self.world)
        row = {
            "step": done,
            "tokens": done * plan.tokens_per_step,
            "flops": done * plan.tokens_per_step * plan.flops_per_token,
            "wall_s": round(self.wall_s, 3),
            "train_loss": train_loss,
            **metrics,
            "lr": lr,
            "final": final,  # a finished-run point: the end of a cosine run or of a wsd branch
            **(self.sparse.metrics() if self.sparse is not None else {}),
            **extra,
        }
        self.bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{metrics['val_loss']:.3f}")
        if self.rank == 0:
            append_jsonl(self.run_dir / "metrics.jsonl", row)
        monitor_scalars(self.engine, done, row["tokens"], {"val/loss": row["val_loss"], "val/bpb": row["val_bpb"],
                                                           "val/acc": row["val_acc"], "train/loss_mean": train_loss})
        return row


def _load_checkpoint(engine, ckpt_dir: Path) -> dict:
    """Load the checkpoint ``ckpt_dir/tlc_latest.json`` names (weights-only reads); its client state."""
    load_checkpoints_safely(engine)  # DeepSpeed itself unpickles with weights_only=False
    _, client = engine.load_checkpoint(str(ckpt_dir), tag=checkpoint_tag(ckpt_dir / "tlc_latest.json")[0])
    return client


def _run_branch(s: _Session, branch: Branch) -> bool:
    """Train one cooldown branch from the trunk state the engine holds (or from the branch's own
    checkpoint after a kill), log its end as a finished-run point and save its weights to
    ``<run>/branches/<tokens>/model/``. False when it was complete already (the engine is untouched)."""
    import copy

    branch_dir = s.run_dir / "branches" / branch_dir_name(branch, s.plan.tokens_per_step)
    if is_complete(branch_dir):
        return False
    ckpt_dir = branch_dir / "checkpoint"
    first = 0
    if (ckpt_dir / "tlc_latest.json").exists():
        client = _load_checkpoint(s.engine, ckpt_dir)
        first, s.wall_s = int(client["step"]) - branch.fork_step, float(client["wall_s"])
    loss_sum, lr = 0.0, s.cfg.train.lr
    for i in range(first, branch.steps):
        lr = cooldown_lr(i, branch.steps, s.cfg.train.lr)
        loss_sum += s.step(branch.fork_step + i, lr)  # the windows the trunk meets after the fork: fresh data
        if i + 1 == branch.checkpoint_step and i + 1 < branch.steps:
            save_checkpoint(s.engine, ckpt_dir, branch.fork_step + i + 1, s.wall_s, s.rank)
    s.log(branch.end_step, lr, loss_sum / max(1, branch.steps - first), final=True, fork_step=branch.fork_step)
    if s.rank == 0:
        # a copy: saving casts to fp32 in place, and the engine trains on (the trunk is reloaded into it)
        save_final_model(copy.deepcopy(s.engine.module), s.tokens, branch_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if s.world > 1:
        import torch

        torch.distributed.barrier()
    return True


def _keep_row(row: dict, trunk_step: int, run_dir: Path) -> bool:
    """On resume: keep trunk lines up to the checkpoint, and the lines of branches whose weights are saved."""
    if "fork_step" in row:
        return is_complete(run_dir / "branches" / str(row["tokens"]))
    return row["step"] <= trunk_step


def _sparse_training(cfg: RunConfig, model, tokens, run_dir: Path, plan: RunPlan, rank: int):
    """train.prune's masks (tlc.train.sparsity), set on the model before the engine copies it; None when dense."""
    if cfg.train.prune is None:
        return None
    import torch

    from tlc.train.sparsity import SNIP_SEED, SparseTraining

    calibration = None
    if cfg.train.prune.method.startswith(("snip", "grasp")):  # one global batch of windows apart from the training data
        offsets = train_offsets(len(tokens.train), cfg.shape.context, plan.global_batch, cfg.seed + SNIP_SEED, 0)
        calibration = torch.from_numpy(windows(tokens.train, offsets, cfg.shape.context))
    resuming = (run_dir / "checkpoint" / "tlc_latest.json").exists()
    return SparseTraining.before_engine(cfg.train.prune, model, run_dir, plan.total_steps, resuming, calibration,
                                        cfg.seed, rank)


def train_run(cfg: RunConfig, run_dir: Path, progress: bool = True, notify=None, sparse_factory=None) -> dict:
    """Train one model into ``run_dir`` (resuming if it holds a checkpoint); return the last metrics line.

    ``notify(line)`` (rank 0 only) is told the precision chosen and why, before training starts. A
    ``train.prune`` of method imp trains its rounds (tlc.train.lottery), each through this function with
    ``sparse_factory`` (called as ``_sparse_training`` is) setting the round's mask.
    """
    if sparse_factory is None and cfg.train.prune is not None and cfg.train.prune.method == "imp":
        from tlc.train.lottery import train_imp

        return train_imp(cfg, run_dir, progress, notify)
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
    device = device_for_rank()  # sets this rank's GPU before the first collective
    precision = choose_for_run(cfg.train.precision, cache_dir(), run_dir, rank, world, device)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision.precision))
    tokens = load_tokens(corpus, cfg.shape.vocab_size)
    if cfg.shape.objective == "mlm":  # the encoder's <mask> and <pad> must fit after the BPE vocabulary
        from tlc.train.masking import encoder_tokenizer

        encoder_tokenizer(tokens.tokenizer, cfg.shape.vocab_size)
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
        write_data_record(run_dir, corpus, tokens)  # what the split put on each side, for a reviewer
        if notify is not None:  # after the checks, so that a refused run's error stays its only line
            notify(f"{cfg.run_id}: precision {precision.precision} ({precision.reason})")

    # -- model, optimizer, engine ------------------------------------------------------------
    model = build_model(cfg.shape, eot_id=tokens.eot_id, seed=cfg.seed)
    sparse = (sparse_factory or _sparse_training)(cfg, model, tokens, run_dir, plan, rank)  # None: dense
    engine, engine_optimizer = build_engine(deepspeed, model, cfg.train, plan.global_batch, run_dir / "tensorboard")
    if sparse is not None:
        sparse.after_engine()  # the masks move to the device (and dtype) the engine gave the weights

    # -- resume: the trunk's newest checkpoint; a branch resumes from its own ---------------------
    ckpt_dir = run_dir / "checkpoint"
    start_step, wall_offset = 0, 0.0
    if (ckpt_dir / "tlc_latest.json").exists():
        client = _load_checkpoint(engine, ckpt_dir)
        start_step, wall_offset = int(client["step"]), float(client["wall_s"])
    if sparse is not None:
        sparse.after_resume(run_dir, engine.module, start_step)
    if rank == 0:
        rows = read_jsonl(run_dir / "metrics.jsonl")
        if rows or (run_dir / "metrics.jsonl").exists():
            # drop lines (and a torn tail) written after the checkpoint we resume from
            rewrite_jsonl(run_dir / "metrics.jsonl", [r for r in rows if _keep_row(r, start_step, run_dir)])

    # -- train ---------------------------------------------------------------------------------
    from tlc.train.progress import run_progress

    t = cfg.train
    # a bar on a terminal, else a line every ~10 s (tlc.train.progress)
    bar = run_progress(plan.steps_spent, start_step, cfg.run_id, plan.tokens_per_step, progress and rank == 0)
    session = _Session(cfg, plan, run_dir, tokens, val_offsets(len(tokens.val), cfg.shape.context, t.eval_tokens),
                       engine, engine_optimizer, device, rank, world, bar, wall_offset, sparse)
    forks = {b.fork_step: b for b in plan.branches}

    def branch_then_back_to_trunk(fork_step: int) -> None:
        if _run_branch(session, forks[fork_step]) and fork_step < plan.trunk_steps:
            wall = session.wall_s
            _load_checkpoint(engine, ckpt_dir)  # the trunk resumes from the fork, weights and optimizer state
            session.wall_s = wall

    if start_step in forks:  # killed inside a branch, or before it began
        branch_then_back_to_trunk(start_step)
    engine.train()
    loss_sum, loss_steps = 0.0, 0
    evals_done = sum(1 for s in plan.eval_steps if s <= start_step)
    for step in range(start_step, plan.trunk_steps):
        if forks:
            lr = trunk_lr(step, plan.total_steps, t.lr, t.warmup_frac)
        else:
            lr = get_lr(step, plan.total_steps, t.lr, t.warmup_frac, t.min_lr_ratio)
        loss_sum, loss_steps = loss_sum + session.step(step, lr), loss_steps + 1
        done = step + 1
        if done not in plan.eval_steps:
            continue

        # -- evaluate, log, checkpoint, fork -----------------------------------------------------
        session.log(done, lr, loss_sum / loss_steps, final=not forks and done == plan.total_steps)
        loss_sum, loss_steps = 0.0, 0
        evals_done += 1
        if evals_done % t.checkpoint_evals == 0 or done == plan.trunk_steps or done in forks:
            if sparse is not None:
                sparse.before_checkpoint(run_dir, done, rank)
            save_checkpoint(engine, ckpt_dir, done, session.wall_s, rank)
            if sparse is not None:
                sparse.after_checkpoint(run_dir, done, rank)
        if done in forks:
            branch_then_back_to_trunk(done)
    bar.close()

    # -- final weights: the trunk's end under cosine, the last branch's under wsd --------------------
    if rank == 0:
        if forks:
            last = run_dir / "branches" / branch_dir_name(plan.branches[-1], plan.tokens_per_step) / "model"
            tmp = run_dir / ".model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(last, tmp)
            atomic_replace_dir(tmp, run_dir / "model")
        else:
            save_final_model(engine.module, tokens, run_dir)
    if world > 1:
        import torch

        torch.distributed.barrier()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return rows[-1] if rows else {}
