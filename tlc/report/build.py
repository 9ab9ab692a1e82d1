"""`tlc report RUNS_DIR`: static HTML and Markdown with the sweep's figures and tables.

The report folder is written whole into a temporary folder and then moved into place, so an
interrupted report never leaves half a page. Every string that came from a run directory is
HTML-escaped; the page loads no script, font or style from anywhere.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from tlc.io import atomic_replace_dir
from tlc.report.data import SweepData, collect
from tlc.report.samples import CSS as SAMPLES_CSS
from tlc.report.samples import samples_html, samples_markdown

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 2em 0; } figcaption { font-size: 0.92em; color: #444; max-width: 760px; }
img { max-width: 100%; border: 1px solid #eee; }
.missing { background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.5em 1em; }
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def runs_table(data: SweepData) -> tuple[list[str], list[list[str]]]:
    head = ["run", "N (non-embedding)", "tokens", "FLOPs", "val loss", "bits/byte", "accuracy", "wall s"]
    rows = []
    for r in data.runs:
        f = r.final
        rows.append([r.run_id, _fmt(r.non_embedding), _fmt(float(f["tokens"]), 3), _fmt(float(f["flops"]), 3),
                     _fmt(f["val_loss"]), _fmt(f["val_bpb"]), _fmt(f["val_acc"], 3), _fmt(f["wall_s"], 3)])
    return head, rows


def fit_table(data: SweepData) -> tuple[list[str], list[list[str]]]:
    head = ["law", "parameter", "value", "interval", "status", "held-out error", "why"]
    rows = []
    for name, law in ((data.fit or {}).get("laws") or {}).items():
        heldout = law.get("heldout")
        err = heldout.get("relative_error") if isinstance(heldout, dict) else None
        reason = str(law.get("reason") or "") if law.get("status") != "converged" else ""
        if not law.get("parameters"):  # unidentified before fitting: too few distinct N, D or points
            rows.append([name, "–", "–", "–", law.get("status", ""), "", reason])
        for i, (param, v) in enumerate((law.get("parameters") or {}).items()):
            interval = f"[{_fmt(v.get('low'))}, {_fmt(v.get('high'))}]"
            rows.append([name if i == 0 else "", param, _fmt(v.get("value")), interval,
                         law.get("status", "") if i == 0 else "", _fmt(err, 3) if i == 0 and err is not None else "",
                         reason if i == 0 else ""])
    return head, rows


def plan_table(data: SweepData) -> tuple[list[str], list[list[str]]]:
    head = ["", "value"]
    plan = data.plan or {}
    rows = []

    def flatten(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else k, v)
        elif not isinstance(value, list):
            rows.append([prefix, _fmt(value)])

    for key in ("budget", "recommendation", "train_small", "gain", "warnings"):
        if key in plan:
            value = plan[key]
            if isinstance(value, list):
                rows.extend([[key, str(v)] for v in value])
            else:
                flatten(key, value)
    return head, rows


def _html_table(head, rows) -> str:
    esc = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


def _md_table(head, rows) -> str:
    def cell(c):
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def render_figures(data: SweepData, folder: Path) -> list[tuple]:
    """Draw every figure the data supports into ``folder``; return (spec, drawn) pairs."""
    import matplotlib.pyplot as plt

    from tlc.report.figures import FIGURES

    drawn = []
    for spec in FIGURES:
        fig = spec.draw(data)
        if fig is not None:
            fig.suptitle(spec.title, fontsize=11)
            fig.savefig(folder / spec.filename, dpi=110, bbox_inches="tight")
            plt.close(fig)
        drawn.append((spec, fig is not None))
    return drawn


def _answer(data: SweepData) -> list[str]:
    """The opening sentences: the plan, its predicted gain, the law's status, and its validation."""
    from tlc.report.summary import plan_sentences, validation_sentences

    from tlc.plan.output import FORMAT

    if not data.plan:
        return []
    if data.plan.get("format") != FORMAT:
        return [f"plan.json has format {data.plan.get('format')!r}, not {FORMAT!r} as this tlc plan writes it: "
                "run tlc plan again for the answer."]
    try:
        return plan_sentences(data.plan) + validation_sentences(data.plan, data.validations, data.plan_sha256)
    except (KeyError, TypeError, ValueError):  # a hand-edited plan.json: the tables below still show it
        return ["plan.json lacks fields tlc plan writes: run tlc plan again for the answer."]


OBJECTIVE_LINES = {
    "clm": "causal language modelling (decoders): loss and accuracy are of the next token.",
    "mlm": "masked language modelling (RoBERTa-style encoders, 15% of tokens masked 80/10/10): loss and accuracy "
           "are of the masked tokens, not comparable with a causal sweep's.",
    "mixed": "causal and masked-LM runs together: their losses are different quantities; tlc fit refuses the mix.",
}


def write_report(sweep_dir: Path) -> Path:
    """Write ``sweep_dir/report/`` (index.html, report.md, PNG figures); return the index path."""
    data = collect(sweep_dir)
    tmp = Path(sweep_dir) / ".report.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    figures = render_figures(data, tmp)
    esc = html.escape
    tables = [("Runs", runs_table(data))]
    if data.fit:
        tables.append(("Scaling-law fits (bootstrap intervals)", fit_table(data)))
    if data.plan:
        tables.append(("Plan", plan_table(data)))

    title = f"tlc report: {data.name}"
    page = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
            f"<style>{CSS}{SAMPLES_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
            f"<p>{len(data.runs)} runs from {esc(str(data.sweep_dir))}.</p>"]
    md = [f"# {title}", "", f"{len(data.runs)} runs from `{data.sweep_dir}`.", ""]
    objective = OBJECTIVE_LINES[data.objective]
    page.append(f"<p class='objective'><b>Objective:</b> {esc(objective)}</p>")
    md += [f"**Objective:** {objective}", ""]
    answer = _answer(data)
    if answer:
        page.append("<section id='answer'><h2>The answer</h2>" + "".join(f"<p>{esc(line)}</p>" for line in answer)
                    + "</section>")
        md += ["## The answer", ""] + [f"{line}\n" for line in answer]
    if data.missing:
        page.append("<div class='missing'><b>Not in this report yet:</b><ul>"
                    + "".join(f"<li>{esc(m)}</li>" for m in data.missing) + "</ul></div>")
        md += ["**Not in this report yet:**", ""] + [f"- {m}" for m in data.missing] + [""]
    for spec, ok in figures:
        if ok:
            page.append(f"<figure><img src='{esc(spec.filename)}' alt='{esc(spec.title)}'>"
                        f"<figcaption><b>{esc(spec.title)}.</b> {esc(spec.caption)}</figcaption></figure>")
            md += [f"## {spec.title}", "", f"![{spec.title}]({spec.filename})", "", spec.caption, ""]
    for heading, (head, rows) in tables:
        page += [f"<h2>{esc(heading)}</h2>", _html_table(head, rows)]
        md += [f"## {heading}", "", _md_table(head, rows), ""]
        design = (data.fit or {}).get("design") if head and head[0] == "law" else None
        if design:  # what the sweep lacks, when the law is not identified (tlc fit prints the same line)
            page.append(f"<p class='missing'><b>Design:</b> {esc(str(design))}</p>")
            md += [f"**Design:** {design}", ""]
    page.append(samples_html(data))
    md += samples_markdown(data)
    page.append("</body></html>")
    (tmp / "index.html").write_text("\n".join(page), encoding="utf-8")
    (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
    atomic_replace_dir(tmp, Path(sweep_dir) / "report")
    return Path(sweep_dir) / "report" / "index.html"
