"""Lottery tickets: iterative magnitude pruning with rewinding (``train.prune: {method: imp}``).

Frankle & Carbin 2019 and Frankle et al. 2020 ("Linear Mode Connectivity and the Lottery Ticket
Hypothesis"): train dense; remove a fixed fraction of the remaining weights by magnitude; rewind the
survivors to their values at step k (k = 0: the initialization) and train again from there, the
learning-rate schedule rewound with them; repeat. With ``rounds`` R and a target sparsity s each
round removes p = 1 − (1 − s)^(1/R) of what remains (20% per round reaches 59% in 4 rounds), ranked
by |w| over all prunable layers at once, as Frankle et al. 2020 do for deep networks.

A ticket costs R + 1 trainings: round 0 trains the whole run, each later round the run's steps after
k. Every round's FLOPs are counted in ``lottery.json`` and the run's ``config.json`` counts them all
as its ``train_flops`` — a ticket is not free, and a comparison at equal compute must say so.

Run directory (the run's own files are those of any run, from the last round, so fit and report
read it as one):

    <run>/rounds/r0/          the dense training (a run directory of its own)
    <run>/rewind/             round 0's DeepSpeed checkpoint at step k (k > 0 only)
    <run>/rounds/r<i>/        round i: masks.safetensors (its mask, written before it trains), metrics,
                              model/, checkpoint/ (a copy of rewind/ before it starts, when k > 0)
    <run>/lottery.json        each finished round: sparsity, validation loss, steps, FLOPs
    <run>/model/, metrics.jsonl, config.json   the ticket: the last round's, written last

A kill between rounds resumes with the next round (finished rounds are complete run directories and
are skipped; a round's mask is read back from its file); a kill inside a round resumes that round
from its newest checkpoint, as any run does.

**How a rewound round starts.** The checkpoint at step k holds dense weights and Adam moments. The
round's mask zeroes the weights after the checkpoint is loaded (so the first forward is sparse) and,
after the first optimizer step, the weights, master copy and Adam moments of pruned entries in the
engine (``tlc.train.sparsity._zero_in_engine``). That first step leaves the kept weights as if the
moments had been cleared before it: AdamW is elementwise, and the masked gradients are zero at
pruned entries, so the global gradient-norm clip sees the same norm.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlc.compress.prune import Masks, is_conv1d, prunable_layers, to_param_layout, weight_out_in
from tlc.config import PruneSettings, RunConfig, validate_run
from tlc.errors import UserError
from tlc.io import atomic_replace_dir, atomic_write_json, is_complete, read_jsonl, rewrite_jsonl
from tlc.train.sparsity import SparseTraining, _keep_top, _zero_in_engine, load_masks, save_masks

ROUNDS_DIR = "rounds"
REWIND_DIR = "rewind"
MASK_FILE = "masks.safetensors"
LOTTERY_FILE = "lottery.json"


def round_sparsity(prune: PruneSettings, round_index: int) -> float:
    """The sparsity after ``round_index`` pruning steps: 1 − (1 − p)^i, exactly the target at the last round."""
    if round_index >= prune.rounds:
        return prune.sparsity
    return 1.0 - (1.0 - prune.round_fraction) ** round_index


def imp_masks(weights: dict[str, torch.Tensor], keep: Masks, sparsity: float) -> Masks:
    """Remove the smallest |w| among the still-kept weights over all layers until ``sparsity`` ([out, in] in and out)."""
    scores = {}
    for name, w in weights.items():
        score = w.detach().abs().float().clone()
        score[~keep[name]] = -1.0  # pruned weights stay pruned, ranked below every kept one
        scores[name] = score
    return _keep_top(scores, sparsity)


def round_weights(run_dir: Path, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """A finished round's prunable weights as [out, in], from its model/model.safetensors."""
    from safetensors.torch import load_file

    state = load_file(str(Path(run_dir) / "model" / "model.safetensors"))
    return {name: (state[f"{name}.weight"].t() if is_conv1d(m) else state[f"{name}.weight"]) for name, m in layers.items()}


@dataclass
class ImpRound(SparseTraining):
    """One round's fixed mask, set like a mask at init; round 0 (dense) also saves the rewind checkpoint."""

    rewind_step: int = 0
    rewind_dir: Path | None = None  # round 0 only (k > 0): where the step-k checkpoint goes
    zero_engine: bool = False  # set on resume: the loaded checkpoint's state of pruned entries must go

    @classmethod
    def start(cls, prune: PruneSettings, model: nn.Module, masks: Masks, rewind_step: int,
              rewind_dir: Path | None) -> "ImpRound":
        """Zero the pruned weights and hold their gradients at zero (before the engine copies the model)."""
        layers = prunable_layers(model)
        keep = {name: to_param_layout(m, masks[name]).to(m.weight.dtype) for name, m in layers.items()}
        self = cls(prune, layers, keep, rewind_step=rewind_step, rewind_dir=rewind_dir)
        with torch.no_grad():
            for name, m in layers.items():
                m.weight.mul_(keep[name])
        for name, m in layers.items():
            self.handles.append(m.weight.register_hook(lambda g, k=keep[name]: g * k.to(g.dtype)))
        return self

    def after_resume(self, run_dir: Path, model: nn.Module, step: int) -> None:
        """Hook: a loaded checkpoint (the rewind point, or the round's own) is made sparse again."""
        with torch.no_grad():
            for name, m in self.layers.items():
                m.weight.mul_(self.keep[name])
        self.zero_engine = True

    def after_step(self, engine, done: int) -> None:
        """Hook: clear pruned entries' master copy and moments once after a resume; save the rewind point."""
        if self.zero_engine:
            for name, m in self.layers.items():
                _zero_in_engine(engine, m.weight, self.keep[name])
            self.zero_engine = False
        if self.rewind_dir is not None and done == self.rewind_step and not (self.rewind_dir / "tlc_latest.json").exists():
            from tlc.train.engine import save_checkpoint

            tmp = self.rewind_dir.with_name(f".{self.rewind_dir.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(engine, tmp, done, 0.0, engine.global_rank)
            if engine.global_rank == 0:
                atomic_replace_dir(tmp, self.rewind_dir)

    def before_checkpoint(self, run_dir: Path, step: int, rank: int) -> None:
        """Hook: nothing; the round's mask file is written before the round starts."""

    def after_checkpoint(self, run_dir: Path, step: int, rank: int) -> None:
        """Hook: nothing to clean up."""


def _copy_dir_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    atomic_replace_dir(tmp, target)


def train_imp(cfg: RunConfig, run_dir: Path, progress: bool = True, notify=None) -> dict:
    """Train an imp run (every round, resuming where it stopped) into ``run_dir``; the ticket's last metrics line."""
    from tlc.train.guard import lock_run_dir
    from tlc.train.loop import check_run_dir, plan_run, train_run
    from tlc.train.model import build_model

    validate_run(cfg)
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    if is_complete(run_dir):
        rows = read_jsonl(run_dir / "metrics.jsonl")
        return rows[-1] if rows else {}
    prune = cfg.train.prune
    plan = plan_run(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    rewind_step = round(prune.rewind * plan.total_steps)
    if prune.rewind > 0 and rewind_step == 0:
        raise UserError(f"train.prune.rewind: {prune.rewind} of {plan.total_steps} steps rounds to step 0; "
                        "give 0 to rewind to initialization, or a larger fraction")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)
    rank = int(os.environ.get("RANK", "0"))
    layers = prunable_layers(build_model(cfg.shape, seed=cfg.seed))  # names and layouts only
    step_flops = plan.tokens_per_step * plan.flops_per_token
    rewind_dir = run_dir / REWIND_DIR
    masks = {name: torch.ones_like(weight_out_in(m), dtype=torch.bool) for name, m in layers.items()}
    rounds, spent, last = [], 0.0, {}
    for r in range(prune.rounds + 1):
        round_dir = run_dir / ROUNDS_DIR / f"r{r}"
        target = round_sparsity(prune, r)
        setting = dataclasses.replace(prune, sparsity=target)  # the mask file's metadata: this round's sparsity
        if r > 0:
            round_dir.mkdir(parents=True, exist_ok=True)
            mask_path = round_dir / MASK_FILE
            if mask_path.is_file():
                masks = load_masks(mask_path, build_model(cfg.shape, seed=cfg.seed), setting, step=rewind_step)
            else:
                masks = imp_masks(round_weights(run_dir / ROUNDS_DIR / f"r{r - 1}", layers), masks, target)
                if rank == 0:
                    save_masks(mask_path, masks, setting, step=rewind_step)
            started = (round_dir / "checkpoint" / "tlc_latest.json").exists()
            if rewind_step > 0 and not is_complete(round_dir) and not started:
                if not (rewind_dir / "tlc_latest.json").exists():
                    raise UserError(f"train.prune: cannot resume: the rewind checkpoint {str(rewind_dir)!r} is missing; "
                                    "remove the run directory to train the run again")
                _copy_dir_atomic(rewind_dir, round_dir / "checkpoint")

        def factory(cfg_, model, tokens, run_dir_, plan_, rank_, masks=masks, first=(r == 0)):
            return ImpRound.start(prune, model, masks, rewind_step,
                                  rewind_dir if first and rewind_step > 0 else None)

        last = train_run(cfg, round_dir, progress, notify, sparse_factory=factory)
        steps = plan.total_steps if r == 0 else plan.total_steps - rewind_step
        spent += steps * step_flops
        rounds.append({"round": r, "sparsity": target, "achieved_sparsity": last.get("sparsity", 0.0),
                       "val_loss": last["val_loss"], "steps": steps, "flops": steps * step_flops,
                       "cumulative_flops": spent, "dir": f"{ROUNDS_DIR}/r{r}"})
        if rank == 0:
            atomic_write_json(run_dir / LOTTERY_FILE, lottery_summary(prune, plan.total_steps, rewind_step, rounds))

    # -- the ticket: the last round's files as the run's own, model/ last (it marks the run complete) ----
    if rank == 0:
        import json

        final = run_dir / ROUNDS_DIR / f"r{prune.rounds}"
        config = json.loads((final / "config.json").read_text(encoding="utf-8"))
        config.update(train_flops=spent, spent_flops=spent, ticket_path_flops=plan.total_steps * step_flops,
                      imp_rounds=rounds)
        atomic_write_json(run_dir / "config.json", config)
        rewrite_jsonl(run_dir / "metrics.jsonl", read_jsonl(final / "metrics.jsonl"))
        _copy_dir_atomic(final / "model", run_dir / "model")
    return last


def lottery_summary(prune: PruneSettings, total_steps: int, rewind_step: int, rounds: list[dict]) -> dict:
    """lottery.json: the setting and each finished round."""
    return {"method": prune.method, "target_sparsity": prune.sparsity, "rounds_planned": prune.rounds,
            "round_fraction": prune.round_fraction, "rewind": prune.rewind, "rewind_step": rewind_step,
            "total_steps": total_steps, "rounds": rounds,
            "flops_note": "round 0 trains every step, each later round the steps after the rewind point"}
