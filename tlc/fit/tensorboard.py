"""``tlc fit FOLDER`` of TensorBoard event files: each folder holding events is one run.

A run's points are the scalar ``val/loss/by_tokens`` (what `tlc train` writes through DeepSpeed's monitor:
step = tokens seen, value = validation loss); its last point is the finished one. Event files hold no
parameter count, so N is a scalar ``params`` in the same events, else the ``params`` of the tlc run folder
above (``<run>/tensorboard/<events>`` beside ``<run>/config.json``); without either the run is an error
naming the folder. Reading needs the ``tensorboard`` package.
"""

from __future__ import annotations

import json
from pathlib import Path

from tlc.errors import UserError
from tlc.fit.table import TableRow

LOSS_TAG = "val/loss/by_tokens"


def event_folders(folder: Path) -> list[Path]:
    """Folders under ``folder`` (itself included) that hold TensorBoard event files, in name order."""
    return sorted({p.parent for p in Path(folder).rglob("events.out.tfevents.*")})


def _params(run: Path, scalars: dict, size: str) -> float:
    if "params" in scalars and scalars["params"]:
        return float(scalars["params"][-1][1])
    for config_path in (run / "config.json", run.parent / "config.json"):
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        value = (config.get("params") or {}).get(size) if isinstance(config.get("params"), dict) else None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    raise UserError(f"{run}: no parameter count: log a scalar 'params' beside {LOSS_TAG}, or keep the run's "
                    "config.json (tlc train) in the folder above")


def read_event_rows(folder: Path, size: str = "total") -> list[TableRow]:
    """One row per evaluation of every event folder (step column set, so each run's last is its finished point)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise UserError("RUNS_DIR: reading TensorBoard event files needs the tensorboard package "
                        "(pip install tensorboard)") from None
    rows = []
    for run in event_folders(folder):
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags().get("scalars", [])
        if LOSS_TAG not in tags:
            continue
        scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags if tag in (LOSS_TAG, "params")}
        params = _params(run, scalars, size)
        run_id = str(run.relative_to(folder)) if run != Path(folder) else run.name
        for index, (tokens, loss) in enumerate(scalars[LOSS_TAG]):
            if tokens > 0 and loss > 0:
                rows.append(TableRow(index + 1, run_id, params, float(tokens), float(loss), 6.0 * params * tokens,
                                     0.0, 32.0, float(index)))
    if not rows:
        raise UserError(f"RUNS_DIR: no event files under {folder} hold the scalar {LOSS_TAG}")
    return rows
