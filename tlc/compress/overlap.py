"""Do two pruning methods keep the same weights? The Jaccard index of their keep-masks.

J(A, B) = |A ∩ B| / |A ∪ B| over the kept weights, per layer and over all prunable layers together
(Li et al. 2020 leave open whether train-large-then-prune finds a lottery ticket; this is the measure
that question needs). Two references say what an overlap means:

- ``random_reference``: two independent uniformly random masks of density d (kept fraction) overlap
  by E|A∩B| / E|A∪B| = d² / (2d − d²) = d / (2 − d) (0.111 at 80% sparsity);
- ``layerwise_reference``: two masks with these masks' per-layer densities but random positions
  inside each layer, Σ n_l a_l b_l / Σ n_l (a_l + b_l − a_l b_l). Overlap above it is agreement on
  positions; overlap up to it is only agreement on per-layer proportions (the shuffle test's
  question, asked of masks instead of losses).
"""

from __future__ import annotations

import torch

from tlc.compress.prune import Masks


def jaccard(a: Masks, b: Masks) -> dict:
    """{"overall": J, "layers": {name: J}} of two keep-masks over the same layers and shapes."""
    if set(a) != set(b) or any(a[n].shape != b[n].shape for n in a):
        raise ValueError("masks over different layers or shapes have no Jaccard index")
    layers, inter_all, union_all = {}, 0, 0
    for name in a:
        inter = int((a[name] & b[name]).sum())
        union = int((a[name] | b[name]).sum())
        layers[name] = inter / union if union else 1.0
        inter_all, union_all = inter_all + inter, union_all + union
    return {"overall": inter_all / union_all if union_all else 1.0, "layers": layers}


def density(masks: Masks) -> float:
    """The kept fraction over all layers."""
    return sum(int(k.sum()) for k in masks.values()) / sum(k.numel() for k in masks.values())


def random_reference(kept: float) -> float:
    """Expected Jaccard index of two independent random masks that each keep a fraction ``kept``."""
    return kept / (2.0 - kept) if kept > 0 else 0.0


def layerwise_reference(a: Masks, b: Masks) -> float:
    """Expected overall Jaccard index of random masks with the per-layer densities of ``a`` and ``b``."""
    inter = union = 0.0
    for name in a:
        n = a[name].numel()
        da, db = float(a[name].float().mean()), float(b[name].float().mean())
        inter += n * da * db
        union += n * (da + db - da * db)
    return inter / union if union else 1.0


def overlap_pairs(masks_by_arm: dict[str, Masks]) -> list[dict]:
    """Every unordered pair of arms whose masks cover the same layers and shapes, with both references."""
    arms = sorted(masks_by_arm)
    rows = []
    for i, x in enumerate(arms):
        for y in arms[i + 1:]:
            a, b = masks_by_arm[x], masks_by_arm[y]
            if set(a) != set(b) or any(a[n].shape != b[n].shape for n in a):
                continue
            j = jaccard(a, b)
            rows.append({"a": x, "b": y, "jaccard": j["overall"], "layers": j["layers"],
                         "density_a": density(a), "density_b": density(b),
                         "random_reference": random_reference((density(a) + density(b)) / 2),
                         "layerwise_reference": layerwise_reference(a, b)})
    return rows


def masks_from_weights(weights: dict[str, torch.Tensor]) -> Masks:
    """Keep-masks of a trained sparse model: its non-zero weights ([out, in] in, bool out)."""
    return {name: (w != 0) for name, w in weights.items()}
