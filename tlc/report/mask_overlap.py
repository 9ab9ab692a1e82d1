"""The "Mask overlap" figure: which pruning methods keep the same weights (bench/when_to_prune.py's overlap)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tlc.report.data import SweepData  # noqa: E402


def mask_overlap(data: SweepData):
    """A heatmap per (shape, sparsity) of the overall Jaccard index of every pair of masks, averaged over seeds;
    the colour bar marks the random reference density/(2 − density)."""
    pairs = (data.when_to_prune or {}).get("overlap_mean") or []
    groups = sorted({(p["shape"], p["sparsity"]) for p in pairs})
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5.8), squeeze=False)
    for ax, (shape, sparsity) in zip(axes[0], groups):
        group = [p for p in pairs if (p["shape"], p["sparsity"]) == (shape, sparsity)]
        arms = sorted({p["a"] for p in group} | {p["b"] for p in group})
        matrix = np.eye(len(arms))
        for p in group:
            i, j = arms.index(p["a"]), arms.index(p["b"])
            matrix[i, j] = matrix[j, i] = p["jaccard"]["mean"]
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="magma")
        for i in range(len(arms)):
            for j in range(len(arms)):
                if i != j:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if matrix[i, j] < 0.5 else "black")
        reference = float(np.mean([p["random_reference"] for p in group]))
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Jaccard index of the kept weights")
        bar.ax.axhline(reference, color="cyan", lw=2)
        bar.ax.text(1.6, reference, f"random {reference:.3f}", color="tab:cyan", fontsize=7, va="center",
                    transform=bar.ax.get_yaxis_transform())
        ax.set_xticks(range(len(arms)), arms, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(arms)), arms, fontsize=7)
        seeds = max((p["jaccard"]["seeds"] for p in group), default=1)
        ax.set_title(f"{shape}, sparsity {sparsity:g} ({seeds} seed{'s' if seeds > 1 else ''}); random "
                     f"= d/(2−d) = {reference:.3f}", fontsize=9)
    fig.tight_layout()
    return fig
