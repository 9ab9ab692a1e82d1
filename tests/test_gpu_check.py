"""scripts/gpu_check.sh, prepared before a GPU arrives: its dry run goes through every step at CPU sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
STEPS = ("versions", "tlc installed", "build cuda_ext", "gpu tests (selection)", "block-sparse bf16",
         "deepspeed vs plain", "tlc sweep (fp32)", "torchrun x2 (gloo)", "tlc compress (int8, block-sparse)",
         "tlc fit", "tlc plan", "tlc validate", "product record", "targets", "summary (dry)")


def test_dry_run_prints_and_runs_every_step_and_writes_one_summary(tmp_path):
    summary = tmp_path / "summary.txt"
    # the interpreter by a path relative to the caller's folder, as `make gpu-check-dry-run` passes it; it
    # resolves from here only, not from the repository root (where the script moves) or TMPDIR (where a step runs)
    (tmp_path / "venv").symlink_to(sys.prefix, target_is_directory=True)
    python = f"venv/bin/{Path(sys.executable).name}"
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--summary", str(summary)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHON": python, "OUT": str(tmp_path / "unused"),
                               "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = summary.read_text()
    refused = "validate skipped" in text  # at CPU sizes the sweep may identify no law (see below)
    for step in STEPS:
        assert f"== {step}" in text or (refused and step in ("tlc validate", "product record")), step
    assert "(dry run) would run:" in text and "--target" in text  # the install step is printed, not run
    assert "-m gpu" in text and "failed steps: none" in text
    assert "DeepSpeed / plain loop" in text and "block-sparse 256x256" in text  # figures read back as targets
    assert "packaged sweep" in text and "tiny.yaml" in text
    assert "density 0.3" in text  # 10, 30 and 50% of blocks
    import json

    record = json.loads(summary.with_suffix(".json").read_text())
    assert record["mode"] == "dry" and record["failed"] == [] and record["total_s"] >= 0
    assert [s["step"] for s in record["steps"]][:2] == ["versions", "tlc installed"]
    assert any(t.startswith("block-sparse 256x256 density 0.3") for t in record["targets"])
    # the product ran end to end at CPU sizes: every variant measured, the plan's recommendation validated
    # (at CPU sizes the sweep may identify no law: then tlc plan's one-line refusal is the answer and the dry run
    # says it skipped validate)
    assert ("compressed variants: " in text and "validated recommendation: predicted loss" in text) or (
        "no law the fit can defend" in text and "validate skipped" in text)
    assert (tmp_path / "tlc-gpu-product" / "torchrun" / "model").is_dir()  # two processes trained one run


def test_unknown_argument_is_a_one_line_error():
    proc = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'--dryrun'" in proc.stderr and "--dry-run" in proc.stderr
