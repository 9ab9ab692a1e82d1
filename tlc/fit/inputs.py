"""What a sweep's fit.json was computed from, as one digest: ``tlc fit --skip-unchanged`` (and ``tlc demo`` on a
second run) leaves a fit.json alone when nothing it depends on has changed.

The digest covers every file a fit reads from the runs (each run's config.json, metrics.jsonl and compress.jsonl,
and each cooldown branch's compress.jsonl), the fit's options, and the source of the code that fits (tlc.fit and
scaling), so an edited law form or a new evaluation both mean a refit. It reads those files only, not the runs'
checkpoints and saved models: milliseconds, where the fit it saves costs seconds to minutes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tlc.fit.observations import branch_compress_files
from tlc.io import list_runs

FORMAT = "tlc.fit-inputs/2"  # /1 also hashed files the fit never reads (saved models' config.json)
RUN_FILES = ("config.json", "metrics.jsonl", "compress.jsonl")


def _code_files() -> list[Path]:
    import scaling

    here = Path(__file__).resolve().parent
    return sorted(here.glob("*.py")) + sorted(Path(scaling.__file__).resolve().parent.glob("*.py"))


def inputs_digest(runs_dir: Path, options: dict) -> str:
    """sha256 over the fit's options, the fitting code and every run file a fit of ``runs_dir`` reads."""
    digest = hashlib.sha256(FORMAT.encode())

    def add(label: str, data: bytes) -> None:
        digest.update(f"\0{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("options", repr(sorted(options.items())).encode())
    for path in _code_files():
        add(f"code/{path.parent.name}/{path.name}", path.read_bytes())
    runs_dir = Path(runs_dir)
    for run_dir in list_runs(runs_dir):
        for path in _run_files(run_dir):
            add(path.relative_to(runs_dir).as_posix(), path.read_bytes())
    return digest.hexdigest()


def _run_files(run_dir: Path) -> list[Path]:
    """The files of one run that tlc.fit.observations reads: its RUN_FILES and its branches' compression rows."""
    return [p for p in (run_dir / name for name in RUN_FILES) if p.is_file()] + branch_compress_files(run_dir)
