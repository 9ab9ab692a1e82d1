"""`tlc validate`: a plan written by `tlc plan` trained and compressed for real, then compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_tlc, tlc_in_process
from plan_fixtures import NOVEL_FACTOR, REPEAT_FACTOR, write_trainable_sweep
from tlc.cli import main as tlc_main
from tlc.io import atomic_write_json, list_runs
from tlc.validate.validation import came_true, judge_gain, standard_error

BUDGET, MAX_BYTES = "5e9", "250000"


@pytest.fixture(scope="module")
def planned(tmp_path_factory, small_corpus) -> Path:
    runs = write_trainable_sweep(tmp_path_factory.mktemp("validate") / "runs", small_corpus)
    assert tlc_main(["plan", "--runs", str(runs), "--budget", BUDGET, "--max-bytes", MAX_BYTES]) == 0
    return runs


@pytest.fixture(scope="module")
def validated(planned) -> tuple[Path, str]:
    proc = tlc_in_process("validate", planned, check=True)
    return planned, proc.stdout


def test_validation_carries_the_plan_out_within_its_budgets(validated):
    runs, printed = validated
    plan = json.loads((runs / "plan.json").read_text())
    entry, = json.loads((runs / "validation.json").read_text())["validations"]
    assert set(entry["points"]) == {"recommendation", "train_small"}
    assert plan["recommendation"]["compression"] != plan["train_small"]["compression"]
    for name, point in entry["points"].items():
        measured, predicted = point["measured"], point["predicted"]
        assert measured["bytes"] <= predicted["bytes"] <= float(MAX_BYTES), name  # the promise held
        assert measured["nonzeros"] <= predicted["nonzeros"], name
        assert point["checks"]["bytes_within_budget"] is True
        assert measured["latency_repeats"] >= 7 and measured["latency_ms"] > 0 and measured["train_wall_s"] > 0
        # the default two seeds measure the spread; the interval is widened by the mean's standard error
        seeds = measured["loss_per_seed"]
        sem = abs(seeds[0] - seeds[1]) / 2  # stdev of two values / sqrt(2)
        assert len(seeds) == 2 and measured["loss_sem"] == pytest.approx(sem) and measured["loss"] == pytest.approx(
            sum(seeds) / 2)
        low, high = predicted["loss"]["low"], predicted["loss"]["high"]
        assert point["checks"]["loss_interval_widened"] == pytest.approx([low - sem, high + sem])
        assert point["checks"]["loss_inside_interval"] is (low - sem <= measured["loss"] <= high + sem)
        config = json.loads((runs / point["run_dirs"][0] / "config.json").read_text())
        recipe = plan[name]["recipe"]
        assert config["shape"]["width"] == plan[name]["width"] and config["train"]["lr"] == recipe["train"]["lr"]
        assert config["train_tokens"] >= plan[name]["tokens"] * 0.9
        # the loss by target, predicted from the fit's refits of each part and measured on the trained model
        assert predicted["dense_loss_split"] == plan[name]["dense_loss_split"]
        # each part was fitted to its own losses: the fixture's factors come back at the planned point
        ratio = predicted["dense_loss_split"]["repeat"] / predicted["dense_loss_split"]["novel"]
        assert ratio == pytest.approx(REPEAT_FACTOR / NOVEL_FACTOR, rel=0.02)
        assert set(measured["dense_loss_split"]) == {"repeat", "novel"}
        assert point["checks"]["dense_split_error_relative"]["novel"] == pytest.approx(
            1 - predicted["dense_loss_split"]["novel"] / measured["dense_loss_split"]["novel"])
        assert f"{name} trained, before compression: on new targets" in printed
        # and the compressed model's, from the planned variant's rows
        assert set(measured["loss_split"]) == {"repeat", "novel"}
        compressed = point["compression"]["method"] != "none" or point["compression"]["int8"]
        line = next(row for row in printed.splitlines() if row.startswith(f"  {name} trained, before compression"))
        assert ("; compressed, " in line) == bool(compressed)
    assert plan["law"]["copying_under_way"] is False  # both parts of the fixture's loss follow the law
    verdict = entry["verdict"]
    assert verdict["predicted_gain"] == pytest.approx(plan["gain"]["loss"])
    small, large = entry["points"]["train_small"]["measured"], entry["points"]["recommendation"]["measured"]
    assert verdict["measured_gain"] == pytest.approx(small["loss"] - large["loss"])
    assert verdict["measured_gain_sem"] == pytest.approx((small["loss_sem"] ** 2 + large["loss_sem"] ** 2) ** 0.5)
    assert verdict["gain"] == judge_gain(verdict["measured_gain"], verdict["measured_gain_sem"],
                                         plan["gain"]["low"], plan["gain"]["high"])[0]
    assert f"verdict: {verdict['sentence']}" in printed and "predicted loss" in printed


def test_validation_runs_are_not_sweep_runs(validated):
    runs, _ = validated
    assert len(list_runs(runs)) == 6 and not (runs / "validation" / "config.json").exists()
    assert len(list((runs / "validation").iterdir())) == 4  # two points, two seeds each


def test_a_point_came_true_only_inside_its_interval_widened_by_the_measured_standard_error():
    assert standard_error([2.0, 2.2]) == pytest.approx(0.1) and standard_error([2.0]) is None
    assert came_true(3.05, 0.1, 2.9, 3.0) == (True, pytest.approx([2.8, 3.1]))  # inside only thanks to the seeds
    assert came_true(3.05, None, 2.9, 3.0) == (False, [2.9, 3.0])  # one seed: no spread, not widened
    assert came_true(3.2, 0.1, 2.9, 3.0)[0] is False and came_true(3.0, 0.1, None, None) == (None, None)


@pytest.mark.parametrize("measured, sem, low, high, expected", [
    (0.05, 0.01, 0.03, 0.08, "confirmed"),  # inside, 5 standard errors above zero
    (0.10, 0.01, 0.03, 0.08, "refuted"),  # same sign as predicted, yet past the widened interval
    (-0.02, 0.01, 0.03, 0.08, "refuted"),
    (0.025, 0.02, 0.03, 0.08, "undecided"),  # inside the widened interval, but the seeds cannot name a winner
    (0.05, None, 0.03, 0.08, "undecided"),  # one seed
    (0.05, 0.01, None, None, "undecided"),  # no predicted interval: a sign alone never decides
    (0.001, 0.01, -0.02, 0.03, "confirmed"),  # the plan named no winner, and the measurement agrees
])
def test_the_gain_is_judged_from_its_interval_and_the_seeds_never_from_signs_alone(measured, sem, low, high,
                                                                                   expected):
    assert judge_gain(measured, sem, low, high)[0] == expected


def test_validate_resumes_without_training_again(validated):
    runs, _ = validated
    before = (runs / "validation.json").read_text()
    proc = tlc_in_process("validate", runs, check=True)
    assert "training recommendation" not in proc.stdout and "training train_small" not in proc.stdout
    after = json.loads((runs / "validation.json").read_text())
    assert len(after["validations"]) == 1
    assert after["validations"][0]["points"]["recommendation"]["measured"]["loss"] == \
        json.loads(before)["validations"][0]["points"]["recommendation"]["measured"]["loss"]


def test_compress_refuses_a_run_that_is_not_the_planned_point(validated):
    runs, _ = validated
    small = next(p for p in (runs / "validation").iterdir() if p.name.startswith("train_small"))
    proc = run_tlc("compress", small, "--plan", runs / "plan.json", "--point", "recommendation")
    assert proc.returncode == 2 and "--plan:" in proc.stderr and "is not the planned recommendation" in proc.stderr
    assert proc.stderr.count("\n") == 1


def _error(argv: list, capsys) -> str:
    assert tlc_main([*map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_bad_plans_and_points_are_one_line_naming_the_flag(planned, tmp_path, capsys):
    plan = json.loads((planned / "plan.json").read_text())
    old = tmp_path / "old.json"
    atomic_write_json(old, {**plan, "format": "tlc.plan/1"})
    assert "--plan: " in _error(["validate", planned, "--plan", old], capsys)
    assert "has format 'tlc.plan/1'" in _error(["train", "--plan", old], capsys)
    assert "--points: no point 'best'" in _error(["validate", planned, "--points", "best"], capsys)
    assert "--point: no point 'best'" in _error(["train", "--plan", planned / "plan.json", "--point", "best"], capsys)
    assert "--latency-repeats: at least 7" in _error(["validate", planned, "--latency-repeats", "3"], capsys)
    other = tmp_path / "other"
    shutil.copytree(planned, other, ignore=shutil.ignore_patterns("validation*", "plan.json", "study.db"))
    fit = json.loads((other / "fit.json").read_text())
    fit["n_runs"] = 5  # another fit
    atomic_write_json(other / "fit.json", fit)
    err = _error(["validate", other, "--plan", planned / "plan.json"], capsys)
    assert "--plan: the plan was made from another fit" in err


def test_unreadable_plan_paths_are_one_line_naming_the_flag(tmp_path, capsys):
    assert "--plan: " in _error(["train", "--plan", tmp_path / "none.json"], capsys)  # missing
    assert "--plan: cannot read" in _error(["train", "--plan", tmp_path], capsys)  # a folder
    assert "--plan: cannot read" in _error(["train", "--plan", "a\x00b"], capsys)  # a NUL (found by test_fuzz)
    (tmp_path / "bad.json").write_bytes(b"\xff{")
    assert "--plan: cannot read" in _error(["compress", "--plan", tmp_path / "bad.json", tmp_path], capsys)


def test_report_leads_with_the_answer_and_the_validation(validated):
    runs, _ = validated
    assert tlc_main(["report", str(runs)]) == 0
    page = (runs / "report" / "index.html").read_text()
    md = (runs / "report" / "report.md").read_text()
    plan = json.loads((runs / "plan.json").read_text())
    rec, small = plan["recommendation"], plan["train_small"]
    answer = page[page.index("<section id='answer'>"):page.index("</section>")]
    assert page.index("id='answer'") < page.index("<figure>")  # the answer comes before every figure
    assert f"w{rec['width']}-d{rec['depth']}" in answer and f"w{small['width']}-d{small['depth']}" in answer
    assert f"{rec['loss']['mean']:.3f}" in answer and f"{plan['gain']['loss']:+.3f}" in answer
    assert f"Law: {plan['law']['form']} ({plan['law']['status']})" in answer
    entry = json.loads((runs / "validation.json").read_text())["validations"][0]
    measured = entry["points"]["recommendation"]["measured"]["loss"]
    assert f"Measured recommendation: loss {measured:.3f}" in answer and "Verdict: " in answer
    novel = entry["points"]["recommendation"]["measured"]["dense_loss_split"]["novel"]
    assert f"Its loss by target, trained and before compression: on new targets {novel:.3f} against" in answer
    assert (runs / "report" / "plan_came_true.png").is_file() and "Did the plan come true?" in md
    assert md.index("## The answer") < md.index("## Did the plan come true?")


def test_report_of_a_plan_not_yet_validated_says_so(planned, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(planned, runs, ignore=shutil.ignore_patterns("validation*"))
    assert tlc_main(["report", str(runs)]) == 0
    page = (runs / "report" / "index.html").read_text()
    assert "This plan has not been carried out yet: run tlc validate" in page
    assert not (runs / "report" / "plan_came_true.png").exists()


def test_a_plan_from_a_wsd_sweep_is_validated_at_its_one_branch(tmp_path, small_corpus):
    """A WSD sweep's law was fitted to branch ends: the planned run is a trunk whose one cooldown branch
    ends at the planned tokens, and that branch's model is what gets compressed and measured."""
    runs = write_trainable_sweep(tmp_path / "runs", small_corpus, wsd=True)
    assert tlc_main(["plan", "--runs", str(runs), "--budget", BUDGET, "--max-bytes", MAX_BYTES]) == 0
    tlc_in_process("validate", runs, "--points", "recommendation", "--seeds", "0", check=True)
    point = json.loads((runs / "plan.json").read_text())["recommendation"]
    entry = json.loads((runs / "validation.json").read_text())["validations"][0]["points"]["recommendation"]
    run_dir = runs / entry["run_dirs"][0]
    assert json.loads((run_dir / "config.json").read_text())["train"]["cooldowns"] == [1.0]
    branch, = (run_dir / "branches").iterdir()
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    step = 8 * 32  # tokens per optimizer step: trunk and branch each end on a whole step
    assert final["final"] and final["tokens"] == int(branch.name) == pytest.approx(point["tokens"], abs=2 * step)
    rows = [json.loads(line) for line in (branch / "compress.jsonl").read_text().splitlines()]
    assert not (run_dir / "compress.jsonl").exists() and {r["tokens"] for r in rows} == {final["tokens"]}
    assert entry["measured"]["dense_loss"] == pytest.approx(final["val_loss"])
    assert entry["measured"]["bytes"] <= entry["predicted"]["bytes"] <= float(MAX_BYTES)


def test_a_training_that_fails_is_one_line_naming_the_point_and_the_trainer_s_error(tmp_path):
    from tlc.errors import UserError
    from tlc.validate.validation import train_point

    missing = tmp_path / "plan.json"
    with pytest.raises(UserError) as error:
        train_point(missing, "recommendation", 0, tmp_path / "run", log=lambda line: None)
    message = str(error.value)
    assert message.startswith("training recommendation (seed 0) failed: ") and str(missing) in message
    assert "run tlc validate again to resume" in message and "\n" not in message
