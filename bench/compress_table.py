"""Validation loss lost by each compression method, read from runs that `tlc compress` finished.

Prints a Markdown table (for BENCHMARKS.md): one row per method and bit width, one column pair
per run and sparsity level, each cell the loss added over the run's dense model (nats/token),
plus bytes relative to dense. The ``none`` 8-bit row (int8 alone, sparsity 0) fills the first
column only. Nothing is recomputed here; the figures are compress.jsonl's.

    .venv/bin/python bench/compress_table.py runs/tiny/w64-d2-s0 runs/tiny/w192-d4-s0 [--sparsity 0.5,0.9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlc.io import read_jsonl  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sparsity", default="0.5,0.9")
    args = parser.parse_args()
    levels = [float(s) for s in args.sparsity.split(",")]
    tables = {}
    for run in args.runs:
        rows = read_jsonl(run / "compress.jsonl")
        if not rows:
            print(f"{run}: no compress.jsonl rows; run tlc compress first", file=sys.stderr)
            return 1
        tables[run.name] = {(r["method"], r["target_sparsity"], r["bits"]): r for r in rows}
    methods = []
    for table in tables.values():
        for method, _, bits in table:
            if method != "none" and (method, bits) not in methods:
                methods.append((method, bits))
    header = "| method | bits |" + "".join(f" {run} s={s:g} Δloss (bytes) |" for run in tables for s in levels)
    print(header)
    print("|" + "---|" * (2 + len(tables) * len(levels)))
    for method, bits in [("none", 8)] + sorted(methods, key=lambda m: (m[1] == 8, m[0])):
        cells = []
        for table in tables.values():
            dense = table[("none", 0.0, 32)]
            for i, s in enumerate(levels):
                row = table.get((method, 0.0 if method == "none" else s, bits)) if method != "none" or i == 0 else None
                if row is None:
                    cells.append(" – |")
                    continue
                cells.append(f" {row['val_loss'] - dense['val_loss']:+.3f} ({row['bytes'] / dense['bytes']:.2f}×) |")
        print(f"| {method} | {bits} |" + "".join(cells))
    for run, table in tables.items():
        dense = table[("none", 0.0, 32)]
        print(f"\n{run}: dense val_loss {dense['val_loss']:.4f}, {dense['bytes']} bytes, {dense['nonzeros']} non-zeros")
    return 0


if __name__ == "__main__":
    sys.exit(main())
