"""Bad input is refused before any work, with one line naming the field or flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tlc.cli import main
from tlc.config import load_sweep, parse_sweep
from tlc.errors import UserError

BASE = {
    "name": "t",
    "model": {"context": 32, "vocab_size": 300},
    "shapes": [{"width": 32, "depth": 2, "heads": 2}],
    "train": {"tokens": 100000},
}


def _sweep(**changes):
    doc = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in BASE.items()}
    doc.update(changes)
    return doc


def _error_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "doc, expected",
    [
        (_sweep(shapes=[{"width": 30, "depth": 2, "heads": 4}]), "not divisible by heads 4"),
        (_sweep(shapes=[{"width": 0, "depth": 2, "heads": 1}]), "width: must be a positive integer"),
        (_sweep(shapes=[{"width": 32, "depth": -1, "heads": 2}]), "depth: must be a positive integer"),
        (_sweep(train={"tokens": 100000, "lrr": 0.1}), "unknown key 'lrr'; valid keys: tokens"),
        (_sweep(extra=1), "unknown key 'extra'"),
        (_sweep(shapes=[{"width": 32, "depth": 2, "heads": 2, "colour": 1}]), "unknown key 'colour'"),
        (_sweep(train={"tokens": -5}), "train.tokens: must be positive"),
        (_sweep(train={}), "give exactly one budget"),
        (_sweep(train={"tokens": 1000, "zero_stage": 3}), "zero_stage: must be 0, 1 or 2"),
        (_sweep(train={"tokens": 1000, "precision": "fp8"}), "precision: must be one of auto, fp32, bf16"),
        (_sweep(name="../escape"), "name: must be a simple name"),
        (_sweep(seeds=[0, 0]), "seeds must be distinct"),
        (_sweep(shapes=[{"width": 32, "depth": 2, "heads": 2}] * 2), "appears twice"),
        (_sweep(train={"tokens": "lots"}), "expected a number"),
    ],
)
def test_bad_sweep_fields_name_the_field(doc, expected):
    with pytest.raises(UserError) as info:
        parse_sweep(doc, where="s.yaml")
    assert expected in str(info.value)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nshapes: [{width: 32, depth: 2, heads: 2}]\ntrain: {tokens: 3e6}\n")
    assert load_sweep(path).train.tokens == 3_000_000


def test_invalid_yaml_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: [unclosed\n")
    assert "not valid YAML" in _error_line(capsys, ["sweep", str(path)])


def test_missing_sweep_file(capsys):
    assert "no such file" in _error_line(capsys, ["sweep", "nope.yaml"])


def test_width_not_divisible_by_heads(capsys):
    err = _error_line(capsys, ["train", "--width", "30", "--depth", "1", "--heads", "4", "--tokens", "1e5"])
    assert "heads that divide it: 1, 2, 3, 5, 6, 10, 15, 30" in err


def test_zero_and_negative_sizes(capsys):
    assert "depth: must be a positive integer" in _error_line(
        capsys, ["train", "--width", "32", "--depth", "0", "--heads", "2", "--tokens", "1e5"]
    )
    assert "context: must be a positive integer" in _error_line(
        capsys, ["train", "--width", "32", "--depth", "1", "--heads", "2", "--context", "-8", "--tokens", "1e5"]
    )


def test_missing_data_path(capsys, tmp_path):
    err = _error_line(capsys, ["train", "--width", "32", "--depth", "1", "--heads", "2", "--tokens", "1e5",
                               "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert "--data: no such file or folder" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_budget_too_small_for_one_step(capsys, tmp_path):
    err = _error_line(capsys, ["train", "--width", "32", "--depth", "1", "--heads", "2", "--tokens", "100",
                               "--out", str(tmp_path / "run")])
    assert "less than one optimizer step" in err and "2048 tokens" in err
    assert not (tmp_path / "run").exists()


def test_flops_budget_too_small(capsys, tmp_path):
    err = _error_line(capsys, ["train", "--width", "32", "--depth", "1", "--heads", "2", "--flops", "1e6"])
    assert "--flops" in err and "FLOPs" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so permissions cannot make a folder unreadable")
def test_unwritable_run_directory_permissions(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = _error_line(capsys, ["train", "--width", "32", "--depth", "1", "--heads", "2", "--tokens", "1e5",
                               "--out", str(locked / "run")])
    assert "--out: cannot write" in err


def test_unusable_run_directory(capsys, tmp_path, small_corpus):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = _error_line(capsys, ["train", "--width", "32", "--depth", "1", "--heads", "2", "--tokens", "1e5",
                               "--data", str(small_corpus), "--out", str(blocker / "run")])
    assert "--out: cannot write to run directory" in err


def test_every_command_has_help(capsys):
    from tlc.cli import COMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert capsys.readouterr().out.strip()


def test_repo_sweeps_all_load():
    sweeps = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))
    assert {p.stem for p in sweeps} >= {"tiny", "small", "li2020"}
    for path in sweeps:
        sweep = load_sweep(path)
        assert sweep.runs()


def test_command_summaries_match_their_docstrings():
    import importlib

    from tlc.cli import COMMANDS

    for name, (module_name, summary) in COMMANDS.items():
        doc = importlib.import_module(module_name).run.__doc__
        assert doc and doc.strip().splitlines()[0] == summary, name


def test_help_and_plan_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from tlc.cli import build_parser; build_parser(); build_parser('plan'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_shape_may_set_its_own_learning_rate(tmp_path):
    from tlc.config import sweep_to_dict

    doc = _sweep(shapes=[{"width": 32, "depth": 2, "heads": 2, "lr": "1e-3"}, {"width": 64, "depth": 2, "heads": 2}],
                 train={"tokens": 100000, "lr": 3e-3})
    sweep = parse_sweep(doc)
    assert [r.train.lr for r in sweep.runs()] == [1e-3, 3e-3]
    again = parse_sweep({**sweep_to_dict(sweep)})  # the resolved copy keeps the override
    assert [r.train.lr for r in again.runs()] == [1e-3, 3e-3]
    with pytest.raises(UserError, match=r"shapes\[0\].lr: must be positive"):
        parse_sweep(_sweep(shapes=[{"width": 32, "depth": 2, "heads": 2, "lr": 0}]))


def test_a_shape_may_train_longer_with_its_own_warmup_and_forks():
    from tlc.config import sweep_to_dict

    long = {"width": 32, "depth": 2, "heads": 2, "tokens": 400000, "warmup_frac": 0.0125,
            "cooldowns": [0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]}
    doc = _sweep(shapes=[long, {"width": 64, "depth": 2, "heads": 2}],
                 train={"tokens": 100000, "schedule": "wsd", "cooldowns": [0.125, 0.25, 0.5, 1.0], "evals": 8})
    sweep = parse_sweep(doc, where="s.yaml")
    runs = sweep.runs()
    assert [r.train.tokens for r in runs] == [400000, 100000]
    assert [r.train.warmup_frac for r in runs] == [0.0125, 0.05]
    assert runs[0].train.cooldowns == (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0)
    assert runs[1].train.cooldowns == (0.125, 0.25, 0.5, 1.0)
    again = parse_sweep(sweep_to_dict(sweep), where="again")  # the resolved copy keeps every override
    assert [r.train for r in again.runs()] == [r.train for r in runs]
    # a shape's own settings are checked as its runs will use them, and the error names the shape
    with pytest.raises(UserError, match=r"s.yaml.shapes\[0\].cooldowns: the first fork \(0.03125\) must come after "
                                        r"the warmup \(s.yaml.shapes\[0\].warmup_frac 0.05\)"):
        parse_sweep(_sweep(shapes=[{**long, "warmup_frac": 0.05}], train=doc["train"]), where="s.yaml")
    with pytest.raises(UserError, match=r"s.yaml.shapes\[0\].evals: 4 evaluations are too few for 6"):
        parse_sweep(_sweep(shapes=[long], train={**doc["train"], "evals": 4}), where="s.yaml")
    with pytest.raises(UserError, match=r"shapes\[0\].tokens: an iso-FLOP sweep \(train.budgets\)"):
        parse_sweep(_sweep(shapes=[{"width": 32, "depth": 2, "heads": 2, "tokens": 1000}], train={"budgets": [1e12]}))
    with pytest.raises(UserError, match=r"shapes\[0\].tokens: must be positive"):
        parse_sweep(_sweep(shapes=[{"width": 32, "depth": 2, "heads": 2, "tokens": -5}]))


def test_tiny_sweep_spans_enough_sizes_for_the_demo():
    from tlc.shapes import param_counts

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "tiny.yaml")
    sizes = [param_counts(s).total for s in sweep.shapes]
    assert len(sizes) >= 4 and max(sizes) / min(sizes) >= 8 and len(sweep.seeds) >= 2  # four shapes: the laws converge
    assert all(s.width % 16 == 0 for s in sweep.shapes)  # the demo prunes in 16x16 blocks
    assert {s.depth for s in sweep.shapes} == {2}  # one depth: the laws have no depth term
    for run in sweep.runs():  # every trunk warms up alike and forks every 262K tokens from 262K on, 3 times at least
        t = run.train
        assert t.tokens * t.warmup_frac == pytest.approx(52428.8, rel=1e-5)
        forks = [round(t.tokens * c) for c in t.cooldowns]
        assert len(forks) >= 3 and t.cooldowns[-1] == 1.0
        assert forks == [262144 * (k + 1) for k in range(len(forks) - 1)] + [t.tokens]


def test_tiny_long_sweep_warms_up_and_forks_alike_for_every_shape():
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "tiny_long.yaml")
    assert [(s.width, s.depth) for s in sweep.shapes] == [(16, 1), (32, 1), (32, 2), (48, 2), (64, 2), (96, 2), (128, 2)]
    tokens = []
    for run in sweep.runs():
        t = run.train
        assert t.tokens * t.warmup_frac == pytest.approx(52428.8)  # 102 warmup steps whatever the trunk
        assert t.tokens * t.cooldowns[0] == 131072 and t.cooldowns[-1] == 1.0  # forks from 131K tokens on
        assert all(b == 2 * a for a, b in zip(t.cooldowns, t.cooldowns[1:]))  # at powers of two
        tokens.append(t.tokens)
    assert tokens == sorted(tokens, reverse=True) and max(tokens) == 8 * 2**20  # small shapes train longest


WSD = {"tokens": 100000, "schedule": "wsd", "cooldowns": [0.25, 0.5, 1.0]}


@pytest.mark.parametrize(
    "train, expected",
    [
        ({**WSD, "cooldowns": [0.5, 0.25, 1.0]}, "train.cooldowns: forks must be strictly increasing"),
        ({**WSD, "cooldowns": [0.5, 0.5]}, "train.cooldowns: forks must be strictly increasing"),
        ({**WSD, "cooldowns": [0.5, 1.5]}, "train.cooldowns: every fork must be a fraction of the run's tokens in (0, 1]"),
        ({**WSD, "cooldowns": [0.0, 0.5]}, "in (0, 1]"),
        ({**WSD, "cooldowns": 0.5}, "train.cooldowns: expected a list of numbers"),
        ({**WSD, "cooldowns": []}, "train.cooldowns: schedule wsd needs at least one fork"),
        ({**WSD, "cooldown_frac": -0.1}, "train.cooldown_frac: must be in (0, 1]"),
        ({**WSD, "evals": 2}, "train.evals: 2 evaluations are too few for 3 cooldown branches"),
        ({**WSD, "cooldowns": [0.02, 0.5]}, "train.cooldowns: the first fork (0.02) must come after the warmup"),
        ({"tokens": 100000, "cooldowns": [0.5, 1.0]}, "train.cooldowns: cooldown branches need s.yaml.train.schedule: wsd"),
        ({**WSD, "schedule": "linear"}, "train.schedule: must be one of cosine, wsd"),
        ({"budgets": [1e12, -1]}, "train.budgets: every budget must be a positive number of FLOPs"),
        ({"budgets": [1e12, 1e12]}, "train.budgets: budgets must be distinct"),
        ({"tokens": 1000, "budgets": [1e12]}, "give exactly one budget per run"),
        ({"budgets": [1e6, 2e6]}, "train.budgets: no shape gets 200 optimizer steps at any budget"),
    ],
)
def test_bad_schedule_and_budget_fields_name_the_field(train, expected):
    with pytest.raises(UserError) as info:
        parse_sweep(_sweep(train=train), where="s.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_wsd_forks_that_land_on_one_step_are_refused_before_training(capsys, tmp_path):
    # 8 steps: forks at 0.5 and 0.55 both round to step 4
    err = _error_line(capsys, ["train", "--width", "32", "--depth", "2", "--heads", "2", "--context", "32",
                               "--vocab-size", "300", "--tokens", str(8 * 16 * 32), "--schedule", "wsd",
                               "--cooldowns", "0.5,0.55", "--out", str(tmp_path / "r")])
    assert "train.cooldowns: forks 0.5 and 0.55 both land on step 4 of 8" in err
    assert not (tmp_path / "r").exists()


def test_budgets_name_runs_and_leave_out_shapes_with_too_few_steps():
    from tlc.shapes import flops_per_token

    doc = _sweep(shapes=[{"width": 32, "depth": 2, "heads": 2}, {"width": 64, "depth": 4, "heads": 2}],
                 train={"budgets": [1e10, 1e11], "micro_batch": 4})
    sweep = parse_sweep(doc, where="s.yaml")
    ids = [r.run_id for r in sweep.all_runs()]
    assert ids == ["w32-d2-c1e10-s0", "w32-d2-c1e11-s0", "w64-d4-c1e10-s0", "w64-d4-c1e11-s0"]
    for run in sweep.all_runs():
        tokens = int(run.budget / flops_per_token(run.shape))
        assert run.train.flops == run.budget and sweep.budget_steps(run) == tokens // (4 * 32)
    left_out = dict(sweep.skipped())
    assert sorted(left_out) == ["w64-d4-c1e10-s0"] and "train.budgets runs need at least 200" in left_out["w64-d4-c1e10-s0"]
    assert [r.run_id for r in sweep.runs()] == [i for i in ids if i not in left_out]
    assert sweep.run("w32-d2-c1e11-s0").budget == 1e11
