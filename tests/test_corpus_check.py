"""fit.json, plan.json and validation.json carry the corpus fingerprint; plan and validate refuse another corpus."""

from __future__ import annotations

import json
import shutil

import pytest

from plan_fixtures import write_trainable_sweep
from tlc.cli import main as tlc_main
from tlc.corpus import check_corpus, runs_corpus
from tlc.errors import UserError
from tlc.io import atomic_write_json
from tlc.train.data import load_corpus
from test_validate import BUDGET, MAX_BYTES, _error  # the same plan budgets; the one-line error check


def test_plan_and_validate_refuse_a_corpus_that_changed_since_the_fit(tmp_path, small_corpus, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    runs = write_trainable_sweep(tmp_path / "runs", corpus)
    fingerprint = load_corpus(str(corpus)).fingerprint
    fit = json.loads((runs / "fit.json").read_text())
    assert fit["corpus"]["fingerprint"] == fingerprint and fit["corpus"]["source"] == str(corpus)
    assert tlc_main(["plan", "--runs", str(runs), "--budget", BUDGET, "--max-bytes", MAX_BYTES]) == 0
    capsys.readouterr()
    plan = json.loads((runs / "plan.json").read_text())
    assert plan["corpus"]["fingerprint"] == plan["corpus"]["current_fingerprint"] == fingerprint
    assert plan["corpus"]["allowed_other_corpus"] is False

    (corpus / "csv.py").write_text("# edited since the sweep\n" * 100)  # same files, other content
    err = _error(["plan", "--runs", runs, "--budget", BUDGET, "--max-bytes", MAX_BYTES], capsys)
    assert f"--runs: the corpus at {str(corpus)!r} is not the one {runs / 'fit.json'} was made on" in err
    assert "--allow-other-corpus" in err
    err = _error(["validate", runs], capsys)  # before any training starts
    assert f"--plan: the corpus at {str(corpus)!r} is not the one" in err and not (runs / "validation").exists()

    assert tlc_main(["plan", "--runs", str(runs), "--budget", BUDGET, "--max-bytes", MAX_BYTES,
                     "--allow-other-corpus"]) == 0
    overridden = json.loads((runs / "plan.json").read_text())["corpus"]
    assert overridden["allowed_other_corpus"] is True and overridden["fingerprint"] == fingerprint
    assert overridden["current_fingerprint"] == load_corpus(str(corpus)).fingerprint != fingerprint


def test_runs_that_disagree_record_no_single_fingerprint_and_are_refused(tmp_path):
    for name, print_ in (("a", "1" * 64), ("b", "2" * 64)):
        (tmp_path / name).mkdir()
        atomic_write_json(tmp_path / name / "config.json", {"data": {"source": str(tmp_path), "val_percent": 5.0,
                                                                     "text_field": "text", "fingerprint": print_}})
    record = runs_corpus(tmp_path)
    assert record["fingerprint"] is None and record["fingerprints"] == ["1" * 64, "2" * 64]
    with pytest.raises(UserError, match="--runs: .* runs disagree: 111111111111, 222222222222 then"):
        check_corpus(record, "fit.json", "tlc plan", False, "--runs")
    assert check_corpus(None, "fit.json", "tlc plan", False, "--runs") is None  # nothing recorded: nothing to check


@pytest.mark.parametrize("record", [["a"], {"source": 3}, {"source": "x", "val_percent": "5", "text_field": "text"},
                                    {"source": "x", "val_percent": 5, "text_field": "t", "fingerprint": 7}])
def test_a_malformed_corpus_record_is_a_one_line_error(record):
    with pytest.raises(UserError, match="^--plan: plan.json's corpus record is malformed"):
        check_corpus(record, "plan.json", "tlc validate", False, "--plan")
