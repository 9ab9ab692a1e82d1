"""Counts measured by the reliability tests, merged into ``test-artifacts/reliability.json`` for RELIABILITY.md."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / "test-artifacts" / "reliability.json"


def record(test: str, **counts) -> None:
    """Store ``counts`` under ``test``, replacing that test's previous counts (other tests' are kept)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several pytest processes may write at once
        try:
            figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        except ValueError:
            figures = {}
        figures[test] = counts
        tmp = FIGURES.with_suffix(".tmp")
        tmp.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        tmp.replace(FIGURES)
