"""``tlc compress`` end to end on a tiny trained run: rows, artifacts, resume, errors, CIE, buckets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_SHAPE, run_tlc
from tlc.cli import main
from tlc.compress.pipeline import ROWS, add_cie, find_runs, load_eval
from tlc.compress.store import load_variant
from tlc.compress.variants import CompressSettings, parse_methods, parse_sparsities, variant_specs
from tlc.errors import UserError
from tlc.compress.evaluate import compression_identified_exemplars, frequency_buckets, modal_prediction
from tlc.io import read_jsonl

# ONNX Runtime timing (--ort-latency) is tested on the export fixture's run, where it costs less
COMPRESS_ARGS = ["--no-ort-latency", "--methods", "magnitude,block,structured,2:4,gradual", "--sparsity", "0.5",
                 "--recovery-steps", "4", "--block-size", "16", "--latency-repeats", "1"]
EXPECTED_VARIANTS = {"dense", "none-int8", "magnitude-s50", "magnitude-s50-int8", "block16-s50", "block16-s50-int8",
                     "structured-s50", "structured-s50-int8", "2of4-s50", "2of4-s50-int8", "gradual-s50",
                     "gradual-s50-int8"}
REQUIRED = {"variant": str, "method": str, "sparsity": float, "bits": int, "nonzeros": int, "bytes": int,
            "latency_ms_b1": float, "latency_ms_b32": float, "latency_kind": str, "device": str, "val_loss": float,
            "val_bpb": float, "val_acc": float, "val_loss_repeat": float, "val_loss_novel": float,
            "val_repeat_share": float, "loss_by_freq_bucket": list, "disagreement": dict, "dense_val_loss": float}


@pytest.fixture(scope="module")
def compressed_sweep(tmp_path_factory, small_corpus):
    sweep = tmp_path_factory.mktemp("sweep")
    run_tlc("train", *TINY_SHAPE, "--tokens", "16384", "--micro-batch", "8", "--evals", "3", "--precision", "fp32",
            "--eval-tokens", "2048", "--data", small_corpus, "--out", sweep / "w32-d2-s0", "--no-progress", check=True)
    proc = run_tlc("compress", sweep, *COMPRESS_ARGS, check=True)
    return sweep, proc


def test_compress_writes_one_valid_row_per_variant(compressed_sweep):
    sweep, _ = compressed_sweep
    rows = read_jsonl(sweep / "w32-d2-s0" / ROWS)
    assert {r["variant"] for r in rows} == EXPECTED_VARIANTS and len(rows) == len(EXPECTED_VARIANTS)
    by_id = {r["variant"]: r for r in rows}
    dense = by_id["dense"]
    for row in rows:
        for field, kind in REQUIRED.items():
            assert isinstance(row[field], kind if kind is not float else (int, float)), (row["variant"], field)
        assert row["bits"] in (8, 32) and 0 <= row["sparsity"] < 1
        assert len(row["loss_by_freq_bucket"]) == 5 and sum(row["freq_bucket_tokens"]) > 0
        assert row["dense_val_loss"] == dense["val_loss"]
        share = row["val_repeat_share"]
        assert 0 < share < 1 and row["val_loss"] == pytest.approx(
            share * row["val_loss_repeat"] + (1 - share) * row["val_loss_novel"], rel=1e-9)
        assert row["disagreement"]["kind"] == "disagreement_not_cie"
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b32"] > 0
        assert (sweep / "w32-d2-s0" / row["artifact"] / "model.safetensors").stat().st_size == row["bytes"]
    assert dense["method"] == "none" and dense["sparsity"] == 0 and dense["disagreement"]["count"] == 0
    assert by_id["none-int8"]["method"] == "none" and by_id["none-int8"]["bits"] == 8
    assert by_id["none-int8"]["int8_path"] in ("torch_dynamic", "bitsandbytes")
    for variant in ("magnitude-s50", "block16-s50", "2of4-s50", "gradual-s50"):
        assert by_id[variant]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert by_id[variant]["bytes"] < dense["bytes"]  # stored sparse, not as zeros
        assert by_id[variant + "-int8"]["bytes"] < by_id[variant]["bytes"]
        assert by_id[variant]["nonzeros"] < dense["nonzeros"]
        assert by_id[variant]["latency_kind"] in ("dense_masked", "cuda_ext_bsr")
    assert by_id["structured-s50"]["latency_kind"] == "dense"
    block = by_id["block16-s50"]
    if block["latency_kind"] == "cuda_ext_bsr":  # each batch size timed as cuda_ext converts for its token count
        assert block["latency_note"].startswith("b1: cuda_ext ") and "; b32: cuda_ext " in block["latency_note"]
        assert "layers as blocks" in block["latency_note"]
    assert by_id["block16-s50"]["block"] == 16
    assert by_id["gradual-s50"]["recovery_steps"] == 4
    # the dense row is the model training saved: same loss as training's last evaluation (fp32 run)
    last = read_jsonl(sweep / "w32-d2-s0" / "metrics.jsonl")[-1]
    assert dense["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert dense["val_acc"] == pytest.approx(last["val_acc"], abs=1e-6)
    for part in ("val_loss_repeat", "val_loss_novel", "val_repeat_share"):
        assert dense[part] == pytest.approx(last[part], rel=1e-5)
    assert by_id["magnitude-s50"]["disagreement"]["count"] > 0


def test_saved_variants_reload_to_the_evaluated_outputs(compressed_sweep):
    import torch

    from tlc.train.data import load_corpus, load_tokens, val_offsets
    from tlc.compress.evaluate import evaluate_positions
    from tlc.train.evaluation import eval_batch_size

    sweep, _ = compressed_sweep
    run = sweep / "w32-d2-s0"
    config = json.loads((run / "config.json").read_text())
    tokens = load_tokens(load_corpus(config["data"]["source"]), 300)
    # the pipeline's first evaluation batch (int8 dynamic quantization scales activations over a whole batch)
    batch = eval_batch_size(config["train"]["micro_batch"], 32)
    offsets = val_offsets(len(tokens.val), 32, config["train"]["eval_tokens"])[:batch]
    buckets = np.zeros(300, dtype=np.int64)
    for variant in ("structured-s50", "block16-s50-int8", "2of4-s50"):
        model = load_variant(run / "compressed" / variant)
        _, loss, predictions = evaluate_positions(model, tokens, offsets, 32, batch, torch.device("cpu"), buckets)
        saved_loss, saved_predictions = load_eval(run / "compressed" / variant)
        np.testing.assert_array_equal(predictions, saved_predictions[: predictions.size])
        np.testing.assert_allclose(loss, saved_loss[: loss.size], rtol=1e-5, atol=1e-6)


def test_a_second_run_resumes_and_skips_finished_variants(compressed_sweep, capsys):
    sweep, _ = compressed_sweep
    run = sweep / "w32-d2-s0"
    rows = read_jsonl(run / ROWS)
    artifact = run / "compressed" / "magnitude-s50" / "model.safetensors"
    stamp = artifact.stat().st_mtime_ns
    # drop one finished line: only that variant is made again
    kept = [r for r in rows if r["variant"] != "2of4-s50-int8"]
    (run / ROWS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    capsys.readouterr()
    assert main(["compress", str(sweep), *COMPRESS_ARGS]) == 0
    out = capsys.readouterr().out
    assert "2of4-s50-int8" in out and "magnitude-s50 " not in out
    again = read_jsonl(run / ROWS)
    assert len(again) == len(rows) and {r["variant"] for r in again} == EXPECTED_VARIANTS
    assert artifact.stat().st_mtime_ns == stamp
    assert main(["compress", str(sweep), *COMPRESS_ARGS]) == 0
    assert f"all {len(rows)} variants done" in capsys.readouterr().out


def test_workers_compress_runs_side_by_side_to_the_same_rows(compressed_sweep, tmp_path, capsys, monkeypatch):
    sweep, _ = compressed_sweep
    ours = {r["variant"]: r for r in read_jsonl(sweep / "w32-d2-s0" / ROWS)}
    for name in ("w32-d2-s0", "w32-d2-s1"):
        shutil.copytree(sweep / "w32-d2-s0", tmp_path / name, ignore=shutil.ignore_patterns("compress*"))
    args = ["--no-ort-latency", "--sparsity", "0.5", "--no-int8", "--latency-repeats", "1", "--workers", "2"]
    assert main(["compress", str(tmp_path), "--methods", "magnitude", *args]) == 0
    for name in ("w32-d2-s0", "w32-d2-s1"):
        rows = {r["variant"]: r for r in read_jsonl(tmp_path / name / ROWS)}
        assert set(rows) == {"dense", "magnitude-s50"}
        for variant, row in rows.items():  # the same model, the same loss and bytes as compressed in one process
            assert row["val_loss"] == pytest.approx(ours[variant]["val_loss"], rel=1e-6), variant
            assert row["bytes"] == ours[variant]["bytes"]
    # run again: nothing is left to make, so no worker starts (each would import torch for nothing)
    import tlc.compress.command as command

    monkeypatch.setattr(command, "compress_side_by_side", lambda *a: pytest.fail("workers started for finished runs"))
    capsys.readouterr()
    assert main(["compress", str(tmp_path), "--methods", "magnitude", *args]) == 0
    assert capsys.readouterr().out.count("all 2 variants done") == 2
    monkeypatch.undo()
    # a worker's error reaches the user as the one-line error the flag gets without workers
    capsys.readouterr()
    assert main(["compress", str(tmp_path), "--methods", "block", "--block-size", "64", *args]) == 2
    err = capsys.readouterr().err
    assert "--block-size: 64 does not divide" in err and len(err.strip().splitlines()) == 1, err


def test_passes_inside_shared_workers_use_the_same_worker_processes(compressed_sweep, tmp_path):
    """tlc demo's three compress passes start their workers once; the workers end with the block."""
    import tlc.compress.command as command

    sweep, _ = compressed_sweep
    for name in ("w32-d2-s0", "w32-d2-s1"):
        shutil.copytree(sweep / "w32-d2-s0", tmp_path / name, ignore=shutil.ignore_patterns("compress*"))
    args = ["--no-ort-latency", "--sparsity", "0.5", "--no-int8", "--latency-repeats", "1", "--workers", "2"]
    pools = []
    with command.shared_workers():
        for methods in ("magnitude", "wanda"):
            assert main(["compress", str(tmp_path), "--methods", methods, *args]) == 0
            pools.append(command._shared["pool"])
        workers = set(pools[0]._processes)
    assert pools[0] is pools[1] and len(workers) == 2
    assert "pool" not in command._shared and pools[0]._processes is None  # shut down with the block
    for name in ("w32-d2-s0", "w32-d2-s1"):
        rows = {r["variant"] for r in read_jsonl(tmp_path / name / ROWS)}
        assert rows == {"dense", "magnitude-s50", "wanda-s50"}

@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], "--sparsity: each level must be in [0, 1), got 1.0"),
    (["--sparsity", "-0.1"], "--sparsity: each level must be in [0, 1)"),
    (["--sparsity", "half"], "--sparsity: expected numbers in [0, 1)"),
    (["--methods", "magnitude,lottery"], "--methods: unknown method 'lottery'; valid: magnitude"),
    (["--block-size", "64"], "--block-size: 64 does not divide the 96x32 weight"),
    (["--block-size", "24"], "--block-size: must be one of 16, 32, 64"),
    (["--recovery-steps", "-1"], "--recovery-steps: must be >= 0"),
    (["--workers", "0"], "--workers: must be at least 1, got 0"),
])
def test_bad_arguments_get_one_line_errors_naming_the_flag(compressed_sweep, tmp_path, capsys, args, message):
    sweep, _ = compressed_sweep
    target = tmp_path / "copy"
    shutil.copytree(sweep / "w32-d2-s0", target / "w32-d2-s0", ignore=shutil.ignore_patterns("compress*"))
    capsys.readouterr()
    assert main(["compress", str(target), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (target / "w32-d2-s0" / ROWS).exists()


def test_a_folder_without_trained_runs_is_a_user_error(tmp_path):
    (tmp_path / "half-trained").mkdir()
    (tmp_path / "half-trained" / "config.json").write_text("{}")
    proc = run_tlc("compress", tmp_path)  # as a user sees it: one line, exit status 2
    assert proc.returncode == 2 and "RUNS_DIR: no trained runs under" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(UserError, match="RUNS_DIR: .* is not a folder"):
        find_runs(tmp_path / "missing")


def test_several_seeds_of_a_shape_get_compression_identified_exemplars(compressed_sweep, tmp_path):
    sweep, _ = compressed_sweep
    seeds = []
    for name in ("w32-d2-s0", "w32-d2-s1"):  # a second seed: same shape, settings and data
        shutil.copytree(sweep / "w32-d2-s0", tmp_path / name)
        seeds.append(tmp_path / name)
    plain = {r["variant"]: r["disagreement"] for r in read_jsonl(seeds[0] / ROWS)}
    assert add_cie(seeds) == 2 * len(EXPECTED_VARIANTS)
    written = [(s / ROWS).read_bytes() for s in seeds]
    assert add_cie(seeds) == 0 and [(s / ROWS).read_bytes() for s in seeds] == written  # done: nothing redone
    for row in read_jsonl(seeds[1] / ROWS):
        cie = row["disagreement"]
        assert cie["kind"] == "cie" and cie["seeds"] == 2
        # identical seeds: the modal predictions are each seed's own, so CIE equals plain disagreement
        assert cie["count"] == plain[row["variant"]]["count"]
        assert row["disagreement_vs_own_dense"] == plain[row["variant"]]


def test_cie_uses_the_modal_prediction_of_each_population():
    dense = [np.array([1, 2, 3, 4]), np.array([1, 2, 3, 5]), np.array([1, 9, 3, 4])]
    compressed = [np.array([1, 2, 7, 4]), np.array([1, 2, 7, 4]), np.array([8, 2, 3, 4])]
    np.testing.assert_array_equal(modal_prediction(dense), [1, 2, 3, 4])
    loss = np.array([0.5, 1.0, 2.0, 4.0], dtype=np.float32)
    cie = compression_identified_exemplars(compressed, dense, loss, loss / 2)
    assert cie["count"] == 1 and cie["loss"] == 2.0 and cie["dense_loss"] == 1.0  # only position 2 flips


def test_modal_prediction_matches_a_count_per_position_with_ties_to_the_smallest_id():
    rng = np.random.default_rng(0)
    for seeds in (1, 2, 3, 5):
        population = [rng.integers(0, 4, size=300) for _ in range(seeds)]  # few ids: many ties
        stacked = np.stack(population)
        expected = []
        for column in stacked.T:
            ids, counts = np.unique(column, return_counts=True)  # sorted ids: argmax takes the smallest of a tie
            expected.append(ids[np.argmax(counts)])
        np.testing.assert_array_equal(modal_prediction(population), expected)


def test_frequency_buckets_hold_equal_training_mass_rarest_first():
    rng = np.random.default_rng(0)
    stream = rng.zipf(1.3, size=200_000) % 1000
    buckets = frequency_buckets(stream, 1000)
    counts = np.bincount(stream, minlength=1000)
    mass = np.array([counts[buckets == b].sum() for b in range(5)]) / counts.sum()
    assert np.all(np.abs(mass - 0.2) < 0.08), mass
    assert counts[buckets == 0].max() <= counts[buckets == 4].min()  # bucket 0 is the rarest


def test_settings_parse_and_list_variants():
    assert parse_methods("2:4, gradual,2:4") == ("2:4", "gradual")
    assert parse_sparsities("0.5,0.9,0.5") == (0.5, 0.9)
    with pytest.raises(UserError, match="--methods: no method given"):
        parse_methods(" , ")
    ids = [s.id for s in variant_specs(CompressSettings(methods=("2:4", "block"), sparsities=(0.5, 0.9), int8=False))]
    assert ids == ["dense", "2of4-s50", "block32-s50", "block32-s90"]
