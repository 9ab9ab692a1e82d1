"""Sparse training: masks fixed at initialization, or grown by magnitude while the model trains.

Prunable weights are those of :func:`tlc.compress.prune.prunable_layers` (the attention and MLP
matrices of every block); sparsity is the fraction of zeros among them. Masks are ``Masks``
([out, in] bool keep-masks by layer name), as everywhere in ``tlc.compress``.

**At initialization** (the mask is fixed at step 0 and the run trains sparse for its whole budget):

- ``snip`` — Lee et al. 2019: score |g ⊙ w| with g the gradient of the loss on one calibration
  batch at initialization; the lowest scores are removed over all layers at once.
- ``synflow`` — Tanaka et al. 2020: data-free, iterative. The score is R's synaptic flow
  |∂R/∂w ⊙ w| where R is the sum of the outputs of the network with every parameter replaced by
  its absolute value, fed an all-ones input; pruning runs in ``SYNFLOW_ROUNDS`` rounds, the kept
  fraction shrinking exponentially to 1 - s. Adapted to a transformer (their networks have no
  normalisation or attention): float64; ``inputs_embeds`` of ones (position embeddings still
  added, in |w|); every LayerNorm/RMSNorm bypassed (normalising would cancel the flow); the
  attention softmax replaced by its unnormalised causal scores, (QKᵀ/√d)V — with equal inputs the
  softmax is uniform whatever Q and K are, so Q and K would carry no flow and be pruned whole.
- ``grasp`` — Wang et al. 2020: S = −θ ⊙ Hg, with g the gradient of the loss on the SNIP calibration
  batch over every trainable parameter and Hg its Hessian-vector product (double backward). Wang et
  al. remove the weights with the *highest* S (their removal shrinks the gradient norm least, or
  grows it); tlc keeps the (1 − s) *lowest* S over all layers at once, i.e. the highest θ ⊙ Hg —
  their convention, not the inverted one that Frankle et al. 2021 found to do as well. No softmax
  temperature (their T = 200 for CIFAR) and one batch. See :mod:`tlc.train.grasp`.
- ``random`` — the control: each layer keeps a uniformly random (1 - s) of its weights.
- ``snip-shuffle``, ``synflow-shuffle``, ``grasp-shuffle`` — Frankle et al. 2021's control: the method's mask with
  its positions shuffled at random inside each layer, so only the per-layer sparsities remain.

**During training** (``magnitude``): Zhu & Gupta 2017's gradual magnitude pruning. Sparsity
follows their eq. 1 with s_i = 0, s_t = s_f (1 - (1 - (t - t_0)/(t_1 - t_0))^3), from t_0 =
start·T to t_1 = end·T optimizer steps (25% to 75% of the run by default, as Frantar et al.
2023), with a pruning event every ``T_span / GMP_EVENTS`` steps; at each event every layer drops
its smallest-|w| still-kept weights until it reaches round(s_t · numel) zeros (masks only grow).

**How masks survive the optimizer.** Gradients of prunable weights are masked by tensor hooks
(they run before DeepSpeed's accumulation hooks, in ZeRO 0, 1 and 2). Init masks zero the weights
before the engine takes its master copy, so Adam's moments and the weights stay exactly zero
(AdamW's update and decoupled decay of a zero with zero moments are zero). When a mask grows,
the newly pruned entries are zeroed in the model's weights, in the fp32 master copy and in
Adam's ``exp_avg`` and ``exp_avg_sq`` — through ``deepspeed.utils.safe_set_full_fp32_param`` and
``safe_set_full_optimizer_state`` for ZeRO 1/2 and the bf16 optimizer, directly for a plain
optimizer — so nothing regrows a pruned weight.

**Mask files.** Init masks: ``<run>/masks.safetensors``, written once before training. Gradual
masks: ``<run>/checkpoint/masks-step<N>.safetensors`` written before checkpoint N becomes the
newest, so a checkpoint always has its masks. A resume reads and checks them (missing, other
layers or shapes, another method or sparsity: a one-line error before training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tlc.compress.prune import Masks, is_conv1d, prunable_layers, to_param_layout, weight_out_in
from tlc.config import PruneSettings
from tlc.errors import UserError
from tlc.io import atomic_write_bytes

SYNFLOW_ROUNDS = 100  # Tanaka et al. 2020 use 100 rounds
GMP_EVENTS = 16  # pruning events between start and end of the cubic ramp
SNIP_SEED = 104729  # calibration batch drawn apart from the training batches
SHUFFLE_SEED = 15485863  # shuffles and random masks use generators seeded from the run's seed
INIT_MASK_FILE = "masks.safetensors"


# ----------------------------------------------------------------------------------------------
# Scores and masks at initialization


def _keep_top(scores: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """Global ranking: keep the (1 - sparsity) highest scores over all layers together."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    removed = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if removed > 0:
        keep[torch.topk(flat, removed, largest=False, sorted=False).indices] = False
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = keep[start : start + score.numel()].view(score.shape)
        start += score.numel()
    return masks


def snip_masks(model: nn.Module, sparsity: float, batch: torch.Tensor) -> Masks:
    """SNIP (Lee et al. 2019): |∂L/∂w ⊙ w| on one calibration batch [B, T+1] of token ids."""
    from tlc.train.evaluation import lm_loss

    layers = prunable_layers(model)
    model.zero_grad(set_to_none=True)
    loss, _ = lm_loss(model, batch)
    loss.backward()
    scores = {name: (_out_in(m, m.weight.grad) * weight_out_in(m)).detach().abs() for name, m in layers.items()}
    model.zero_grad(set_to_none=True)
    return _keep_top(scores, sparsity)


def _out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in ``module.weight``'s layout as [out, in]."""
    return tensor.t() if is_conv1d(module) else tensor


def _unnormalised_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention with the softmax left out: (QKᵀ·scale, causal) V. For SynFlow only; [B, H, T, d] in."""
    seq = query.shape[-2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = query @ key.transpose(-1, -2) * scale  # (B, H, T, T)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=query.device).tril()
    scores = scores * causal
    return (scores @ value).transpose(1, 2).contiguous(), None  # (B, T, H, d)


def synflow_masks(model: nn.Module, sparsity: float, rounds: int = SYNFLOW_ROUNDS, seq: int = 4) -> Masks:
    """SynFlow (Tanaka et al. 2020) with the transformer adaptation of the module docstring."""
    import copy

    from transformers import AttentionInterface

    AttentionInterface.register("tlc_synflow", _unnormalised_attention)
    probe = copy.deepcopy(model).double().eval()
    probe.config._attn_implementation = "tlc_synflow"
    for sub in list(probe.modules()):
        for child_name, child in list(sub.named_children()):
            if isinstance(child, nn.LayerNorm) or "RMSNorm" in type(child).__name__:
                setattr(sub, child_name, nn.Identity())
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_()
    layers = prunable_layers(probe)
    originals = {name: m.weight.detach().clone() for name, m in layers.items()}
    masks = {name: torch.ones_like(weight_out_in(m), dtype=torch.bool) for name, m in layers.items()}
    width = probe.config.hidden_size
    ones = torch.ones(1, seq, width, dtype=torch.float64)
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for name, m in layers.items():
                m.weight.copy_(originals[name] * to_param_layout(m, masks[name]).to(torch.float64))
        probe.zero_grad(set_to_none=True)
        flow = probe(inputs_embeds=ones).logits.sum()  # R: every path's product of |w|
        flow.backward()
        scores = {name: (_out_in(m, m.weight.grad) * weight_out_in(m)).detach().abs() for name, m in layers.items()}
        for name in scores:  # already pruned stay pruned
            scores[name][~masks[name]] = -1.0
        masks = _keep_top(scores, 1.0 - (1.0 - sparsity) ** (k / rounds))
    return masks


def random_masks(model: nn.Module, sparsity: float, seed: int) -> Masks:
    """Each layer keeps a uniformly random round((1 - s)·numel) of its weights."""
    generator = torch.Generator().manual_seed(SHUFFLE_SEED + seed)
    masks = {}
    for name, m in prunable_layers(model).items():
        shape = weight_out_in(m).shape
        keep = torch.ones(math.prod(shape), dtype=torch.bool)
        keep[torch.randperm(keep.numel(), generator=generator)[: round(sparsity * keep.numel())]] = False
        masks[name] = keep.view(shape)
    return masks


def shuffle_within_layers(masks: Masks, seed: int) -> Masks:
    """Frankle et al.'s control: each layer's mask with its entries permuted at random (same count kept)."""
    generator = torch.Generator().manual_seed(SHUFFLE_SEED + 1 + seed)
    return {name: keep.flatten()[torch.randperm(keep.numel(), generator=generator)].view(keep.shape)
            for name, keep in masks.items()}


def init_masks(model: nn.Module, prune: PruneSettings, calibration: torch.Tensor | None, seed: int) -> Masks:
    """The masks of a pruning-at-init method for a freshly initialised ``model``."""
    base = prune.method.removesuffix("-shuffle")
    if base == "snip":
        if calibration is None:
            raise ValueError("snip needs a calibration batch")
        masks = snip_masks(model, prune.sparsity, calibration)
    elif base == "synflow":
        masks = synflow_masks(model, prune.sparsity)
    elif base == "grasp":
        from tlc.train.grasp import grasp_masks

        if calibration is None:
            raise ValueError("grasp needs a calibration batch")
        masks = grasp_masks(model, prune.sparsity, calibration)
    elif base == "random":
        masks = random_masks(model, prune.sparsity, seed)
    else:
        raise ValueError(f"{prune.method!r} is not a pruning-at-init method")
    return shuffle_within_layers(masks, seed) if prune.method.endswith("-shuffle") else masks


# ----------------------------------------------------------------------------------------------
# Gradual magnitude pruning: the schedule


def gmp_sparsity(step: int, start_step: int, end_step: int, final_sparsity: float) -> float:
    """Zhu & Gupta 2017 eq. 1 (s_i = 0): the target sparsity after ``step`` optimizer steps."""
    if step < start_step:
        return 0.0
    if step >= end_step:
        return final_sparsity
    progress = (step - start_step) / (end_step - start_step)
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


def gmp_events(total_steps: int, prune: PruneSettings) -> tuple[int, ...]:
    """Optimizer steps (counted done) after which masks grow; the last is the ramp's end."""
    start, end = round(prune.start * total_steps), max(1, round(prune.end * total_steps))
    start = min(start, end - 1)
    every = max(1, (end - start) // GMP_EVENTS)
    return tuple(sorted(set(range(start + every, end, every)) | {end}))


def grow_masks(masks: Masks, magnitudes: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """Each layer drops its smallest still-kept |w| until round(sparsity · numel) are pruned."""
    grown = {}
    for name, keep in masks.items():
        extra = round(sparsity * keep.numel()) - int((~keep).sum())
        keep = keep.contiguous().clone()
        if extra > 0:
            score = magnitudes[name].clone().flatten()
            score[~keep.flatten()] = float("inf")
            keep.view(-1)[torch.topk(score, extra, largest=False, sorted=False).indices] = False
        grown[name] = keep
    return grown


# ----------------------------------------------------------------------------------------------
# Mask files


def save_masks(path: Path, masks: Masks, prune: PruneSettings, step: int) -> None:
    """Masks as uint8 safetensors with the setting and step in the metadata (atomic)."""
    from safetensors.torch import save

    data = save({name: keep.to(torch.uint8).contiguous() for name, keep in masks.items()},
                metadata={"method": prune.method, "sparsity": repr(prune.sparsity), "step": str(step)})
    atomic_write_bytes(path, data)


def load_masks(path: Path, model: nn.Module, prune: PruneSettings, step: int | None) -> Masks:
    """Read a mask file and check it against the model and the setting; UserError naming the file."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"train.prune: cannot resume: the mask file {str(path)!r} is missing; "
                        "remove the run directory to train the run again from the start")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            masks = {name: f.get_tensor(name).bool() for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a torn or foreign file
        raise UserError(f"train.prune: cannot resume: the mask file {str(path)!r} is unreadable ({e}); "
                        "remove the run directory to train the run again") from None
    if meta.get("method") != prune.method or meta.get("sparsity") != repr(prune.sparsity):
        raise UserError(f"train.prune: cannot resume: {str(path)!r} holds {meta.get('method')} masks at sparsity "
                        f"{meta.get('sparsity')}, not {prune.method} at {prune.sparsity}; use another --out")
    if step is not None and meta.get("step") != str(step):
        raise UserError(f"train.prune: cannot resume: {str(path)!r} holds the masks of step {meta.get('step')}, "
                        f"not of the checkpoint's step {step}; remove the run directory to train it again")
    expected = {name: tuple(weight_out_in(m).shape) for name, m in prunable_layers(model).items()}
    found = {name: tuple(keep.shape) for name, keep in masks.items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or sorted(n for n in expected if expected[n] != found[n])
        raise UserError(f"train.prune: cannot resume: {str(path)!r} does not match the model (layer {wrong[0]!r}: "
                        f"{found.get(wrong[0])} in the file, {expected.get(wrong[0])} in the model); use another --out")
    return masks


# ----------------------------------------------------------------------------------------------
# Keeping pruned weights at zero through a DeepSpeed engine


def _zero_in_engine(engine, param: nn.Parameter, keep: torch.Tensor) -> None:
    """Zero ``param`` where ``keep`` is False (param layout) in the weights, master copy and Adam moments."""
    from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state,
                                 safe_set_full_fp32_param, safe_set_full_optimizer_state)

    with torch.no_grad():
        param.data.mul_(keep.to(param.dtype))
        if hasattr(param, "_hp_mapping"):  # ZeRO 1/2 and the bf16 optimizer keep their own fp32 partitions
            master = safe_get_full_fp32_param(param)
            safe_set_full_fp32_param(param, master * keep.to(master.dtype))
            for key in ("exp_avg", "exp_avg_sq"):
                try:
                    moment = safe_get_full_optimizer_state(param, key)
                except KeyError:  # no optimizer step yet: no moments to clear
                    continue
                if moment is not None:
                    safe_set_full_optimizer_state(param, moment * keep.to(moment.dtype), key)
            return
        optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
        for moment in optimizer.state.get(param, {}).values():
            if torch.is_tensor(moment) and moment.shape == param.shape:
                moment.mul_(keep.to(moment.dtype))


@dataclass
class SparseTraining:
    """The masks of one run and the hooks that hold them; ``train_run`` calls the methods marked hook."""

    prune: PruneSettings
    layers: dict[str, nn.Module]
    keep: dict[str, torch.Tensor]  # param layout, float 0/1, shared with the gradient hooks
    events: tuple[int, ...] = ()
    total_steps: int = 0
    handles: list = field(default_factory=list)

    @classmethod
    def before_engine(cls, prune: PruneSettings, model: nn.Module, run_dir: Path, total_steps: int,
                      resuming: bool, calibration: torch.Tensor | None, seed: int, rank: int) -> "SparseTraining":
        """Hook: masks for a fresh model (written to the run) or read back on resume; weights zeroed and
        gradient hooks set before the engine copies the model."""
        layers = prunable_layers(model)
        if prune.at_init:
            path = Path(run_dir) / INIT_MASK_FILE
            if resuming:
                masks = load_masks(path, model, prune, step=0)
            else:
                masks = init_masks(model, prune, calibration, seed)
                if rank == 0:
                    save_masks(path, masks, prune, step=0)
        else:
            masks = {name: torch.ones_like(weight_out_in(m), dtype=torch.bool) for name, m in layers.items()}
        keep = {name: to_param_layout(m, masks[name]).to(m.weight.dtype) for name, m in layers.items()}
        self = cls(prune, layers, keep, () if prune.at_init else gmp_events(total_steps, prune), total_steps)
        with torch.no_grad():
            for name, m in layers.items():
                m.weight.mul_(keep[name])
        for name, m in layers.items():  # the mask is looked up at each call: after_engine replaces it
            self.handles.append(m.weight.register_hook(lambda g, name=name: g * self.keep[name].to(g.dtype)))
        return self

    def after_engine(self) -> None:
        """Hook: the engine has moved and cast the model (to its GPU, to bf16); the masks follow the
        weights, which the gradient hooks and every pruning event multiply them with."""
        self.keep = {name: self.keep[name].to(device=m.weight.device, dtype=m.weight.dtype)
                     for name, m in self.layers.items()}

    def masks(self) -> Masks:
        """The current keep-masks, [out, in] bool."""
        return {name: _out_in(m, self.keep[name]).bool().contiguous() for name, m in self.layers.items()}

    def after_resume(self, run_dir: Path, model: nn.Module, step: int) -> None:
        """Hook: a gradual run reads the masks of the checkpoint it resumed from."""
        if self.prune.at_init or step == 0:
            return
        masks = load_masks(Path(run_dir) / "checkpoint" / f"masks-step{step:08d}.safetensors", model, self.prune, step)
        for name, m in self.layers.items():
            self.keep[name].copy_(to_param_layout(m, masks[name]))

    def after_step(self, engine, done: int) -> None:
        """Hook after optimizer step ``done`` (1-based): at a pruning event, grow the masks and zero what they drop."""
        if done not in self.events:
            return
        from deepspeed.utils import safe_get_full_fp32_param

        start, end = round(self.prune.start * self.total_steps), max(1, round(self.prune.end * self.total_steps))
        target = gmp_sparsity(done, min(start, end - 1), end, self.prune.sparsity)
        magnitudes = {}
        for name, m in self.layers.items():
            master = safe_get_full_fp32_param(m.weight)  # None without a separate master copy
            magnitudes[name] = _out_in(m, (master if master is not None else m.weight).detach().float().abs())
        masks = grow_masks(self.masks(), magnitudes, target)
        for name, m in self.layers.items():
            self.keep[name].copy_(to_param_layout(m, masks[name]))
            _zero_in_engine(engine, m.weight, self.keep[name])

    def before_checkpoint(self, run_dir: Path, step: int, rank: int) -> None:
        """Hook: a gradual run writes the masks of checkpoint ``step`` before it becomes the newest."""
        if self.prune.at_init or rank != 0:
            return
        folder = Path(run_dir) / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)
        save_masks(folder / f"masks-step{step:08d}.safetensors", self.masks(), self.prune, step)

    def after_checkpoint(self, run_dir: Path, step: int, rank: int) -> None:
        """Hook: remove the mask files of older checkpoints (DeepSpeed's own are gone by now)."""
        if self.prune.at_init or rank != 0:
            return
        for old in (Path(run_dir) / "checkpoint").glob("masks-step*.safetensors"):
            if old.name != f"masks-step{step:08d}.safetensors":
                old.unlink(missing_ok=True)

    def metrics(self) -> dict:
        """Fields for metrics.jsonl: the fraction of zeros the masks hold now."""
        pruned = sum(int((k == 0).sum()) for k in self.keep.values())
        return {"sparsity": pruned / sum(k.numel() for k in self.keep.values())}
