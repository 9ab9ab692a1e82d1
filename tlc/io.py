"""Atomic file writes and JSON-lines helpers: the run directory's durability rules live here.

Every file a stage writes is either complete or absent: content goes to a temporary file in
the same folder, is flushed to disk, and is renamed over the target (rename is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from tlc.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN and infinities are refused, they are not JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place; an older folder at ``final_dir`` is replaced."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file. A torn last line (a write cut short by a kill) is ignored;
    a malformed line anywhere else is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.endswith("\n"):
                break  # torn final line from an interrupted append
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg}); repair or remove that line") from None
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line and fsync it, so an acknowledged metric survives a kill."""
    path = Path(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rewrite_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Atomically replace a JSON-lines file with ``rows``."""
    atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------
# Run directories: every stage lists a sweep's runs here, so what counts as a run is decided once


def list_runs(runs_dir: Path) -> list[Path]:
    """The runs of a sweep: its direct subfolders that hold a ``config.json``, in name order.

    Anything else under the sweep folder (``report/``, a run's own subfolders) is not a run; a
    folder that does not exist has none.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())


def read_run_config(run_dir: Path) -> dict | None:
    """A run's ``config.json`` as a dict; None when it is missing, unreadable or not a JSON object (callers
    that must name the problem read it themselves)."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    return config if isinstance(config, dict) else None


def is_complete(run_dir: Path) -> bool:
    """A run is complete once its final model folder is in place (it is moved there whole)."""
    return (Path(run_dir) / "model" / "config.json").exists()
