"""``tlc fit TABLE``: a table of finished runs (CSV or JSON lines) as the observations a sweep yields.

One row is one finished run, or one evaluation of a run when the table has a ``step`` column.
Columns (names as written, case-sensitive):

- ``params`` (N counting every parameter) and/or ``non_embedding_params``: at least the one
  ``--size`` asks for;
- ``tokens`` (D, training tokens) and ``loss`` (validation loss, nats per token): required;
- ``flops`` (training FLOPs; default 6·N·D, as published laws count them), ``sparsity`` (fraction
  of weights that are zero, trained sparse as in Frantar et al. 2023; default 0), ``bits``
  (default 32; rows below 16 bits are not points of the laws and are listed as skipped),
  ``seed``, ``dataset`` (one table, one dataset), ``step``, ``run_id``: optional.

Rows of one run share a ``run_id`` (default: each row its own run). With a ``step`` column a run's
row of largest step is its finished point and the others its learning curve; without one every
row is a finished point (e.g. the ends of cooldown branches). Dense rows become the sweep's runs;
rows trained sparse are kept apart for the sparse law (`sparse_points`). A bad cell is a UserError
naming the file, the row and the column, raised before any fitting.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import scaling
from tlc.errors import UserError
from tlc.fit.observations import _read_json_lines

SIZE_COLUMNS = {"total": "params", "non_embedding": "non_embedding_params"}
NUMERIC = ("params", "non_embedding_params", "tokens", "loss", "flops", "sparsity", "bits", "step", "seed")
LOW_BITS = 16  # rows quantized below this many bits are compressed variants, not points of the laws


@dataclass(frozen=True)
class TableRow:
    """One validated row: where it came from and what it measured."""

    line: int  # 1-based line of the file (the CSV header is line 1)
    run_id: str
    params: float  # N as --size counts it
    tokens: float
    loss: float
    flops: float
    sparsity: float
    bits: float
    step: float | None


@dataclass(frozen=True)
class RunTable:
    """A validated table: dense runs as observations, trained-sparse rows apart, and what was skipped."""

    observations: scaling.SweepObservations
    sparse: tuple[TableRow, ...]  # rows with sparsity > 0 (with the dense rows, the sparse law's points)
    dense: tuple[TableRow, ...]
    skipped: tuple[str, ...]
    dataset: str | None


def _raw_rows(path: Path) -> list[tuple[int, dict]]:
    """(line, row) pairs of a CSV (header on line 1) or JSON-lines file, chosen by suffix."""
    if not path.is_file():
        raise UserError(f"TABLE: {path} is not a file; give a .csv or .jsonl table of finished runs")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"TABLE: cannot read {path} as UTF-8 text ({error})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise UserError(f"{path}: empty; expected a header row naming the columns (params, tokens, loss, ...)")
        rows = []
        for number, row in enumerate(reader, 2):
            if None in row:
                raise UserError(f"{path}:{number}: more cells than the header's {len(reader.fieldnames)} columns")
            rows.append((number, row))
        return rows
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_json_lines(path)
    raise UserError(f"TABLE: {path} has suffix {path.suffix!r}; expected .csv or .jsonl")


def _cell(path: Path, line: int, row: dict, column: str, default: float | None = None,
          positive: bool = True) -> float | None:
    """A finite number from ``row[column]`` (an empty CSV cell counts as absent), else a UserError."""
    value = row.get(column)
    if value is None or value == "":
        if default is None and column in ("tokens", "loss"):
            raise UserError(f"{path}:{line}: column {column}: missing; every row needs params, tokens and loss")
        return default
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"{path}:{line}: column {column}: must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise UserError(f"{path}:{line}: column {column}: must be > 0, got {value!r}")
    return number


def read_table(path: Path, size: str = "total") -> RunTable:
    """Read and validate a run table (see the module docstring); N counts ``size`` parameters."""
    path = Path(path)
    rows = _raw_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows; expected one finished run per row")
    size_column = SIZE_COLUMNS[size]
    columns = set().union(*(r.keys() for _, r in rows))
    if size_column not in columns:
        other = next(s for s, c in SIZE_COLUMNS.items() if c != size_column)
        hint = (f"; the table has {SIZE_COLUMNS[other]}: add --size {other.replace('_', '-')}"
                if SIZE_COLUMNS[other] in columns else "")
        raise UserError(f"{path}: column {size_column}: missing (N as --size {size.replace('_', '-')} counts it)"
                        f"{hint}")
    datasets = sorted({str(r["dataset"]) for _, r in rows if r.get("dataset") not in (None, "")})
    if len(datasets) > 1:
        raise UserError(f"{path}: column dataset: the table mixes {len(datasets)} datasets ({', '.join(datasets)}); "
                        "a law fits one: keep one dataset's rows")
    has_step = "step" in columns
    parsed, skipped = [], []
    for line, row in rows:
        params = _cell(path, line, row, size_column)
        if params is None:
            raise UserError(f"{path}:{line}: column {size_column}: missing")
        tokens, loss = _cell(path, line, row, "tokens"), _cell(path, line, row, "loss")
        flops = _cell(path, line, row, "flops", 6.0 * params * tokens)
        sparsity = _cell(path, line, row, "sparsity", 0.0, positive=False)
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"{path}:{line}: column sparsity: must be in [0, 1), got {row.get('sparsity')!r}")
        bits = _cell(path, line, row, "bits", 32.0)
        step = _cell(path, line, row, "step", None, positive=False) if has_step else None
        if has_step and step is None:
            raise UserError(f"{path}:{line}: column step: missing; a table with a step column needs it on every row")
        seed = row.get("seed")
        run_id = str(row.get("run_id") or "") or (f"row{line}" if seed in (None, "") else f"row{line}-s{seed}")
        parsed.append(TableRow(line, run_id, params, tokens, loss, flops, sparsity, bits, step))
    dense, sparse = [], []
    for row in parsed:
        if row.bits < LOW_BITS:
            skipped.append(f"{path}:{row.line}: {row.bits:g}-bit row: a compressed variant, not a point of the laws")
        elif row.sparsity > 0:
            sparse.append(row)
        else:
            dense.append(row)
    if not dense:
        raise UserError(f"{path}: no dense row (sparsity 0, 16 bits or more); the laws need dense runs")
    return RunTable(observations=_observations(path, dense), sparse=tuple(sparse), dense=tuple(dense),
                    skipped=tuple(skipped), dataset=datasets[0] if datasets else None)


def _observations(path: Path, rows: list[TableRow]) -> scaling.SweepObservations:
    """Group rows into runs by run_id: by step, the last row is the finished point; else every row is."""
    groups: dict[str, list[TableRow]] = {}
    for row in rows:
        groups.setdefault(row.run_id, []).append(row)
    curves = []
    for run_id, members in groups.items():
        if len({r.params for r in members}) > 1:
            lines = ", ".join(str(r.line) for r in members[:3])
            raise UserError(f"{path}: column run_id: run {run_id} has rows of different sizes (lines {lines}); "
                            "a run is one model")
        if members[0].step is not None:
            members = sorted(members, key=lambda r: r.step)
            finished = [members[-1]]
        else:
            members = sorted(members, key=lambda r: r.tokens)
            finished = members
        tokens = np.array([r.tokens for r in members])
        if len(np.unique(tokens)) != len(tokens):
            raise UserError(f"{path}:{members[-1].line}: column tokens: run {run_id} has two rows at "
                            f"{members[-1].tokens:g} tokens; give each run's rows distinct tokens or distinct run_ids")
        curves.append(scaling.RunCurve(
            run_id=run_id, params=members[0].params, tokens=tokens,
            train_flops=np.array([r.flops for r in members]), val_loss=np.array([r.loss for r in members]),
            finished_tokens=np.array([r.tokens for r in finished]),
            finished_flops=np.array([r.flops for r in finished]),
            finished_loss=np.array([r.loss for r in finished])))
    return scaling.SweepObservations(runs=tuple(curves))
