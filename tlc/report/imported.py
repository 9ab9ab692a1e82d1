"""`tlc report DIR` for a fit without runs (a run table or a published set): points, fitted curves, held-out targets.

A table's fit.json carries its points (``points_table``) and, per law, the compute hold-out
(`scaling.selection.compute_holdout`): the top decade of compute predicted by a refit on the rest.
The figure draws loss against training compute, one colour per model size, the preferred law's curve
over each size's token range, and the held-out points with their predictions joined to them.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import scaling  # noqa: E402
from tlc.errors import UserError  # noqa: E402
from tlc.io import atomic_replace_dir  # noqa: E402

CAPTION = ("Loss against training compute (6ND where the table gives no FLOPs), one colour per model size; lines: "
           "the preferred law at each size over its measured tokens; open squares joined to crosses: the top decade of "
           "compute held out, the law refitted on the rest predicted the cross. The held-out errors set how far past "
           "the fit set the prediction intervals widen.")


def is_imported(folder: Path) -> bool:
    """Whether ``folder`` holds a fit.json made from a table or published set (and no runs to report)."""
    try:
        fit = json.loads((Path(folder) / "fit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: malformed JSON, or a path with a NUL byte
        return False
    return isinstance(fit, dict) and (fit.get("source") or {}).get("kind") in ("table", "published")


def draw(fit: dict):
    """The figure described in CAPTION."""
    points = fit["points_table"]
    fitted = scaling.load_fit(fit)
    law = fitted.preferred_law or next(iter(fitted.laws))
    n, d, c = (np.asarray(points[k], dtype=float) for k in ("params", "tokens", "flops"))
    loss, dense = np.asarray(points["loss"], dtype=float), np.asarray(points["sparsity"], dtype=float) == 0
    sizes = np.unique(n[dense])
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for size, color in zip(sizes, colors):
        mine = dense & (n == size)
        ax.scatter(c[mine], loss[mine], s=12, color=color)
        grid = np.geomspace(d[mine].min(), d[mine].max(), 30)
        ax.plot(fitted.flops.k * size**fitted.flops.gamma * grid, [fitted.predict_loss(size, g, law=law)[0]
                                                                   for g in grid], color=color, lw=1)
    held = (fit["laws"].get(law) or {}).get("compute_holdout")
    if held and held.get("predicted"):
        hc = fitted.flops.k * np.asarray(held["N"]) ** fitted.flops.gamma * np.asarray(held["D"])
        ax.scatter(hc, held["observed"], marker="s", facecolors="none", edgecolors="k", s=28, label="held out: measured")
        ax.scatter(hc, held["predicted"], marker="x", color="crimson", s=22, label="held out: predicted")
        for x, a, b in zip(hc, held["observed"], held["predicted"]):
            ax.plot([x, x], [a, b], color="crimson", lw=0.6)
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{(fit.get('source') or {}).get('name') or fit['source']['path']}: {law} law")
    fig.tight_layout()
    return fig


def write_imported_report(folder: Path) -> Path:
    """Write ``folder/report/`` (index.html, report.md, fit.png) for a table's fit.json; return the index."""
    from tlc.report.build import CSS, _html_table, _md_table, fit_table

    folder = Path(folder)
    fit = json.loads((folder / "fit.json").read_text(encoding="utf-8"))
    if "points_table" not in fit:
        raise UserError(f"RUNS_DIR: {folder}/fit.json has no points_table; refit the table with this tlc fit")
    tmp = folder / ".report.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    figure = draw(fit)
    figure.savefig(tmp / "fit.png", dpi=110)
    plt.close(figure)
    source = fit["source"]
    title = f"tlc report: {source.get('name') or source['path']}"
    head, rows = fit_table(SimpleNamespace(fit=fit))
    lines = [f"{fit['n_runs']} runs from {source['path']}" + (f" ({source['citation']}; licence {source['licence']})"
                                                              if source.get("citation") else ""),
             f"preferred law: {fit['preferred_law']['name']} ({fit['preferred_law']['reason']})"]
    esc = html.escape
    page = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>", *(f"<p>{esc(x)}</p>" for x in lines),
            f"<figure><img src='fit.png' alt='fit'><figcaption>{esc(CAPTION)}</figcaption></figure>",
            "<h2>Scaling-law fits (bootstrap intervals)</h2>", _html_table(head, rows), "</body></html>"]
    md = [f"# {title}", "", *(f"{x}\n" for x in lines), "![fit](fit.png)", "", CAPTION, "",
          "## Scaling-law fits (bootstrap intervals)", "", _md_table(head, rows), ""]
    (tmp / "index.html").write_text("\n".join(page), encoding="utf-8")
    (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
    atomic_replace_dir(tmp, folder / "report")
    return folder / "report" / "index.html"
