"""Bad files in a run directory: junk planted in config.json, metrics.jsonl, compress.jsonl, fit.json or
plan.json must give ``tlc report`` and ``tlc fit`` a success or a one-line error naming the file, never a
traceback, and an error must leave no report behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reliability_figures import record
from report_fixtures import write_synthetic_sweep
from test_fuzz import VALUES
from tlc.cli import main

RUN_FILES = settings(max_examples=int(os.environ.get("TLC_FUZZ_EXAMPLES", "25")), deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TARGETS = [("config.json", None), ("config.json", "params"), ("metrics.jsonl", "val_loss"), ("metrics.jsonl", "tokens"),
           ("metrics.jsonl", None), ("compress.jsonl", "method"), ("compress.jsonl", "sparsity"),
           ("compress.jsonl", "loss_by_freq_bucket"), ("fit.json", None), ("fit.json", "laws"), ("fit.json", "frontier"),
           ("plan.json", None), ("plan.json", "pareto_front")]
COUNTS = {"malformed_run_files": 0, "accepted": 0, "one_line_errors": 0}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_synthetic_sweep(tmp_path_factory.mktemp("pristine") / "s", with_plan=True)


def _plant(sweep: Path, target: tuple[str, str | None], value) -> None:
    """Replace one field (or a whole file's content) of the first run, or of fit.json / plan.json, by ``value``."""
    name, field = target
    path = sweep / name if name in ("fit.json", "plan.json") else next(sweep.glob(f"*/{name}"))
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if field is None:
            rows[-1] = value
        else:
            rows[-1][field] = value
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        doc = json.loads(path.read_text())
        if field is None:
            doc = value
        else:
            doc[field] = value
        path.write_text(json.dumps(doc))


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_junk_in_run_files_gives_report_and_fit_one_line_errors(pristine):
    json_values = VALUES.filter(lambda v: _json_ok(v))

    @RUN_FILES
    @given(target=st.sampled_from(TARGETS), value=json_values, command=st.sampled_from(["report", "fit"]))
    @example(target=("plan.json", "pareto_front"), value=True, command="report")  # found once: the report crashed
    def check(target, value, command):
        COUNTS["malformed_run_files"] += 1
        sweep = Path(tempfile.mkdtemp(prefix="tlc-runfiles-")) / "s"
        try:
            shutil.copytree(pristine, sweep)
            _plant(sweep, target, value)
            argv = [command, str(sweep)] + (["--bootstrap", "0"] if command == "fit" else [])
            code, err = _run(argv)
            if code == 0:
                COUNTS["accepted"] += 1
                return
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith(f"tlc {command}: error: "), (target, err)
            assert not (sweep / "report").exists()
            COUNTS["one_line_errors"] += 1
        finally:
            shutil.rmtree(sweep.parent, ignore_errors=True)

    try:
        check()
    finally:
        record("fuzz_run_files", **COUNTS)
    assert COUNTS["one_line_errors"] > 0


def _json_ok(value) -> bool:
    try:
        json.dumps(value)  # NaN and Infinity included: Python writes them unless told not to
        return True
    except (ValueError, TypeError):
        return False
