"""Loss added by each compression method against dense, per model, from a compressed sweep's compress.jsonl.

    python bench/compression_methods.py runs/tiny

Prints one Markdown table of added loss (nats) at 50% unstructured, 2:4, 8 and 4 bits per method and
model, one of bytes and batch-1 latency as ratios to the dense row of the same run (measured in the same
`tlc compress` process), and the added loss per token-frequency bucket (rarest first) of the largest model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [  # (header, method, target sparsity, bits)
    ("magnitude 50%", "magnitude", 0.5, 32), ("wanda 50%", "wanda", 0.5, 32), ("sparsegpt 50%", "sparsegpt", 0.5, 32),
    ("magnitude 2:4", "2:4", 0.5, 32), ("wanda 2:4", "wanda-2:4", 0.5, 32), ("sparsegpt 2:4", "sparsegpt-2:4", 0.5, 32),
    ("rtn w8", "rtn", 0.0, 8), ("gptq w8", "gptq", 0.0, 8), ("rtn w4", "rtn", 0.0, 4), ("gptq w4", "gptq", 0.0, 4),
]


def rows_by_run(sweep: Path) -> dict[str, dict]:
    """{run_id: {(method, target sparsity, bits): row}} for every run with a compress.jsonl, by model size."""
    runs = {}
    for path in sorted(sweep.glob("*/compress.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs[path.parent.name] = {(r["method"], r["target_sparsity"], r["bits"]): r for r in rows}
    return dict(sorted(runs.items(), key=lambda kv: kv[1][("none", 0.0, 32)]["nonzeros"]))


def main(sweep: Path) -> None:
    runs = rows_by_run(sweep)
    head = "| model | dense loss | " + " | ".join(c[0] for c in COLUMNS) + " |"
    print(head + "\n|" + "---|" * (len(COLUMNS) + 2))
    for run_id, rows in runs.items():
        dense = rows[("none", 0.0, 32)]["val_loss"]
        cells = [f"{rows[k[1:]]['val_loss'] - dense:+.4f}" if k[1:] in rows else "" for k in COLUMNS]
        print(f"| {run_id} | {dense:.4f} | " + " | ".join(cells) + " |")
    print("\nbytes / dense bytes, and batch-1 latency / dense latency (same process):\n")
    print(head.replace("dense loss", "dense bytes") + "\n|" + "---|" * (len(COLUMNS) + 2))
    for run_id, rows in runs.items():
        dense = rows[("none", 0.0, 32)]
        cells = [f"{rows[k[1:]]['bytes'] / dense['bytes']:.3f} / {rows[k[1:]]['latency_ms_b1'] / dense['latency_ms_b1']:.2f}"
                 if k[1:] in rows else "" for k in COLUMNS]
        print(f"| {run_id} | {dense['bytes']} | " + " | ".join(cells) + " |")
    run_id, rows = list(runs.items())[-1]
    dense = rows[("none", 0.0, 32)]["loss_by_freq_bucket"]
    print(f"\nadded loss per token-frequency bucket (rarest first), {run_id}:\n")
    print("| variant | " + " | ".join(f"bucket {i + 1}" for i in range(len(dense))) + " |\n|" + "---|" * (len(dense) + 1))
    for header, *key in COLUMNS:
        if tuple(key) in rows:
            buckets = rows[tuple(key)]["loss_by_freq_bucket"]
            print(f"| {header} | " + " | ".join(f"{b - d:+.4f}" for b, d in zip(buckets, dense)) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny"))
