"""The report's side-by-side text: a prompt completed by the dense model and by a compressed variant.

Read from each run's ``samples.jsonl`` (written by ``tlc generate``); samples pair up when they
share prompt, temperature, seed and token count. The variant nearest plan.json's recommended
compression comes first and is marked. Every string from a run directory is HTML-escaped; in
Markdown, completions sit in fenced blocks longer than any backtick run they contain. A masked-LM
sample's completion is the whole prompt with its ``<mask>`` tokens filled, shown without the prompt
before it.
"""

from __future__ import annotations

import html
import re

from tlc.export.source import recommended_variant
from tlc.io import read_jsonl
from tlc.report.data import SweepData, variant_label

HEADING = "Samples: dense beside compressed"
CSS = ".samples td { text-align: left; vertical-align: top; } .samples pre { white-space: pre-wrap; margin: 0; }"


def sample_pairs(data: SweepData) -> list[dict]:
    """[{run_id, prompt, settings, lead, dense, variant, label, recommended}], recommended variants first; ``lead``
    is the text shown before each completion (the prompt it continues, or nothing for a masked-LM fill)."""
    pairs = []
    for run in data.runs:
        samples = read_jsonl(data.sweep_dir / run.run_id / "samples.jsonl")
        if not samples:
            continue
        recommended = recommended_variant(data.plan, {str(r.get("variant")): r for r in run.compress})
        groups: dict[tuple, dict[str, dict]] = {}
        for s in samples:  # the latest sample of a variant with the same settings wins
            key = (s.get("prompt"), s.get("temperature"), s.get("seed"), s.get("tokens"))
            groups.setdefault(key, {})[str(s.get("variant"))] = s
        for (prompt, temperature, seed, tokens), by_variant in groups.items():
            dense = by_variant.get("dense")
            if dense is None:
                continue
            others = sorted((v for v in by_variant if v != "dense"), key=lambda v: (v != recommended, v))
            for name in others:
                fill = dense.get("objective") == "mlm"
                pairs.append({"run_id": run.run_id, "prompt": str(prompt), "lead": "" if fill else str(prompt),
                              "settings": f"temperature {temperature}, seed {seed}, {tokens} "
                                          + ("masks filled" if fill else "tokens"),
                              "dense": str(dense.get("completion", "")), "variant": name,
                              "label": variant_label(by_variant[name]),
                              "completion": str(by_variant[name].get("completion", "")),
                              "recommended": name == recommended})
    return pairs


def _how_to(data: SweepData) -> str:
    run = data.runs[-1].run_id if data.runs else "RUN"
    return (f"tlc generate {data.sweep_dir / run} --prompt TEXT, then the same with --variant recommended "
            "(or any variant name), then tlc report again")


def samples_html(data: SweepData) -> str:
    """The section as HTML (every string escaped)."""
    esc = html.escape
    pairs = sample_pairs(data)
    out = [f"<h2>{esc(HEADING)}</h2>"]
    if not pairs:
        return "\n".join(out + [f"<p class='missing'>No samples yet: {esc(_how_to(data))}.</p>"])
    out.append("<table class='samples'><tr><th>run, prompt</th><th>dense</th><th>compressed</th></tr>")
    for p in pairs:
        mark = " (recommended)" if p["recommended"] else ""
        out.append(f"<tr><td>{esc(p['run_id'])}<br><pre>{esc(p['prompt'])}</pre><small>{esc(p['settings'])}</small></td>"
                   f"<td><pre>{esc(p['lead'])}<b>{esc(p['dense'])}</b></pre></td>"
                   f"<td><i>{esc(p['variant'])}: {esc(p['label'])}{mark}</i>"
                   f"<pre>{esc(p['lead'])}<b>{esc(p['completion'])}</b></pre></td></tr>")
    return "\n".join(out + ["</table>"])


def _fenced(text: str) -> list[str]:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def samples_markdown(data: SweepData) -> list[str]:
    """The section as Markdown lines."""
    pairs = sample_pairs(data)
    lines = [f"## {HEADING}", ""]
    if not pairs:
        return lines + [f"No samples yet: {_how_to(data)}.", ""]
    for p in pairs:
        mark = " (recommended)" if p["recommended"] else ""
        lines += [f"**{p['run_id']}**, {p['settings']}. Dense:", "", *_fenced(p["lead"] + p["dense"]), "",
                  f"{p['variant']} ({p['label']}){mark}:", "", *_fenced(p["lead"] + p["completion"]), ""]
    return lines
