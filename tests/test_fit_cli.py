"""`tlc fit` end to end on run directories written here, in the contract's format."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from scaling import load_fit
from scaling.synthetic import PRUNING_TRUTH, synthetic_sweep
from tlc.fit import command as fit_command
from tlc.fit.observations import fit_sweep
from tlc.errors import UserError

NON_EMB = "non_embedding"  # write_runs's synthetic losses follow the non-embedding count


def write_runs(
    runs_dir: Path,
    n_runs: int = 6,
    points: int = 12,
    noise: float = 0.002,
    compress: bool = True,
    warmup: int = 0,
    compress_offset: float | None = None,
    final: str | None = "all",
    split: bool = False,
) -> None:
    """A sweep in the run-directory contract, from the synthetic truth in `scaling.synthetic`.

    The synthetic losses are what a run trained to each token count reaches, so by default every
    evaluation is marked final (as if each ended a cooldown branch); ``final="last"`` marks only
    the last, and ``final=None`` writes no final field (runs from before it was logged).

    The first ``warmup`` evaluations of each run are logged with a rising learning rate, and
    with a loss 1 nat above the law's (warmup points do not follow it). With
    ``compress_offset``, the compression stage's evaluation reads that much higher than
    training's, for the dense row and every variant alike, and rows carry dense_val_loss. With
    ``split``, rows carry the loss by target: a quarter of the targets seen earlier in their window
    at 0.6 of the loss, the rest at 1 + 0.4/3 of it."""
    sweep = synthetic_sweep(n_runs=n_runs, points_per_run=points, noise=noise, seed=1, max_params=3e7)
    for run in sweep.runs:
        run_dir = runs_dir / run.run_id
        run_dir.mkdir(parents=True)
        n = int(run.params)
        config = {
            "run_id": run.run_id,
            "shape": {"width": 64, "depth": 2, "heads": 2, "context": 128, "vocab_size": 2048, "arch": "gpt2"},
            "params": {"total": n + 2048 * 64, "non_embedding": n},
            "flops_per_token": 6.0 * n,
            "seed": 0,
        }
        (run_dir / "config.json").write_text(json.dumps(config))
        rows = [{"step": 0, "tokens": 0, "flops": 0.0, "wall_s": 0.0, "train_loss": 7.6, "val_loss": 7.6,
                 "val_bpb": 3.0, "val_acc": 0.0, "lr": 0.0}]
        for step, (tokens, flops, loss) in enumerate(zip(run.tokens, run.train_flops, run.val_loss), 1):
            lr = 1e-3 * step / (warmup + 1) if step <= warmup else 1e-3 * (1.0 - 0.5 * (step - warmup - 1) / points)
            loss = float(loss) + (1.0 if step <= warmup else 0.0)
            rows.append({"step": step * 10, "tokens": float(tokens), "flops": float(flops), "wall_s": step * 1.0,
                         "train_loss": loss * 0.98, "val_loss": loss, "val_bpb": loss / 2.4,
                         "val_acc": 0.3, "lr": lr})
            if split:
                rows[-1].update(val_loss_repeat=0.6 * loss, val_loss_novel=(1 + 0.4 / 3) * loss, val_repeat_share=0.25)
            if final is not None:
                rows[-1]["final"] = final == "all" or step == len(run.tokens)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if compress:
            variants = [v for v in sweep.variants if v.run_id == run.run_id]
            offset = compress_offset or 0.0
            lines = [{"method": "none", "sparsity": 0.0, "bits": 32, "nonzeros": n, "bytes": 4 * n,
                      "val_loss": run.final_loss + offset}]
            lines += [{"method": v.method, "sparsity": v.sparsity, "bits": v.bits,
                       "nonzeros": int(n * (1 - v.sparsity)), "bytes": n, "val_loss": v.val_loss + offset}
                      for v in variants]
            if compress_offset is not None:
                for line in lines:
                    line["dense_val_loss"] = run.final_loss + offset
            (run_dir / "compress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tlc fit")
    fit_command.add_arguments(parser)
    return fit_command.run(parser.parse_args(argv))


def _no_nan(value) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for v in value.values():
            _no_nan(v)
    elif isinstance(value, list):
        for v in value:
            _no_nan(v)


def test_fit_writes_valid_fit_json(tmp_path, capsys):
    write_runs(tmp_path)
    (tmp_path / "report").mkdir()  # a folder that is not a run is ignored
    assert run_cli([str(tmp_path), "--bootstrap", "20"]) == 0
    text = (tmp_path / "fit.json").read_text()
    fit = json.loads(text, parse_constant=lambda c: pytest.fail(f"fit.json holds {c}"))
    _no_nan(fit)
    assert fit["n_runs"] == 6 and fit["n_points"] == 6 * 12  # the step-0 evaluations are skipped
    chinchilla = fit["laws"]["chinchilla"]
    assert chinchilla["status"] in ("converged", "hit_bound", "not_converged")
    assert set(chinchilla["parameters"]) == {"E", "A", "B", "alpha", "beta"}
    for entry in chinchilla["parameters"].values():
        assert entry["low"] <= entry["value"] * 1.0000001 or entry["low"] is None
    assert set(chinchilla["residuals"]) == {p.name for p in tmp_path.iterdir() if (p / "config.json").exists()}
    assert chinchilla["heldout"]["relative_error"] < 0.05
    assert "a" in fit["allocation"]["chinchilla"] and "magnitude" in fit["compression"]["pruning"]
    assert fit["compression"]["int8"] is not None
    out = capsys.readouterr().out
    assert "chinchilla" in out and "alpha" in out and "leave-largest-out" in out
    assert set(fit["laws"]) == {"chinchilla", "kaplan", "power_sum", "overtraining"} and "overtraining" in out
    # each compression model's line ends with the held-out error its choice was ranked by
    magnitude = fit["compression"]["pruning"]["magnitude"]
    line = next(row for row in out.splitlines() if row.startswith("pruning magnitude ("))
    error = magnitude["heldout_errors"][magnitude["candidate"]]
    between = magnitude["sparsity_heldout_errors"][magnitude["candidate"]]
    assert line.endswith(f"; held-out error {error:.2%} (the larger of leave-largest-out and "
                         f"leave-one-sparsity-out, {between:.2%})") and between <= error
    assert next(row for row in out.splitlines() if row.startswith("int8 (")).endswith("(leave-largest-out)")
    fit["preferred_law"]["name"] = "power_sum"  # a law without a closed-form optimum gets its local exponents
    assert "compute-optimal (power_sum, the preferred law; local exponents at" in fit_command.format_table(fit, tmp_path)
    mean, low, high = load_fit(fit).predict_loss(1e7, 2e8, method="magnitude", sparsity=0.5, int8=True)
    assert low <= mean <= high
    assert not list(tmp_path.glob(".fit.json*"))  # the temporary file was renamed into place
    assert fit["loss_split"] is None and "loss on new targets" not in out  # runs without the split of the loss


def test_fit_refits_the_preferred_law_to_each_part_of_the_loss(tmp_path, capsys):
    write_runs(tmp_path, compress=False, split=True)
    assert run_cli([str(tmp_path), "--bootstrap", "0"]) == 0
    fit = json.loads((tmp_path / "fit.json").read_text())
    split = fit["loss_split"]
    assert split["form"] == fit["preferred_law"]["name"] and split["share"] == pytest.approx(0.25)
    assert split["parts"]["repeat"]["rms"] < 0.01 and split["parts"]["novel"]["rms"] < 0.01
    assert not split["copying_under_way"]  # both parts follow the law: nothing sets in at the runs' ends
    out = capsys.readouterr().out
    assert "loss on targets seen earlier in their window (25% of targets)" in out
    assert "loss on new targets (75% of targets)" in out and "learning to copy" not in out
    repeat = load_fit(fit).loss_split["parts"]["repeat"]["parameters"]
    assert repeat == split["parts"]["repeat"]["parameters"]


def test_finished_points_are_fitted_by_default(tmp_path, capsys):
    write_runs(tmp_path, n_runs=10, compress=False, final="last")
    fit = fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)
    assert fit["n_points"] == 10 and fit["final_only"] and fit["points"] == "finished"
    everything = fit_sweep(tmp_path, bootstrap=0, all_points=True, size=NON_EMB)
    assert everything["n_points"] == 10 * 12 and everything["points"] == "all"
    assert "overestimates" in everything["notes"][0]
    assert run_cli([str(tmp_path), "--bootstrap", "0", "--all-points"]) == 0
    assert "--all-points overestimates the loss at small D" in capsys.readouterr().out


def test_runs_without_final_marks_count_their_last_evaluation(tmp_path):
    write_runs(tmp_path, n_runs=10, compress=False, final=None)
    assert fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)["n_points"] == 10


def test_branch_ends_are_finished_points_and_not_curve_points(tmp_path):
    write_runs(tmp_path, n_runs=6, compress=False, final="last")
    for metrics in tmp_path.glob("*/metrics.jsonl"):  # a wsd run: two branch ends below the trunk
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        for row in (rows[4], rows[8]):
            rows.append({**row, "step": row["step"] + 3, "tokens": row["tokens"] * 1.2, "flops": row["flops"] * 1.2,
                         "val_loss": row["val_loss"] - 0.05, "final": True, "fork_step": row["step"]})
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit = fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)
    assert fit["n_points"] == 6 * 3 and all(r["finished_points"] == 3 for r in fit["runs"])
    assert all(r["n_points"] == 12 for r in fit["runs"])  # the learning curve: trunk evaluations only


def test_equal_tokens_leave_the_law_unidentified_and_say_what_is_missing(tmp_path, capsys):
    write_runs(tmp_path, n_runs=6, compress=False, final="last")
    for metrics in tmp_path.glob("*/metrics.jsonl"):  # every run ends at the same token count
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rows[-1]["tokens"] = 1e8
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli([str(tmp_path), "--bootstrap", "0"]) == 0
    fit = json.loads((tmp_path / "fit.json").read_text())
    for law in fit["laws"].values():
        assert law["status"] == "unidentified" and law["parameters"] is None and "1 distinct token count" in law["reason"]
    message = "every run has the same tokens, so D is not identified: add train.cooldowns or train.budgets"
    assert fit["design"] == f"chinchilla is unidentified: {message}"
    out = capsys.readouterr().out
    assert sum(message in line for line in out.splitlines()) == 1
    assert fit["preferred_law"]["name"] is None and "error" in fit["allocation"]["chinchilla"]
    from tlc.report.build import write_report

    report = write_report(tmp_path)  # the report shows the status, its reason and the missing design
    for page in (report.read_text(), (report.parent / "report.md").read_text()):
        assert "unidentified" in page and "1 distinct token count" in page and message in page


def test_a_law_whose_prediction_is_loose_is_unidentified(tmp_path):
    write_runs(tmp_path, n_runs=5, points=3, noise=0.2, compress=False)  # 20% noise over a narrow design
    fit = fit_sweep(tmp_path, bootstrap=30, size=NON_EMB)
    chinchilla = fit["laws"]["chinchilla"]
    assert chinchilla["status"] == "unidentified" and chinchilla["optimizer_status"] == "converged"
    decade = chinchilla["decade_prediction"]
    assert decade["compute_factor"] == 10 and decade["half_width"] > decade["drop"] > 0
    assert chinchilla["reason"].startswith("the prediction is not pinned: the loss at 10x the largest compute")
    assert fit["design"].startswith("chinchilla is unidentified: the prediction is not pinned")
    assert "widen the range of model sizes" in fit["design"]
    assert fit["preferred_law"]["name"] != "chinchilla"


def test_refuses_a_single_run(tmp_path):
    write_runs(tmp_path, n_runs=1, compress=False)
    with pytest.raises(UserError, match="1 run"):
        fit_sweep(tmp_path, size=NON_EMB)


def test_the_allocation_uses_the_runs_own_flops_per_token(tmp_path):
    write_runs(tmp_path, compress=False)
    for config in tmp_path.glob("*/config.json"):  # vocabulary projection and attention: 2x 6N
        data = json.loads(config.read_text())
        data["flops_per_token"] = 12.0 * data["params"]["non_embedding"]
        config.write_text(json.dumps(data))
    for metrics in tmp_path.glob("*/metrics.jsonl"):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        for row in rows:
            row["flops"] *= 2.0
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit = fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)
    assert fit["flops"]["k"] == pytest.approx(12.0, rel=1e-4) and fit["flops"]["gamma"] == pytest.approx(1.0, rel=1e-4)
    assert fit["allocation"]["flops_per_token"] == {"k": fit["flops"]["k"], "gamma": fit["flops"]["gamma"]}
    n_opt, d_opt = load_fit(fit).compute_optimal(1e18)
    assert 12.0 * n_opt * d_opt == pytest.approx(1e18)


def test_refuses_missing_or_empty_dir(tmp_path):
    with pytest.raises(UserError, match="RUNS_DIR: .* is not a directory"):
        fit_sweep(tmp_path / "nope", size=NON_EMB)
    with pytest.raises(UserError, match="no runs under"):
        fit_sweep(tmp_path, size=NON_EMB)


def test_untrained_runs_are_skipped_and_listed(tmp_path, capsys):
    write_runs(tmp_path, compress=False)
    waiting = tmp_path / "w999-d9-s0"
    waiting.mkdir()
    config = {"run_id": "w999-d9-s0", "params": {"total": 2 * 10**9, "non_embedding": 10**9}}
    (waiting / "config.json").write_text(json.dumps(config))
    assert run_cli([str(tmp_path), "--bootstrap", "0"]) == 0
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["n_runs"] == 6 and fit["skipped_runs"] == ["w999-d9-s0: no metrics.jsonl yet"]
    assert "skipped w999-d9-s0" in capsys.readouterr().out


def test_refuses_a_sweep_with_nothing_trained(tmp_path):
    (tmp_path / "w64-d2-s0").mkdir()
    (tmp_path / "w64-d2-s0" / "config.json").write_text(json.dumps({"params": {"non_embedding": 1000}}))
    (tmp_path / "w64-d2-s0" / "metrics.jsonl").write_text(json.dumps({"step": 0, "tokens": 0, "flops": 0,
                                                                       "val_loss": 7.0}) + "\n")
    with pytest.raises(UserError, match="no run under .* has an evaluation yet .*no evaluation after step 0"):
        fit_sweep(tmp_path, size=NON_EMB)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    write_runs(tmp_path, compress=False)
    metrics = sorted(tmp_path.glob("*/metrics.jsonl"))[0]
    _append(metrics, "{not json\n")
    with pytest.raises(UserError, match=rf"{metrics.name}:14: not valid JSON"):
        fit_sweep(tmp_path, size=NON_EMB)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"step": 999, "tokens": 1e9, "flops": 1e18, "val_loss": float("nan")}, "val_loss must be a finite number"),
        ({"step": 999, "tokens": 1e9, "flops": 1e18, "val_loss": -1.0}, "val_loss must be > 0"),
        ({"step": 999, "tokens": 1e9, "val_loss": 3.0}, "flops must be a finite number"),
    ],
)
def test_bad_metric_values_are_user_errors(tmp_path, row, message):
    write_runs(tmp_path, compress=False)
    metrics = sorted(tmp_path.glob("*/metrics.jsonl"))[0]
    _append(metrics, json.dumps(row) + "\n")  # json writes NaN for nan; the reader must refuse it
    with pytest.raises(UserError, match=message):
        fit_sweep(tmp_path, size=NON_EMB)


def test_bad_compress_line_is_a_user_error(tmp_path):
    write_runs(tmp_path)
    compress = sorted(tmp_path.glob("*/compress.jsonl"))[0]
    _append(compress, json.dumps({"method": "magnitude", "sparsity": 1.5, "bits": 32, "val_loss": 4.0}) + "\n")
    with pytest.raises(UserError, match=r"compress.jsonl:\d+: sparsity must be in \[0, 1\)"):
        fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)


def test_missing_non_embedding_count_is_a_user_error(tmp_path):
    write_runs(tmp_path, compress=False)
    config = sorted(tmp_path.glob("*/config.json"))[0]
    data = json.loads(config.read_text())
    del data["params"]["non_embedding"]
    config.write_text(json.dumps(data))
    with pytest.raises(UserError, match="config.json: non_embedding must be a finite number"):
        fit_sweep(tmp_path, size=NON_EMB)


def test_negative_bootstrap_is_a_user_error(tmp_path):
    write_runs(tmp_path, compress=False)
    with pytest.raises(UserError, match="--bootstrap"):
        run_cli([str(tmp_path), "--bootstrap", "-1"])


def test_tlc_fit_through_the_cli_entry_point(tmp_path, capsys):
    cli = pytest.importorskip("tlc.cli")
    if "fit" not in cli.COMMANDS:
        pytest.skip("tlc fit is not wired into tlc.cli yet")
    write_runs(tmp_path, n_runs=1, compress=False)
    assert cli.main(["fit", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RUNS_DIR" in err and "1 run(s)" in err
    write_runs(tmp_path / "more", n_runs=4, compress=False)
    assert cli.main(["fit", str(tmp_path / "more"), "--bootstrap", "5"]) == 0
    assert json.loads((tmp_path / "more" / "fit.json").read_text())["n_runs"] == 4


def test_warmup_evaluations_are_left_out_by_default(tmp_path, capsys):
    write_runs(tmp_path, n_runs=6, points=12, warmup=4, compress=False)
    assert run_cli([str(tmp_path), "--bootstrap", "0", "--size", "non-embedding"]) == 0
    assert "24 warmup evaluations left out" in capsys.readouterr().out
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["n_points"] == 6 * (12 - 4) and fit["warmup_points_skipped"] == 6 * 4
    assert fit["laws"]["chinchilla"]["heldout"]["relative_error"] < 0.02
    assert run_cli([str(tmp_path), "--bootstrap", "0", "--include-warmup", "--size", "non-embedding"]) == 0
    assert "warmup evaluations left out" not in capsys.readouterr().out
    kept = json.loads((tmp_path / "fit.json").read_text())
    assert kept["n_points"] == 6 * 12 and kept["warmup_points_skipped"] == 0
    # Warmup points 1 nat above the law pull the fit away from it.
    assert kept["laws"]["chinchilla"]["objective"] > 10 * fit["laws"]["chinchilla"]["objective"]


def test_lr_must_be_a_number(tmp_path):
    write_runs(tmp_path, compress=False)
    metrics = sorted(tmp_path.glob("*/metrics.jsonl"))[0]
    _append(metrics, json.dumps({"step": 999, "tokens": 1e9, "flops": 1e18, "val_loss": 3.0, "lr": "high"}) + "\n")
    with pytest.raises(UserError, match="lr must be a finite number, got 'high'"):
        fit_sweep(tmp_path, size=NON_EMB)


@pytest.mark.parametrize("with_dense_column", [True, False])
def test_compression_baseline_is_the_compression_stage_dense_loss(tmp_path, with_dense_column):
    # The compression stage's evaluation reads 0.3 nats above training's; the added loss must
    # be taken against its own dense row (or dense_val_loss), not the last metrics line.
    write_runs(tmp_path, noise=0.0, compress_offset=0.3)
    if not with_dense_column:
        for path in tmp_path.glob("*/compress.jsonl"):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "dense_val_loss"}) + "\n"
                                    for r in rows))
    fit = fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)
    magnitude = fit["compression"]["pruning"]["magnitude"]
    assert magnitude["candidate"] == "odds_power"
    for name, value in PRUNING_TRUTH.items():
        assert magnitude["parameters"][name]["value"] == pytest.approx(value, rel=1e-3), name


def test_n_counts_every_parameter_by_default_and_fit_json_says_so(tmp_path, capsys):
    write_runs(tmp_path, compress=False)
    total, non_embedding = fit_sweep(tmp_path, bootstrap=0), fit_sweep(tmp_path, bootstrap=0, size=NON_EMB)
    configs = {p.parent.name: json.loads(p.read_text())["params"] for p in tmp_path.glob("*/config.json")}
    assert {r["run_id"]: r["params"] for r in total["runs"]} == {k: v["total"] for k, v in configs.items()}
    assert {r["run_id"]: r["params"] for r in non_embedding["runs"]} == {
        k: v["non_embedding"] for k, v in configs.items()}
    assert total["size"]["definition"] == "total" and non_embedding["size"]["definition"] == "non_embedding"
    assert run_cli([str(tmp_path), "--size", "non-embedding", "--bootstrap", "0"]) == 0
    assert "outside the token and position embeddings" in capsys.readouterr().out
    with pytest.raises(UserError, match="--size: 'all' is not a parameter count; use one of total, non_embedding"):
        fit_sweep(tmp_path, size="all")


def test_skip_unchanged_refits_only_when_a_run_file_an_option_or_the_code_changed(tmp_path, capsys, monkeypatch):
    from tlc.fit import inputs

    write_runs(tmp_path, n_runs=3, points=4, compress=False)
    args = [str(tmp_path), "--bootstrap", "0", "--skip-unchanged"]
    assert run_cli(args) == 0 and "up to date" not in capsys.readouterr().out
    fitted = (tmp_path / "fit.json").read_bytes()
    assert json.loads(fitted)["inputs"]["format"] == inputs.FORMAT
    assert run_cli(args) == 0 and "is up to date" in capsys.readouterr().out
    assert (tmp_path / "fit.json").read_bytes() == fitted  # left alone
    # a file the fit does not read (a saved model's config) changes nothing
    model = sorted(tmp_path.glob("*/config.json"))[0].parent / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert run_cli(args) == 0 and "is up to date" in capsys.readouterr().out
    # another option: refitted
    assert run_cli([*args, "--seed", "1"]) == 0 and "up to date" not in capsys.readouterr().out
    assert run_cli([*args, "--seed", "1"]) == 0 and "is up to date" in capsys.readouterr().out
    # a run file changed (one evaluation more): refitted, and the fit sees it
    metrics = sorted(tmp_path.glob("*/metrics.jsonl"))[0]
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows[:-1]) + "\n")
    assert run_cli([*args, "--seed", "1"]) == 0 and "up to date" not in capsys.readouterr().out
    assert json.loads((tmp_path / "fit.json").read_text())["n_points"] == 3 * 4 - 1
    # the fitting code changed: refitted
    code = tmp_path / "code.py"
    code.write_text("# a law form edited\n")
    monkeypatch.setattr(inputs, "_code_files", lambda: [code])
    assert run_cli([*args, "--seed", "1"]) == 0 and "up to date" not in capsys.readouterr().out
    # a table: the flag is refused
    table = tmp_path / "runs.csv"
    table.write_text("params,tokens,loss\n1e6,2e7,3.0\n")
    with pytest.raises(UserError, match="--skip-unchanged"):
        run_cli([str(table), "--skip-unchanged"])
