"""Which saved variant of a run a command works on: the run's ``compress.jsonl`` names them.

Shared by ``tlc export`` and ``tlc generate``. Every problem is a :class:`~tlc.errors.UserError`
naming the argument and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlc.errors import UserError
from tlc.io import is_complete, read_jsonl

ROWS = "compress.jsonl"  # the same file tlc.compress.pipeline writes (not imported: that loads torch)


@dataclass(frozen=True)
class Variant:
    """One saved variant: its folder and its compress.jsonl row."""

    run_dir: Path
    name: str
    folder: Path
    row: dict


def check_run(run_dir: Path) -> Path:
    """``run_dir`` when it is a trained run, else a UserError naming RUN."""
    run_dir = Path(run_dir)
    if "\x00" in str(run_dir):  # os calls raise ValueError on it
        raise UserError(f"RUN: {str(run_dir)!r} contains a NUL character; give a run folder such as runs/tiny/w64-d2-s0")
    if not run_dir.is_dir():
        raise UserError(f"RUN: {str(run_dir)!r} is not a folder; give one run such as runs/tiny/w64-d2-s0")
    if not is_complete(run_dir):
        raise UserError(f"RUN: {str(run_dir)!r} is not a trained run (it has no model/); "
                        "give one run such as runs/tiny/w64-d2-s0, or train it first with tlc train")
    return run_dir


def saved_variants(run_dir: Path) -> dict[str, dict]:
    """compress.jsonl rows by variant name, for the variants whose folder is complete."""
    from tlc.compress.store import is_saved

    return {str(r.get("variant")): r for r in read_jsonl(Path(run_dir) / ROWS)
            if is_saved(Path(run_dir) / "compressed" / str(r.get("variant")))}


def find_variant(run_dir: Path, name: str) -> Variant:
    """The saved variant ``name`` of a trained, compressed run."""
    run_dir = check_run(run_dir)
    rows = saved_variants(run_dir)
    if not rows:
        raise UserError(f"RUN: {run_dir.name} was never compressed (no variants in {ROWS}); "
                        f"run tlc compress {run_dir} first")
    if name not in rows:
        raise UserError(f"--variant: {name!r} is not a variant of {run_dir.name}; valid: {', '.join(rows)}")
    return Variant(run_dir, name, run_dir / "compressed" / name, rows[name])


def recommended_variant(plan: dict | None, rows: dict[str, dict]) -> str | None:
    """The variant of ``rows`` (by name) closest to plan.json's recommended compression, or None.

    Same method and bits (a weight-only quantizer's own bits), nearest achieved sparsity; the plan's method
    ``none`` is the dense model (or its int8 twin).
    """
    compression = ((plan or {}).get("recommendation") or {}).get("compression") or {}
    if not compression:
        return None
    method = compression.get("method") or "none"
    bits = compression.get("bits") or (8 if compression.get("int8") else 32)
    target = float(compression.get("sparsity") or 0.0)
    candidates = [(abs(float(r.get("sparsity") or 0.0) - target), name) for name, r in rows.items()
                  if r.get("method") == method and int(r.get("bits", 32)) == bits]
    return min(candidates)[1] if candidates else None
