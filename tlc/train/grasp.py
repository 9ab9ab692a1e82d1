"""GraSP at initialization (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving
Gradient Flow").

Removing weights δ changes the gradient norm, to first order, by ΔG ≈ 2 δᵀ H g (H the Hessian and g
the gradient of the loss at initialization). Wang et al. score each weight by S = −θ ⊙ Hg and
remove the highest scores: removing a weight with a high S reduces the gradient flow least (or
increases it). tlc keeps the (1 − s) lowest S over all prunable layers at once — equivalently the
highest θ ⊙ Hg — which is their convention (Frankle et al. 2021 found that inverting the score did
as well; the ``grasp`` method here is not inverted).

Hg is a Hessian-vector product by double backward: g(θ) with ``create_graph``, then the gradient of
g(θ)·stop_gradient(g) with respect to θ. g and H run over every trainable parameter (embeddings and
norms too), as in Wang et al., so that the score of a block matrix's weight sees its coupling to the
rest of the network; only the prunable matrices are scored.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tlc.compress.prune import Masks, prunable_layers


def grasp_scores(loss_fn: Callable[[], torch.Tensor], params: list[nn.Parameter],
                 scored: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """S = −θ ⊙ Hg for each tensor of ``scored`` (a subset of ``params``), in that tensor's own layout.

    ``loss_fn`` computes the loss from the current parameters; g and H are taken over ``params``.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g_fixed = [g.detach() for g in grads]
    inner = sum((g * gf).sum() for g, gf in zip(grads, g_fixed))  # g(θ) · stop_gradient(g)
    index = {id(p): i for i, p in enumerate(params)}
    wanted = [params[index[id(p)]] for p in scored.values()]
    hg = torch.autograd.grad(inner, wanted)  # ∂/∂θ (gᵀ g_fixed) = H g_fixed
    return {name: -(p.detach() * h.detach()) for (name, p), h in zip(scored.items(), hg)}


def grasp_masks(model: nn.Module, sparsity: float, batch: torch.Tensor) -> Masks:
    """GraSP masks for a freshly initialised ``model`` from one calibration batch [B, T+1] of token ids."""
    from tlc.train.evaluation import lm_loss
    from tlc.train.sparsity import _keep_top, _out_in

    import copy

    # a copy with eager attention: torch's fused CPU attention has no double backward
    probe = copy.deepcopy(model).eval()  # eval: no dropout, the score is of the network, not of one draw
    probe.config._attn_implementation = "eager"
    layers = prunable_layers(probe)
    params = [p for p in probe.parameters() if p.requires_grad]
    scored = {name: m.weight for name, m in layers.items()}
    scores = grasp_scores(lambda: lm_loss(probe, batch)[0], params, scored)
    # keep the lowest S: rank by −S, in [out, in] like every mask
    keep_scores = {name: -_out_in(layers[name], s) for name, s in scores.items()}
    return _keep_top(keep_scores, sparsity)
