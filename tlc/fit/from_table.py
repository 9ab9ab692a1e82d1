"""Fit a run table (``tlc fit TABLE`` or ``--published NAME``) into the same fit.json a sweep gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import scaling
from scaling.sparse_law import fit_sparse_law
from tlc.errors import UserError
from tlc.fit.observations import SIZES, design_message
from tlc.fit.published import PUBLISHED, published_path
from tlc.fit.table import read_table


def fit_table(path: Path | None = None, published: str | None = None, bootstrap: int = 200, seed: int = 0,
              size: str | None = None) -> dict:
    """fit.json's content for a table of finished runs, or a shipped set by name (nothing is written).

    Dense rows fit the L(N, D) laws as a sweep's finished points do (one bootstrap unit per run);
    rows trained sparse, with the dense ones, fit Frantar et al.'s sparse law (fit["sparse_law"]).
    ``size`` defaults to the shipped set's own, else "total".
    """
    if bootstrap < 0:
        raise UserError(f"--bootstrap: must be >= 0 resamples, got {bootstrap}")
    if published is not None:
        path, size = published_path(published), size or PUBLISHED[published].size
    size = size or "total"
    if size not in SIZES:
        raise UserError(f"--size: {size!r} is not a parameter count; use one of {', '.join(SIZES)}")
    if Path(path).is_dir():  # a folder of TensorBoard event files (tlc.fit.tensorboard)
        from tlc.fit.table import RunTable, _observations
        from tlc.fit.tensorboard import read_event_rows

        rows = read_event_rows(Path(path), size)
        table = RunTable(_observations(Path(path), rows), (), tuple(rows), (), None)
    else:
        table = read_table(Path(path), size)
    observations = table.observations
    problems = observations.identification_problems(final_only=True)
    if len(observations.runs) < 2:
        raise UserError(f"TABLE {path}: {len(observations.runs)} dense run(s); a scaling law needs runs of at least "
                        "3 sizes")
    fit = scaling.fit_sweep_observations(observations, bootstrap=bootstrap, seed=seed, final_only=True)
    fit["size"] = {"definition": size, "note": f"N in every law counts {SIZES[size]}"}
    fit["design"] = design_message(fit, observations) if not problems else "; ".join(problems)
    fit["skipped_runs"] = list(table.skipped)
    fit["source"] = {"kind": "published" if published else "table", "path": str(path), "name": published,
                     "dataset": table.dataset,
                     **({"citation": PUBLISHED[published].source, "licence": PUBLISHED[published].licence}
                        if published else {})}
    rows = table.dense + table.sparse
    fit["points_table"] = {"params": [r.params for r in rows], "tokens": [r.tokens for r in rows],
                           "flops": [r.flops for r in rows], "loss": [r.loss for r in rows],
                           "sparsity": [r.sparsity for r in rows], "run_id": [r.run_id for r in rows]}
    if table.sparse:
        sparsity = np.array([r.sparsity for r in rows])
        size_n = np.array([r.params for r in rows])
        fit["sparse_law"] = scaling.sweep_fit.json_clean(fit_sparse_law(
            sparsity, size_n * (1 - sparsity), [r.tokens for r in rows], [r.loss for r in rows], size_n,
            bootstrap=bootstrap, seed=seed))
    return fit
