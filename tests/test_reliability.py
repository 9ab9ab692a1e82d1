"""SIGKILL at every stage: inside a checkpoint write, before its pointer moves, while the final model
is moved into place, while ``tlc compress`` saves a variant and while ``tlc report`` draws or moves
its folder. Running the same command again must finish the job, never read a half-written file,
and end with the results of an uninterrupted run.

Each kill lands at a chosen point: a small driver patches one function of the real code path to
signal "here" and hang, the test SIGKILLs the process, then reruns the plain command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_tlc
from reliability_figures import record
from report_fixtures import write_synthetic_sweep
from tlc.cli import main
from tlc.io import read_jsonl

SHAPE = ["--width", "16", "--depth", "1", "--heads", "2", "--context", "32", "--vocab-size", "300"]
TRAIN = ["train", *SHAPE, "--tokens", str(40 * 8 * 32), "--micro-batch", "8", "--evals", "6", "--precision", "fp32",
         "--no-progress"]  # evaluations and checkpoints after steps 1, 2, 4, 9, 19, 40

# Patches one function so that the process announces it reached the kill point (marker file) and hangs there.
DRIVER = r"""
import json, os, sys, time
from pathlib import Path

spec = json.loads(sys.argv[1])
marker, point = Path(spec["marker"]), spec["point"]

def hang():
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(1)

if point == "torn-checkpoint-file":  # half of a DeepSpeed checkpoint file is on disk
    import io, torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if isinstance(f, str) and spec["tag"] in f:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            hang()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif point == "before-latest-rename":  # DeepSpeed's files are complete, tlc_latest.json is still the old one
    real_replace = os.replace
    def replace(src, dst, **kwargs):
        if str(dst).endswith("tlc_latest.json") and json.loads(Path(src).read_text())["tag"] == spec["tag"]:
            hang()
        return real_replace(src, dst, **kwargs)
    os.replace = replace
elif point == "final-model-move":  # model/ written to a temporary folder, not moved yet
    import tlc.train.engine
    tlc.train.engine.atomic_replace_dir = lambda tmp, final: hang()
elif point == "report-figure":  # the third figure of the report is being drawn
    import matplotlib.figure
    real_savefig, calls = matplotlib.figure.Figure.savefig, []
    def savefig(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            hang()
        return real_savefig(self, *args, **kwargs)
    matplotlib.figure.Figure.savefig = savefig
elif point == "report-move":  # the old report/ moved aside, the new one not yet in place
    import tlc.report.build
    def move(tmp, final):
        os.replace(final, final.with_name(f".{final.name}.old"))
        hang()
    tlc.report.build.atomic_replace_dir = move
elif point == "compress-variant-move":  # a compressed variant's folder is written but not moved into place
    import tlc.compress.store
    real_move, calls = tlc.compress.store.atomic_replace_dir, []
    def move(tmp, final):
        calls.append(1)
        if len(calls) == spec["nth"]:
            hang()
        return real_move(tmp, final)
    tlc.compress.store.atomic_replace_dir = move
else:
    raise SystemExit(f"unknown kill point {point}")

from tlc.cli import main
sys.exit(main(spec["argv"]))
"""

KILLS: list[str] = []  # kill points reached in this session
RECOVERED: list[str] = []  # kill points after which the rerun matched the uninterrupted result


def _recovered(kills: int) -> None:
    """Count the last ``kills`` kills, made by the test that just passed; write the session's figures so far."""
    RECOVERED.extend(KILLS[-kills:])
    record("kills_at_every_stage", kills=len(KILLS), recovered=len(RECOVERED), points=sorted(set(RECOVERED)))


def kill_at(point: str, argv: list, tmp_path: Path, timeout_s: float = 300, **spec) -> None:
    """Run ``tlc ARGV`` until it reaches ``point``, then SIGKILL it."""
    marker = tmp_path / f"reached-{point}"
    marker.unlink(missing_ok=True)
    spec = {"point": point, "marker": str(marker), "argv": [str(a) for a in argv], **spec}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout_s
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if not marker.exists():
        proc.kill()
        raise AssertionError(f"never reached {point} (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    KILLS.append(point)


def _weights(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(model_dir / "model.safetensors")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, small_corpus) -> Path:
    """The run trained once without interruption."""
    out = tmp_path_factory.mktemp("reference") / "w16-d1-s0"
    run_tlc(*TRAIN, "--data", small_corpus, "--out", out, check=True)
    return out


def test_training_killed_inside_each_checkpoint_stage_resumes_to_the_same_run(tmp_path, small_corpus, reference_run):
    out = tmp_path / "w16-d1-s0"
    argv = [*TRAIN, "--data", small_corpus, "--out", out]
    latest = out / "checkpoint" / "tlc_latest.json"

    kill_at("torn-checkpoint-file", argv, tmp_path, tag="step00000009")
    assert json.loads(latest.read_text())["tag"] == "step00000004"  # the pointer never names the torn checkpoint
    kill_at("before-latest-rename", argv, tmp_path, tag="step00000019")
    assert json.loads(latest.read_text())["tag"] == "step00000009"
    kill_at("final-model-move", argv, tmp_path)
    assert not (out / "model").exists() and json.loads(latest.read_text())["tag"] == "step00000040"
    run_tlc(*argv, check=True)

    whole, resumed = read_jsonl(reference_run / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [1, 2, 4, 9, 19, 40]
    for a, b in zip(whole, resumed):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 and abs(a["train_loss"] - b["train_loss"]) < 1e-5, (a, b)
    ref, got = _weights(reference_run / "model"), _weights(out / "model")
    # 1e-4: the key bias gets no gradient, so Adam turns rounding noise into small updates
    assert ref.keys() == got.keys() and all(abs(ref[k] - got[k]).max() < 1e-4 for k in ref)
    assert sorted(p.name for p in (out / "checkpoint").iterdir() if p.is_dir()) == ["step00000040"]
    _recovered(3)


COMPRESS = ["--methods", "magnitude", "--sparsity", "0.5", "--no-int8", "--latency-repeats", "1"]


def test_compress_killed_while_saving_a_variant_resumes_to_the_same_rows(tmp_path, reference_run):
    whole, killed = tmp_path / "whole" / "w16-d1-s0", tmp_path / "killed" / "w16-d1-s0"
    for target in (whole, killed):
        shutil.copytree(reference_run, target, ignore=shutil.ignore_patterns("checkpoint", "compress*"))
    run_tlc("compress", whole.parent, *COMPRESS, check=True)
    kill_at("compress-variant-move", ["compress", killed.parent, *COMPRESS], tmp_path, nth=2)
    run_tlc("compress", killed.parent, *COMPRESS, check=True)
    expected, got = read_jsonl(whole / "compress.jsonl"), read_jsonl(killed / "compress.jsonl")
    assert [r["variant"] for r in got] == [r["variant"] for r in expected]  # none lost, none twice
    for a, b in zip(expected, got):
        for key in ("val_loss", "val_acc", "nonzeros", "bytes", "sparsity"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["variant"], key)
    _recovered(1)


@pytest.mark.parametrize("point", ["report-figure", "report-move"])
def test_report_killed_midway_leaves_the_old_report_or_none_and_rerunning_restores_it(tmp_path, point):
    sweep = write_synthetic_sweep(tmp_path / "synthetic", with_fit=False, with_plan=False)
    assert main(["report", str(sweep)]) == 0
    page, md = (sweep / "report" / "index.html").read_text(), (sweep / "report" / "report.md").read_text()
    figures = sorted(p.name for p in (sweep / "report").glob("*.png"))
    kill_at(point, ["report", sweep], tmp_path)
    if (sweep / "report").exists():  # never half a report: the complete old one, or none
        assert (sweep / "report" / "index.html").read_text() == page
    run_tlc("report", sweep, check=True)
    assert (sweep / "report" / "index.html").read_text() == page
    assert (sweep / "report" / "report.md").read_text() == md
    assert sorted(p.name for p in (sweep / "report").glob("*.png")) == figures
    _recovered(1)
