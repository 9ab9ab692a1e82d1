"""Nothing runs from a run directory or a sweep file, nothing escapes the run directory, and every
string a user (or a planted file) supplies is escaped in the HTML report."""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_tlc, tlc_in_process
from reliability_figures import record
from report_fixtures import write_synthetic_sweep
from tlc.config import load_sweep
from tlc.errors import UserError
from tlc.train.guard import checkpoint_tag
from tlc.io import read_jsonl

TRAIN = ["train", "--width", "16", "--depth", "1", "--heads", "2", "--context", "32", "--vocab-size", "300",
         "--tokens", str(8 * 8 * 32), "--micro-batch", "8", "--evals", "2", "--precision", "fp32", "--no-progress"]
ATTEMPTS = {"attacks": 0, "blocked": 0}


class Planted:
    """Unpickling this creates ``marker``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _tlc(argv: list) -> tuple[int, str]:
    """``tlc ARGV`` in process: (exit status, stderr)."""
    proc = tlc_in_process(*argv)
    return proc.returncode, proc.stderr


def _blocked(ok: bool) -> None:
    ATTEMPTS["attacks"] += 1
    ATTEMPTS["blocked"] += bool(ok)
    record("safety", **ATTEMPTS)
    assert ok


def test_a_planted_pickle_in_a_checkpoint_is_never_executed(tmp_path, small_corpus):
    out = tmp_path / "w16-d1-s0"
    argv = [*TRAIN, "--data", small_corpus, "--out", out]
    run_tlc(*argv, check=True)
    shutil.rmtree(out / "model")  # unfinished again: the next command resumes from the checkpoint
    states = next((out / "checkpoint").glob("step*/mp_rank_00_model_states.pt"))
    marker = tmp_path / "executed"

    # the planted file does run code under DeepSpeed's own loader (weights_only=False) ...
    torch.save({"module": Planted(marker)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    # ... but not when tlc resumes from it
    torch.save({"module": Planted(marker), "step": 8, "wall_s": 0.0}, states)
    proc = run_tlc(*argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "cannot be loaded as plain tensors" in proc.stderr and "checkpoint/" in proc.stderr
    _blocked(not marker.exists())



@pytest.mark.parametrize("tag", ["../../elsewhere", "/etc", "step00000008/../../x", "", None, 8])
def test_a_checkpoint_pointer_cannot_name_a_folder_outside_checkpoint(tmp_path, tag):
    latest = tmp_path / "tlc_latest.json"
    latest.write_text(json.dumps({"tag": tag, "step": 8}))
    with pytest.raises(UserError, match="expected a tag like step00000012"):
        checkpoint_tag(latest)
    latest.write_text("{ torn")
    with pytest.raises(UserError, match="is unreadable"):
        checkpoint_tag(latest)
    _blocked(True)


def test_a_sweep_file_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "evil.yaml"
    sweep.write_text("!!python/object/apply:pathlib.Path.touch [pwned]\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_sweep(sweep)
    code, err = _tlc(["sweep", sweep, "--runs-dir", tmp_path / "runs"])
    assert code == 2 and err.count("\n") == 1
    _blocked(not (tmp_path / "pwned").exists() and not (tmp_path / "runs").exists())


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".hidden", "x\x00y", "-rf"])
def test_a_sweep_name_cannot_leave_the_runs_folder(tmp_path, small_corpus, name):
    doc = {"name": name, "shapes": [{"width": 16, "depth": 1, "heads": 2}], "train": {"tokens": 4096},
           "data": {"source": str(small_corpus)}}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(doc))
    code, err = _tlc(["sweep", sweep, "--runs-dir", tmp_path / "runs"])
    assert code == 2 and "name: must be a simple name" in err
    _blocked(not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"])


@pytest.mark.parametrize("run_id", ["../../escape", "/abs/w16-d1-s0", "w16-d1-s0/../../x", "w16-d1-s0\x00"])
def test_a_run_id_must_name_a_run_of_the_sweep(tmp_path, small_corpus, run_id, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = {"name": "ok", "model": {"context": 32, "vocab_size": 300}, "shapes": [{"width": 16, "depth": 1, "heads": 2}],
           "train": {"tokens": 4096}, "data": {"source": str(small_corpus)}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    code, err = _tlc(["train", "--sweep", "s.yaml", "--run-id", run_id])
    assert code == 2 and "--run-id: no run named" in err and "valid: w16-d1-s0" in err
    _blocked(sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"])


@pytest.mark.parametrize("out", ["a\x00b", "{file}/run", "{file}"])
def test_a_bad_out_folder_is_a_one_line_error(tmp_path, small_corpus, out):
    (tmp_path / "file").write_text("not a folder")
    code, err = _tlc([*TRAIN, "--data", small_corpus, "--out", out.format(file=tmp_path / "file")])
    assert code == 2 and err.startswith("tlc train: error: --out") and err.count("\n") == 1, err
    _blocked((tmp_path / "file").read_text() == "not a folder")


EVIL = "<script>alert(1)</script>"


def test_every_string_from_run_files_is_escaped_in_the_html_report(tmp_path):
    sweep = write_synthetic_sweep(tmp_path / f"s{EVIL[:7]}", with_fit=False, with_plan=False, run_id_prefix="<i>")
    fit = {"laws": {EVIL: {"status": f"<b onmouseover=x>{EVIL}", "heldout": {"relative_error": 0.1},
                           "parameters": {"<img src=x onerror=alert(2)>": {"value": 1.0, "low": 0.5, "high": 2}}}}}
    plan = {"budget": {EVIL: 1e17}, "recommendation": {"method": EVIL, f"k{EVIL}": "v"}, "train_small": {"x": 1},
            "gain": {"loss": 0.1}, "warnings": [EVIL, "<iframe src=//evil>"]}
    (sweep / "fit.json").write_text(json.dumps(fit))
    (sweep / "plan.json").write_text(json.dumps(plan))
    run = next(p for p in sweep.iterdir() if p.is_dir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["val_loss"] = EVIL  # a planted non-number where a number belongs
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = _tlc(["report", sweep])
    page_path = sweep / "report" / "index.html"
    if code != 0:  # refusing the planted value is fine, as one line
        assert code == 2 and err.count("\n") == 1, err
        _blocked(not page_path.exists())
        rows[-1]["val_loss"] = 3.0
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert _tlc(["report", sweep])[0] == 0
    page = page_path.read_text()
    for raw in ("<script", "<img src=x", "<iframe", "<b onmouseover", "<i>w"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;iframe" in page and "&lt;img src=x" in page
    _blocked(True)


def test_zero2_bf16_checkpoints_still_resume_under_weights_only_loading(tmp_path, small_corpus):
    """The weights-only loader admits what ZeRO and bf16 optimizer states hold (they pickle DeepSpeed classes)."""
    out = tmp_path / "w16-d1-s0"
    argv = [*TRAIN, "--precision", "bf16", "--zero-stage", "2", "--data", small_corpus, "--out", out]
    run_tlc(*argv, check=True)
    assert next((out / "checkpoint").glob("step*/*zero*optim_states.pt"))  # the file that needs the allowed classes
    before = read_jsonl(out / "metrics.jsonl")
    shutil.rmtree(out / "model")
    run_tlc(*argv, check=True)  # resumes from the final checkpoint through the weights-only loader
    assert read_jsonl(out / "metrics.jsonl") == before and (out / "model" / "model.safetensors").exists()
