"""The report's opening: the answer in sentences computed from plan.json and validation.json.

    "Within 272 kB and 7.8e+12 training FLOPs, w128-d2 pruned by magnitude to 90% in int8
    reaches a predicted 4.37 [4.30, 4.45]; the best dense model that fits, w32-d2, reaches 5.06."

Then the predicted gain with its interval, the law and its status, and, where `tlc validate`
has carried the plan out, what was measured and whether the plan came true.
"""

from __future__ import annotations

from tlc.units import format_bytes, format_count
from tlc.validate.validation import split_summary


def _budget(plan: dict) -> str:
    b = plan.get("budget") or {}
    limits = []
    if b.get("max_bytes") is not None:
        limits.append(format_bytes(b["max_bytes"]))
    if b.get("max_params") is not None:
        limits.append(f"{format_count(b['max_params'])} non-zero parameters")
    if b.get("max_latency_ms") is not None:
        limits.append(f"{b['max_latency_ms']:.3g} ms per token at batch {b.get('latency_batch', 1)}")
    if b.get("train_seconds") is not None:
        compute = f"{b['train_seconds']:g} s of training"
    else:
        compute = f"{b.get('train_flops', 0):.3g} training FLOPs"
    return (" and ".join(limits) + " and " if limits else "") + compute


def describe_point(point: dict) -> str:
    """``w128-d2 pruned by magnitude to 90% in int8`` for a plan point."""
    shape = f"w{point['width']}-d{point['depth']}" if point.get("width") else f"N={format_count(point['non_embedding_params'])}"
    c = point.get("compression") or {}
    text = shape
    if c.get("method", "none") != "none" and c.get("sparsity", 0) > 0:
        text += f" pruned by {c['method']} to {c['sparsity']:.0%}"
    if c.get("bits"):  # a weight-only quantizer (gptq, rtn)
        text += f" quantized by {c['method']} to {c['bits']} bits (groups of {c.get('group_size') or 'a row'})"
    if c.get("int8"):
        text += " in int8"
    if point.get("epochs") and point["epochs"] > 1:
        text += f" ({point['epochs']:.1f} epochs)"
    return text + f" on {format_count(point['tokens'])} tokens"


def _loss(loss: dict) -> str:
    interval = f" [{loss['low']:.3f}, {loss['high']:.3f}]" if loss.get("low") is not None else ""
    return f"{loss['mean']:.3f}{interval}"


def plan_sentences(plan: dict) -> list[str]:
    """The plan in sentences: recommendation, train-small, gain, law."""
    rec, small, gain, law = plan.get("recommendation"), plan.get("train_small"), plan.get("gain"), plan.get("law") or {}
    if not isinstance(rec, dict):
        return []
    first = (f"Within {_budget(plan)}, {describe_point(rec)} reaches a predicted loss of {_loss(rec['loss'])} "
             "nats/token")
    if isinstance(small, dict):
        first += f"; the best dense model that fits, {describe_point(small)}, reaches {_loss(small['loss'])}."
    else:
        first += "; no dense model fits the inference budget."
    out = [first]
    if gain:
        interval = f" [{gain['low']:+.3f}, {gain['high']:+.3f}]" if gain.get("low") is not None else ""
        verb = "wins" if gain["loss"] > 0 else "does not win"
        out.append(f"Train large, then compress {verb}: predicted gain {gain['loss']:+.3f}{interval} nats/token "
                   f"({gain['relative']:+.1%}).")
    if law.get("form"):
        status = f" ({law['status']})" if law.get("status") else ""
        why = f", chosen as the {law['why']}" if law.get("why") else ""
        out.append(f"Law: {law['form']}{status}{why}.")
    if law.get("copying_under_way"):
        out.append("The sweep's models were still learning to copy from their context where it stopped: where this "
                   "plan reaches past the measured tokens (see its warnings), its losses will likely come out lower "
                   "than predicted.")
    return out


def validation_sentences(plan: dict, validations: list[dict], plan_sha256: str | None) -> list[str]:
    """What `tlc validate` measured for this plan (or that it has not been validated)."""
    current = [v for v in validations if (v.get("plan") or {}).get("sha256") == plan_sha256]
    if not current:
        others = f" ({len(validations)} validation(s) of other plans are in the figure below)" if validations else ""
        return [f"This plan has not been carried out yet: run tlc validate to check it{others}."]
    entry = current[-1]
    out = []
    for name, point in entry.get("points", {}).items():
        m, p, c = point["measured"], point["predicted"], point["checks"]
        inside = {True: "inside", False: "outside", None: "without"}[c.get("loss_inside_interval")]
        where = "the interval"
        if m.get("loss_sem") is not None and c.get("loss_inside_interval") is not None:  # tlc validate's rule
            where += f" widened by the seeds' standard error (±{m['loss_sem']:.3f})"
        out.append(f"Measured {name.replace('_', '-')}: loss {m['loss']:.3f} against a predicted {_loss(p['loss'])} "
                   f"({inside} {where}, error {c['loss_error_relative']:+.1%}), {format_bytes(m['bytes'])} "
                   f"against {format_bytes(p['bytes'])} predicted, {m['train_wall_s']:.0f} s of training.")
        split = split_summary(point)
        if split:
            out.append(f"Its loss by target, trained and before compression: {split}.")
    verdict = (entry.get("verdict") or {}).get("sentence")
    if verdict:
        out.append(f"Verdict: {verdict}.")
    return out
