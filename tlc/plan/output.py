"""What `tlc plan` writes: plan.json's content and the terminal table.

plan.json (format "tlc.plan/2"):

    format, throughput (tlc.plan.training_cost) or null, data {unique_tokens, max_epochs, r_star}
    or null, sweep {runs_dir, name, fit_sha256} or null (a published law), corpus (tlc.corpus: fit.json's
    corpus record checked against the source now; null for a published law or runs without fingerprints), lr_rule (see
    tlc.plan.recipe) or null, law {source, description, form, parameters, status, why,
    copying_under_way (fit.json's loss_split flag, or null), shapes, flops}, budget {train_flops,
    inference_tokens, max_params, max_bytes, max_latency_ms, device, latency_batch},
    cost_model {...}, search {seed, tpe_trials, pareto_trials, max_sparsity, fixed_sparsity,
    categories, storage, studies {tpe, nsga2}}, recommendation PLAN, train_small PLAN or null,
    gain {loss, relative, low, high} or null, compute_optimal PLAN or null (the best dense model
    with no inference budget), pareto_cost ("nonzeros", "bytes" or "latency_ms": the key of
    PLAN.inference on the front's axis), pareto_front [PLAN, ...] by increasing cost,
    measured_ranges {N, tokens, sparsity {method: [low, high]}, note, aspect [low, high] width/depth,
    depth [low, high]}, warnings [str]

    PLAN = {width, depth, heads (null for a continuous N), non_embedding_params,
            embedding_params, params_total, tokens, effective_tokens (the law's D, repeats
            discounted), epochs (null without a corpus size), recovery_tokens, train_flops
            (training and recovery fine-tune), train_seconds (predicted, null without a
            throughput model), inference_flops,
            compression {method, sparsity, int8, timing (WHEN: dense, train dense then compress, train
            sparse from the start, prune while training); for a weight-only quantizer also bits,
            group_size (inputs per scale, 0: one per row), calibration {split, sequences, tokens} (gptq;
            null for rtn), added_loss (its predicted nats per token over the dense model) and latency
            (how its latency was measured)}, loss {mean, low, high},
            inference {nonzeros, bytes, latency_ms}, inference_cost (= inference[pareto_cost]),
            recipe {shape, train (train.prune set when pruning at init or during training), tokens
            (seen by the finished model; a WSD recipe's train.tokens is its trunk's), timing (none,
            after, init or during), lr_rule, warmup_rule (fraction, tokens or reference_run: how
            train.warmup_frac was set, tlc.plan.recipe), data, world_size, seed, compression {method, sparsity,
            block, recovery_steps, int8, and bits, group_size, calibration for gptq/rtn}} when the law comes
            from a sweep (tlc.plan.recipe),
            dense_loss_split {repeat, novel} or null: the trained model's loss before compression on
            targets seen earlier in their window and on the rest, from fit.json's loss_split
            (recommendation, train_small and compute_optimal only)}

Losses are nats per token; low/high are the bootstrap interval (null for laws without draws);
the gain is train_small's mean loss minus the recommendation's (positive: compressing wins), with
low/high its bootstrap interval paired draw by draw (null without draws).
"""

from __future__ import annotations

import math

from scaling.compression_fit import timing_of
from tlc.plan.planfile import FORMAT
from tlc.plan.space import Point, heads_for_width
from tlc.units import format_bytes, format_count


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# When a plan prunes, in words (plan.json compression.timing; the training compute is the same for all three:
# sparse training runs on dense kernels and is counted dense, an after-training fine-tune is charged to the budget).
WHEN = {"none": "dense", "after": "train dense, then compress", "init": "train sparse from the start",
        "during": "prune while training"}


def plan_json(point: Point, interval: tuple[float, float, float], inference_tokens: float, cost_key: str) -> dict:
    """One PLAN entry of plan.json (module docstring)."""
    mean, low, high = interval
    heads = None if point.width is None else heads_for_width(point.width)
    inference = {
        "nonzeros": point.costs["params"],
        "bytes": point.costs["bytes"],
        "latency_ms": _finite(point.costs["latency_ms"]),
    }
    return {
        "width": point.width,
        "depth": point.depth,
        "heads": heads,
        "non_embedding_params": point.N,
        "embedding_params": point.embedding,
        "params_total": point.N + point.embedding,
        "tokens": point.tokens,
        "effective_tokens": point.effective_tokens,
        "epochs": point.epochs,
        "recovery_tokens": point.recovery_tokens,
        "train_flops": (point.tokens + point.recovery_tokens) * point.train_flops_per_token,
        "train_seconds": point.train_seconds,
        "inference_flops": inference_tokens * point.inference_flops_per_token,
        "compression": {"method": point.category.method, "sparsity": point.sparsity, "int8": point.category.int8,
                        "timing": WHEN[timing_of(point.category.method) if point.sparsity > 0 else "none"]},
        "loss": {"mean": _finite(mean), "low": _finite(low), "high": _finite(high)},
        "inference": inference,
        "inference_cost": inference[cost_key],
    }


def _compression(entry: dict) -> str:
    c = entry["compression"]
    if c.get("bits"):  # a weight-only quantizer: "gptq 4-bit g32" (g0: one scale per row)
        return f"{c['method']} {c['bits']}-bit g{c['group_size']}"
    text = "dense" if c["method"] == "none" else f"{c['method']} {c['sparsity']:.0%}"
    return text + (" +int8" if c["int8"] else "")


def _loss(entry: dict) -> str:
    loss = entry["loss"]
    if loss["low"] is None:
        return f"{loss['mean']:.4f}"
    return f"{loss['mean']:.4f} [{loss['low']:.4f}, {loss['high']:.4f}]"


def _row(label: str, entry: dict) -> str:
    shape = "-" if entry["width"] is None else f"{entry['width']}x{entry['depth']}"
    latency = entry["inference"]["latency_ms"]
    return (f"{label:<16}{shape:>10}{format_count(entry['non_embedding_params']):>9}{format_count(entry['tokens']):>9}"
            f"  {_compression(entry):<24}{_loss(entry):<28}{format_count(entry['inference']['nonzeros']):>9}"
            f"{format_bytes(entry['inference']['bytes']):>11}{'-' if latency is None else f'{latency:.3g} ms/tok':>11}")


def _budget_line(plan: dict) -> str:
    b = plan["budget"]
    parts = [f"{b['train_flops']:.3g} training FLOPs" if b["train_flops"] is not None else
             f"{b['train_seconds']:g} s of training"]
    if plan.get("throughput"):
        parts.append(f"throughput fitted to {plan['throughput']['n_runs']} runs "
                     f"(leave-one-out error {plan['throughput']['loo_relative_error']:.0%})")
    if b["inference_tokens"]:
        parts.append(f"{format_count(b['inference_tokens'])} inference tokens")
    if b["max_params"] is not None:
        parts.append(f"<= {format_count(b['max_params'])} non-zero params")
    if b["max_bytes"] is not None:
        parts.append(f"<= {format_bytes(b['max_bytes'])}")
    if b["max_latency_ms"] is not None:
        parts.append(f"<= {b['max_latency_ms']:.3g} ms per token at batch {b['latency_batch']} on {b['device']}")
    return ", ".join(parts)


def extrapolation_line(reach: dict | None) -> str:
    """'extrapolation: 4x the largest run's compute, 1.6x its N, 2.5x the longest tokens' ('' without a sweep)."""
    if not reach:
        return ""
    parts = [f"{reach[key]:.3g}x {what}" for key, what in (("compute", "the largest run's training compute"),
                                                           ("N", "the largest measured N"),
                                                           ("tokens", "the longest measured tokens"))
             if reach.get(key) is not None]
    return "extrapolation: the recommendation is " + ", ".join(parts) if parts else ""


def format_table(plan: dict, path: str | None) -> str:
    """The summary `tlc plan` prints: budgets, recommendation, train-small, gain, front size, warnings."""
    lines = [
        f"budget: {_budget_line(plan)}",
        f"law: {plan['law']['description']}" + (f"; chosen: {plan['law']['why']}" if plan['law'].get('why') else ""),
        f"{'':<16}{'shape':>10}{'N':>9}{'tokens':>9}  {'compression':<24}{'loss [interval]':<28}"
        f"{'non-zeros':>9}{'bytes':>11}{'ms/token':>11}",
        _row("recommended", plan["recommendation"]),
    ]
    timing = plan["recommendation"]["compression"].get("timing")
    if timing in (WHEN["init"], WHEN["during"]):
        lines.append(f"{'':<16}when to prune: {timing} (train.prune in the recipe; counted as dense training FLOPs)")
    if plan["train_small"]:
        lines.append(_row("train small", plan["train_small"]))
    if plan["compute_optimal"]:
        lines.append(_row("compute-optimal", plan["compute_optimal"]))
    gain = plan["gain"]
    if gain is None:
        lines.append("train small: no uncompressed model meets the inference budget")
    elif gain["loss"] > 1e-9:
        interval = "" if gain["low"] is None else f" [{gain['low']:.4f}, {gain['high']:.4f}]"
        lines.append(f"gain: train large then compress predicts {gain['loss']:.4f}{interval} nats/token lower loss "
                     f"than training small ({gain['relative']:.2%})")
    else:
        lines.append("gain: none; the best plan is the uncompressed model")
    if line := extrapolation_line(plan.get("extrapolation")):
        lines.append(line)
    lines.append(f"Pareto front (loss against {plan['pareto_cost']}): {len(plan['pareto_front'])} points")
    lines += [f"warning: {w}" for w in plan["warnings"]]
    lines.append(f"-> {path}" if path else "(plan.json not written: give --runs or --out)")
    return "\n".join(lines)
