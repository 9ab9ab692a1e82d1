"""The report's figures: each a function from the collected sweep to a matplotlib figure (or None).

Every figure has axis labels with units, a legend, and a caption that says what to read from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tlc.report.data import SweepData, dense_row, fitted_curve, fitted_pruning, variant_label  # noqa: E402
from tlc.report.mask_overlap import mask_overlap  # noqa: E402


@dataclass(frozen=True)
class FigureSpec:
    filename: str
    title: str
    caption: str
    draw: Callable[[SweepData], object]  # returns a Figure, or None when the data is not there


def _size_colors(data: SweepData):
    sizes = [max(1, r.non_embedding) for r in data.runs]
    lo, hi = math.log(min(sizes)), math.log(max(sizes))
    cmap = plt.get_cmap("viridis")
    return {r.run_id: cmap(0.9 * (math.log(max(1, r.non_embedding)) - lo) / max(hi - lo, 1e-9)) for r in data.runs}


def _label(run) -> str:
    return f"{run.run_id} (N={run.non_embedding / 1e6:.2f}M)"


def _curves(data: SweepData, x, y, size=(7.5, 4.5)):
    """One line per run of ``y(row)`` against ``x(row)`` over its evaluations, coloured by model size."""
    fig, ax = plt.subplots(figsize=size)
    colors = _size_colors(data)
    for run in data.runs:
        trunk = [m for m in run.metrics if "fork_step" not in m]  # a wsd run's cooldown branches end off its curve
        ax.plot([x(m) for m in trunk], [y(m) for m in trunk], "o-", ms=3, color=colors[run.run_id],
                label=_label(run))
        ends = [m for m in run.metrics if "fork_step" in m]
        ax.plot([x(m) for m in ends], [y(m) for m in ends], "D", ms=5, color=colors[run.run_id])
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax, colors


def loss_vs_flops(data: SweepData):
    fig, ax, colors = _curves(data, lambda m: m["flops"], lambda m: m["val_loss"], size=(7.5, 5))
    curve = fitted_curve(data.fit)
    if curve:
        name, law_loss = curve
        for run in data.runs:
            fpt = run.config.get("flops_per_token")
            # the law is fitted to finished-run points (the diamonds), so it is drawn over their tokens
            ends = [m["tokens"] for m in run.metrics if m.get("final")] or [run.metrics[0]["tokens"],
                                                                          run.metrics[-1]["tokens"]]
            tokens = np.geomspace(min(ends), max(ends), 50)
            loss = law_loss(run, tokens) if fpt else None
            if loss is not None:
                ax.plot(tokens * fpt, loss, "--", lw=1, color=colors[run.run_id])
        ax.plot([], [], "k--", lw=1, label=f"fitted L(N, D) ({name}, the preferred law)")
    frontier = (data.fit or {}).get("frontier") or {}
    if frontier.get("compute") and frontier.get("loss"):
        ax.plot(frontier["compute"], frontier["loss"], "-", color="crimson", lw=2.5, alpha=0.6, label="compute-optimal frontier")
    ax.set(xscale="log", yscale="log", xlabel="training compute (FLOPs)", ylabel="validation loss (nats/token)")
    ax.legend(fontsize=7)
    return fig


def accuracy_vs_flops(data: SweepData):
    fig, ax, _ = _curves(data, lambda m: m["flops"], lambda m: 100 * m["val_acc"])
    predicted = "masked-token" if data.objective == "mlm" else "next-token"
    ax.set(xscale="log", xlabel="training compute (FLOPs)", ylabel=f"{predicted} accuracy (%)")
    ax.legend(fontsize=7)
    return fig


def loss_vs_wall(data: SweepData):
    fig, ax, _ = _curves(data, lambda m: max(m["wall_s"], 1e-3), lambda m: m["val_loss"])
    ax.set(xscale="log", yscale="log", xlabel="training wall-clock time (s)", ylabel="validation loss (nats/token)")
    ax.legend(fontsize=7)
    return fig


def loss_vs_sparsity(data: SweepData):
    runs = data.compressed_runs
    methods = sorted({row["method"] for r in runs for row in r.compress if row.get("method") not in ("none", "dense")})
    if not methods:
        return None
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 4), sharey=True, squeeze=False)
    colors = _size_colors(data)
    models = fitted_pruning(data.fit)
    for ax, method in zip(axes[0], methods):
        form, added = models.get(method, (None, None))
        for run in runs:
            base = run.final.get("val_loss")
            measured = [r["sparsity"] for r in run.compress if r.get("method") == method]
            if added is not None and base is not None and measured:
                grid = np.linspace(0.0, max(measured), 60)[1:]
                fitted = added(run, grid)
                if fitted is not None:
                    ax.plot(np.r_[0.0, grid], base + np.r_[0.0, fitted], ls="--", lw=0.8, alpha=0.6,
                            color=colors[run.run_id])
            for bits, marker, fill in ((32, "o", "full"), (8, "s", "none")):
                rows = sorted((r for r in run.compress if r.get("method") == method and int(r.get("bits", 32)) == bits),
                              key=lambda r: r["sparsity"])
                if not rows:
                    continue
                xs, ys = [0.0] + [r["sparsity"] for r in rows], [base] + [r["val_loss"] for r in rows]
                ax.plot(xs, ys, marker=marker, fillstyle=fill, ls="-" if bits == 32 else ":", color=colors[run.run_id],
                        label=f"{run.run_id}{' int8' if bits == 8 else ''}")
        ax.set_title(method if form is None else f"{method} (fitted: {form})", fontsize=9)
        ax.set(xlabel="sparsity (share of weights removed)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats/token)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # room for the report's title above the panels' own
    return fig


def _cost(row: dict) -> float | None:
    return row.get("bytes")


def equal_inference_cost(data: SweepData):
    runs = data.compressed_runs
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = _size_colors(data)
    dense = []
    for run in runs:
        row = dense_row(run)
        if row and _cost(row):
            dense.append((_cost(row), row["val_loss"]))
        for r in run.compress:
            if r is row or not _cost(r):
                continue
            ax.scatter(_cost(r), r["val_loss"], s=18, color=colors[run.run_id], marker="s" if int(r.get("bits", 32)) == 8 else "o",
                       alpha=0.8)
        ax.scatter([], [], color=colors[run.run_id], s=18, label=f"{run.run_id} compressed")
    if dense:
        dense.sort()
        ax.plot(*zip(*dense), "k-o", lw=2, ms=6, label="dense models (train small)")
    ax.scatter([], [], marker="s", color="grey", s=18, label="square: int8")
    ax.set(xscale="log", xlabel="inference cost: artifact size (bytes)", ylabel="validation loss (nats/token)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _pareto_points(plan: dict) -> list[dict]:
    front = plan.get("pareto_front") or plan.get("pareto") or []
    return [p for p in front if isinstance(p, dict)]


def _point_xy(point: dict) -> tuple[float, float] | None:
    loss = point.get("predicted_loss", point.get("loss"))
    if isinstance(loss, dict):
        loss = loss.get("mean", loss.get("value"))
    cost = point.get("inference_cost", point.get("cost", point.get("nonzeros", point.get("bytes"))))
    if isinstance(cost, dict):
        cost = cost.get("bytes", cost.get("nonzero_params", cost.get("nonzeros")))
    if isinstance(loss, (int, float)) and isinstance(cost, (int, float)):
        return float(cost), float(loss)
    return None


def plan_pareto(data: SweepData):
    if not data.plan:
        return None
    points = [xy for p in _pareto_points(data.plan) if (xy := _point_xy(p))]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    points.sort()
    ax.plot(*zip(*points), "o-", color="steelblue", label="Pareto front (predicted)")
    for key, style, name in (("recommendation", ("*", "crimson", 16), "recommendation"),
                             ("train_small", ("D", "black", 8), "best uncompressed (train small)")):
        xy = _point_xy(data.plan.get(key) or {})
        if xy:
            ax.plot(*xy, style[0], color=style[1], ms=style[2], label=name)
    unit = {"nonzeros": "non-zero parameters", "bytes": "artifact size (bytes)", "latency_ms": "latency (ms)"}
    cost = data.plan.get("pareto_cost", "")
    ax.set(xscale="log", xlabel=f"inference cost: {unit.get(cost, cost or 'as in the plan table')}",
           ylabel="predicted validation loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def frequency_buckets(data: SweepData):
    runs = [r for r in data.compressed_runs if dense_row(r) and dense_row(r).get("loss_by_freq_bucket")]
    if not runs:
        return None
    run = runs[-1]  # the largest model that has compression results
    dense = dense_row(run)["loss_by_freq_bucket"]
    variants = {}
    for row in run.compress:
        if row.get("loss_by_freq_bucket") and row is not dense_row(run):
            key = (row["method"], int(row.get("bits", 32)))
            if key not in variants or row.get("sparsity", 0) > variants[key].get("sparsity", 0):
                variants[key] = row  # the strongest level of each method
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = np.arange(len(dense))
    ax.plot(xs, dense, "k-o", lw=2, label=f"{run.run_id} dense")
    for row in sorted(variants.values(), key=variant_label):
        ax.plot(xs, row["loss_by_freq_bucket"], "o--", ms=4, label=variant_label(row))
    ax.set_xticks(xs, [f"bucket {i + 1}" for i in xs])
    ax.set(xlabel="target tokens by training-set frequency (1 = rarest, 5 = most frequent; equal token mass each)",
           ylabel="validation loss (nats/token)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return fig


TIMING_STYLE = {  # timing -> (colour, line style); methods at init are told apart by marker
    "init": ("tab:blue", ":"), "during": ("tab:green", "-"), "after": ("tab:red", "-"), "lottery": ("tab:purple", "--")}
METHOD_MARKER = {"snip": "o", "snip-shuffle": "o", "synflow": "s", "synflow-shuffle": "s", "grasp": "v",
                 "grasp-shuffle": "v", "random": "x", "magnitude": "D", "gradual": "^"}


def when_to_prune(data: SweepData):
    """Each timing's and method's loss minus the dense run's, at equal training FLOPs: a panel per sparsity,
    the shapes along x (in the order of their dense runs' FLOPs), zero the dense model."""
    rows = (data.when_to_prune or {}).get("rows") or []
    by_seed = {(r["shape"], r.get("seed", 0)): r for r in rows if r.get("timing") == "dense"}
    rows = [r for r in rows if r.get("timing") != "dense" and (r["shape"], r.get("seed", 0)) in by_seed]
    if not rows:
        return None
    # several seeds: each run's gap to the dense run of its own seed, averaged over the seeds
    gaps: dict[tuple, list[float]] = {}
    for r in rows:
        gaps.setdefault((r["shape"], r["method"], round(r["sparsity"], 2)), []).append(
            r["val_loss"] - by_seed[(r["shape"], r.get("seed", 0))]["val_loss"])
    rows = list({(r["shape"], r["method"], round(r["sparsity"], 2)): r for r in rows}.values())
    dense = {shape: r for (shape, _), r in by_seed.items()}
    shapes = sorted(dense, key=lambda shape: (dense[shape].get("train_flops") or 0, shape))
    sparsities = sorted({round(r["sparsity"], 2) for r in rows})
    fig, axes = plt.subplots(1, len(sparsities), figsize=(4.5 * len(sparsities) + 1, 4.5), sharey=True, squeeze=False)
    for ax, sparsity in zip(axes[0], sparsities):
        ax.axhline(0.0, color="k", lw=1, label="dense (same FLOPs)")
        for method in sorted({r["method"] for r in rows}):
            pts = [r for r in rows if r["method"] == method and round(r["sparsity"], 2) == sparsity]
            if not pts:
                continue
            pts.sort(key=lambda r: shapes.index(r["shape"]))
            color, style = TIMING_STYLE.get(pts[0]["timing"], ("tab:orange", "-"))
            hollow = method.endswith("-shuffle")
            mean_gap = [float(np.mean(gaps[(r["shape"], method, sparsity)])) for r in pts]
            ax.plot([shapes.index(r["shape"]) for r in pts], mean_gap,
                    style, marker=METHOD_MARKER.get(method, "o"), color="tab:gray" if hollow or method == "random" else color,
                    mfc="none" if hollow else None, label=f"{pts[0]['timing']}: {method}")
        ax.set_xticks(range(len(shapes)), [shape.rsplit("-s", 1)[0] for shape in shapes], rotation=45, fontsize=8)
        ax.set(title=f"sparsity {sparsity:g}", xlabel="shape")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("loss minus dense (nats/token)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plan_came_true(data: SweepData):
    """Every validated point of every plan in the sweep folder: predicted interval against measured loss."""
    points = []
    for entry in data.validations:
        for name, point in entry["points"].items():
            loss = point["predicted"]["loss"]
            points.append((name, loss["mean"], loss.get("low"), loss.get("high"), point["measured"]["loss"],
                           point["measured"].get("loss_per_seed") or []))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 6))
    styles = {"recommendation": ("*", "crimson", 13), "train_small": ("D", "black", 7)}
    seen = set()
    for name, mean, low, high, measured, per_seed in points:
        marker, color, size = styles.get(name, ("o", "steelblue", 7))
        if low is not None and high is not None:
            ax.errorbar(mean, measured, xerr=[[mean - low], [high - mean]], fmt="none", ecolor=color, alpha=0.6,
                        capsize=3)
        ax.plot(mean, measured, marker, color=color, ms=size, label=None if name in seen else name.replace("_", " "))
        ax.plot([mean] * len(per_seed), per_seed, ".", color=color, alpha=0.4)
        seen.add(name)
    values = [v for p in points for v in (p[1], p[4], p[2], p[3]) if v is not None]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k:", lw=1, label="measured = predicted")
    ax.set(xlabel="predicted validation loss, with its interval (nats/token)",
           ylabel="measured validation loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


FIGURES = [
    FigureSpec("plan_came_true.png", "Did the plan come true?",
               "Each point is a planned model that tlc validate trained and compressed: the horizontal bar is the "
               "interval the plan predicted, the height what was measured (dots: single seeds). A point on the dotted "
               "line came out exactly as predicted; a bar that misses the line is a prediction the data refuted.",
               plan_came_true),
    FigureSpec("loss_vs_flops.png", "Validation loss against training compute",
               "Each colour is one model size; dashed lines are the fitted law and the red line the compute-optimal "
               "frontier: where a larger model's curve dips below a smaller one's, training the larger model was the "
               "better use of that compute.", loss_vs_flops),
    FigureSpec("accuracy_vs_flops.png", "Next-token accuracy against training compute",
               "Accuracy rises with compute and size as loss falls; read it as the same story as the loss curves in a "
               "more familiar unit.", accuracy_vs_flops),
    FigureSpec("loss_vs_wall.png", "Validation loss against wall-clock time",
               "The same curves on this machine's clock: a model that wins per FLOP can still lose per second if "
               "small shapes use the hardware poorly.", loss_vs_wall),
    FigureSpec("loss_vs_sparsity.png", "Loss against sparsity, per pruning method",
               "Flatter lines mean a method removes weights more cheaply; hollow squares on dotted lines add 8-bit "
               "quantization, and larger models (yellow) should tolerate more sparsity than small ones (purple). "
               "Thin dashed lines are the compression model tlc fit chose for the method (named over each panel), "
               "drawn at each model's size and tokens: where they leave the measured points, the planner's "
               "predictions for pruning there are off by as much.",
               loss_vs_sparsity),
    FigureSpec("equal_inference_cost.png", "Loss at equal inference cost",
               "Points below the black line of dense models are compressed large models that beat every small model "
               "of the same size: that is where 'train large, then compress' pays on this data.", equal_inference_cost),
    FigureSpec("pareto.png", "Planner: predicted loss against inference cost",
               "The front is the best predicted loss reachable at each inference cost within the training budget; the "
               "star is the recommendation and the diamond the best uncompressed model under the same budgets.",
               plan_pareto),
    FigureSpec("frequency_buckets.png", "Loss by token frequency, before and after compression",
               "Compression usually costs rare tokens (left) more than frequent ones (right); a gap that widens to the "
               "left means the average loss hides damage to the long tail.", frequency_buckets),
    FigureSpec("when_to_prune.png", "When to prune",
               "Final validation loss minus the dense model's, at equal training FLOPs, per shape, when the same "
               "sparsity is reached at initialization (blue dotted; grey: random and layer-wise shuffled controls), by "
               "gradual magnitude pruning during training (green), or after training by compress's gradual method, "
               "whose fine-tune is taken out of the dense run's tokens (red). Below zero, the sparse model beat the "
               "dense one. Sparse runs' FLOPs are counted dense: they run on dense kernels.",
               when_to_prune),
    FigureSpec("mask_overlap.png", "Mask overlap: do the methods keep the same weights?",
               "The Jaccard index of the weights two methods keep (intersection over union, over all prunable layers, "
               "averaged over seeds). The cyan mark on the colour bar is two independent random masks' overlap, "
               "density/(2 − density): a pair near it agrees no more than chance. 'after: magnitude' is the one-shot "
               "magnitude mask of the dense model's final weights; 'lottery: imp-k…' are the tickets of iterative "
               "magnitude pruning rewound to that percentage of the run (k0: initialization). Per-layer indices and "
               "the layer-wise reference (random positions at the same per-layer densities) are in when_to_prune.json.",
               mask_overlap),
]
