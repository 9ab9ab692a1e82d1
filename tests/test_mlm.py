"""The masked-LM objective: masking statistics, the encoder's counts, a short run through train, compress and
export, sweep files with ``objective: mlm``, and fits that refuse to mix objectives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_SHAPE, run_tlc, tlc_in_process
from tlc.architecture import ModelShape, flops_per_token, mask_token_id, param_counts
from tlc.errors import UserError
from tlc.io import read_jsonl
from tlc.train.masking import IGNORE, mask_windows, masked_count

MLM = ModelShape(width=32, depth=2, heads=2, context=32, vocab_size=300, objective="mlm")


def test_masking_picks_15_percent_then_80_10_10():
    windows = np.random.default_rng(0).integers(0, 300, size=(400, 128))
    inputs, labels = mask_windows(windows, 300, salt=(1, 2))
    chosen = labels != IGNORE
    assert (chosen.sum(axis=1) == masked_count(128)).all() and masked_count(128) == 19  # round(0.15 * 128)
    assert (labels[chosen] == windows[chosen]).all()  # labels are the original tokens
    assert (inputs[~chosen] == windows[~chosen]).all()  # nothing else changes
    masked = inputs[chosen] == 300
    unchanged = inputs[chosen] == windows[chosen]
    replaced = ~masked & ~unchanged
    n = chosen.sum()  # 7600 positions: a share's standard error is under 0.5 points
    assert abs(masked.sum() / n - 0.8) < 0.02
    # a random replacement hits the original token 1 time in 300, so the two 10% shares are nearly exact
    assert abs(unchanged.sum() / n - 0.1) < 0.015 and abs(replaced.sum() / n - 0.1) < 0.015
    assert inputs[chosen][replaced].max() < 300  # random tokens come from the BPE vocabulary, never <mask>/<pad>
    again, _ = mask_windows(windows, 300, salt=(1, 2))
    other, _ = mask_windows(windows, 300, salt=(1, 3))
    assert (again == inputs).all() and (other != inputs).any()  # a pure function of the salt and the windows


def test_encoder_counts_match_the_built_model_and_the_profiler():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.profiling.flops_profiler import get_model_profile
    from transformers import BertForMaskedLM

    from tlc.artifact import model_tensors
    from tlc.train.model import build_model

    model = build_model(MLM)
    assert isinstance(model, BertForMaskedLM) and model.config.vocab_size == 302  # <mask> and <pad> appended
    counts = param_counts(MLM)
    assert sum(p.numel() for p in model.parameters()) == counts.total
    state = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "cls.predictions.decoder.weight"
             and k != "cls.predictions.decoder.bias"}  # the tied decoder is stored once, as the embedding
    assert state == {t.name: t.shape[::-1] if t.conv1d else t.shape for t in model_tensors(MLM)}
    ids = torch.randint(0, 300, (2, MLM.context))
    forward, _, _ = get_model_profile(model, kwargs={"input_ids": ids}, print_profile=False, as_string=False)
    measured = 3 * forward / ids.numel()
    assert abs(flops_per_token(MLM) - measured) / measured < 0.10, (flops_per_token(MLM), measured)


def test_a_sweep_file_with_objective_mlm_loads(tmp_path):
    from tlc.config import load_sweep

    sweep = load_sweep(REPO / "sweeps" / "mlm-tiny.yaml")
    assert {s.objective for s in sweep.shapes} == {"mlm"} and all(r.run_id.startswith("mlm-") for r in sweep.runs())
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nobjective: mlm\nmodel: {arch: llama}\nshapes: [{width: 32, depth: 1, heads: 2}]\n"
                    "train: {tokens: 1000}\n")
    with pytest.raises(UserError, match=r"shapes\[0\]\.arch: objective mlm"):
        load_sweep(path)
    path.write_text("name: x\nobjective: bidirectional\nshapes: [{width: 32, depth: 1, heads: 2}]\n"
                    "train: {tokens: 1}\n")
    with pytest.raises(UserError, match=r"objective: unknown objective 'bidirectional'; valid: clm, mlm"):
        load_sweep(path)


def test_a_fit_refuses_to_mix_causal_and_masked_runs(tmp_path):
    from test_fit_cli import write_runs

    from tlc.fit.observations import fit_sweep

    write_runs(tmp_path, n_runs=4, points=6, compress=False)
    first = sorted(p for p in tmp_path.iterdir())[0]
    config = json.loads((first / "config.json").read_text())
    config["shape"]["objective"] = "mlm"
    (first / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"^RUNS_DIR: mixes causal \(clm\) and masked-LM \(mlm\) runs"):
        fit_sweep(tmp_path, bootstrap=0)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, small_corpus) -> Path:
    """A tiny encoder trained for 64 steps, then compressed (magnitude 50%, and 8-bit)."""
    run = tmp_path_factory.mktemp("mlm") / "run"
    run_tlc("train", *TINY_SHAPE, "--objective", "mlm", "--tokens", "16384", "--micro-batch", "8", "--evals", "4",
            "--precision", "fp32", "--eval-tokens", "2048", "--data", small_corpus, "--out", run, "--no-progress",
            check=True, timeout=900)
    run_tlc("compress", run, "--methods", "magnitude,structured", "--sparsity", "0.5", "--latency-repeats", "1",
            "--no-ort-latency", check=True, timeout=900)
    return run


def test_a_tiny_encoder_trains_and_logs_loss_accuracy_and_flops(mlm_run):
    config = json.loads((mlm_run / "config.json").read_text())
    assert config["run_id"] == "mlm-w32-d2-s0" and config["shape"]["objective"] == "mlm"
    shape = ModelShape(**config["shape"])
    assert config["flops_per_token"] == flops_per_token(shape)
    assert config["params"]["total"] == param_counts(shape).total
    rows = read_jsonl(mlm_run / "metrics.jsonl")
    assert rows[-1]["step"] == 64 and rows[-1]["final"]
    assert all(r["flops"] == pytest.approx(r["tokens"] * config["flops_per_token"]) for r in rows)
    assert rows[0]["val_loss"] > 5.5 and rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5  # log(302) = 5.71 at init
    assert 0 < rows[-1]["val_acc"] < 1 and rows[-1]["val_acc"] > rows[0]["val_acc"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mlm_run / "model")
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == mask_token_id(shape) == 300
    assert tokenizer.pad_token_id == 301


def test_compression_scores_an_encoder_on_the_training_runs_masks(mlm_run):
    rows = {r["variant"]: r for r in read_jsonl(mlm_run / "compress.jsonl")}
    # structured is skipped for encoders, with a note
    assert set(rows) == {"dense", "none-int8", "magnitude-s50", "magnitude-s50-int8"}
    final = read_jsonl(mlm_run / "metrics.jsonl")[-1]
    # the same fixed validation masks in training and compression: the dense model scores the same
    assert rows["dense"]["val_loss"] == pytest.approx(final["val_loss"], abs=1e-4)
    assert rows["magnitude-s50"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the pruned encoder is scored as itself (a barely trained encoder can score a little better pruned: the
    # sign is not the point here, that the variant is evaluated is)
    assert abs(rows["magnitude-s50"]["val_loss"] - rows["dense"]["val_loss"]) > 1e-6


def test_export_writes_a_folder_that_automodelformaskedlm_loads(mlm_run, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from tlc.compress.store import load_variant

    out = tmp_path / "export"
    run_tlc("export", mlm_run, "--variant", "magnitude-s50", "--to", out, check=True, timeout=900)
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("def f(x):\n    return x + 1")["input_ids"][:20]])
    ids[0, 3] = tokenizer.mask_token_id
    with torch.no_grad():
        exported = model(input_ids=ids).logits
        ours = load_variant(mlm_run / "compressed" / "magnitude-s50")(input_ids=ids).logits
    assert torch.allclose(exported, ours, atol=1e-5)
    assert exported.shape[-1] == 302


def test_generate_fills_masks_left_to_right_and_refuses_a_prompt_without_one(mlm_run, tmp_path, capsys):
    import shutil

    from transformers import AutoModelForMaskedLM

    from tlc.cli import main
    from tlc.generate.sample import load_tokenizer
    from tlc.report.data import collect
    from tlc.report.samples import samples_markdown

    run = tmp_path / "sweep" / mlm_run.name
    shutil.copytree(mlm_run, run, ignore=shutil.ignore_patterns("checkpoint", "samples.jsonl"))
    prompt = "def f(x):\n    return <mask><mask> 1\n"
    assert main(["generate", str(run), "--prompt", prompt]) == 0
    printed = capsys.readouterr().out
    tokenizer, _ = load_tokenizer(run)
    ids = tokenizer.encode(prompt).ids
    assert ids.count(300) == 2  # <mask> is one token, id 300 (after the 300 BPE tokens)
    model = AutoModelForMaskedLM.from_pretrained(run / "model").eval()
    with torch.no_grad():  # greedy, left to right: the second mask is chosen with the first one filled
        for position in [i for i, t in enumerate(ids) if t == 300]:
            ids[position] = int(model(input_ids=torch.tensor([ids])).logits[0, position, :300].argmax())
    filled = tokenizer.decode(ids)
    assert printed == filled + "\n" and filled.startswith("def f(x):\n    return ") and "<mask>" not in filled
    (row,) = read_jsonl(run / "samples.jsonl")
    assert row["objective"] == "mlm" and row["completion"] == filled and row["tokens"] == row["generated"] == 2
    assert main(["generate", str(run), "--variant", "magnitude-s50-int8", "--prompt", prompt]) == 0
    assert capsys.readouterr().out.startswith("def f(x):\n    return ")
    # the report shows each fill as it is, not after a second copy of the prompt
    markdown = "\n".join(samples_markdown(collect(run.parent)))
    assert "2 masks filled" in markdown
    assert markdown.count("def f(x):") == 2  # the dense fill and the variant's, with no prompt before either
    assert main(["generate", str(run), "--prompt", "def f(x):"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--prompt: {run.name} is a masked-LM encoder (objective mlm)" in err[0]
    assert "put <mask> where a token is missing" in err[0]
    assert len(read_jsonl(run / "samples.jsonl")) == 2  # the refused prompt recorded nothing


def test_validate_trains_an_mlm_plan_as_an_encoder(tmp_path, small_corpus):
    from plan_fixtures import write_trainable_sweep

    from tlc.cli import main

    runs = write_trainable_sweep(tmp_path / "runs", small_corpus, objective="mlm")
    assert json.loads((runs / "fit.json").read_text())["objective"] == "mlm"
    assert main(["plan", "--runs", str(runs), "--budget", "5e9", "--max-bytes", "250000"]) == 0
    plan = json.loads((runs / "plan.json").read_text())
    recipe = plan["recommendation"]["recipe"]
    assert recipe["shape"]["objective"] == "mlm"  # the recipe carries the objective
    proc = tlc_in_process("validate", runs, "--points", "recommendation", "--seeds", "0", check=True)
    entry, = json.loads((runs / "validation.json").read_text())["validations"]
    point = entry["points"]["recommendation"]
    run_dir = runs / point["run_dirs"][0]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["shape"] == recipe["shape"] and config["run_id"].startswith("mlm-")
    # an encoder was trained, not a causal model: BERT weights with <mask> and <pad> after the 300 BPE tokens
    model_config = json.loads((run_dir / "model" / "config.json").read_text())
    assert model_config["architectures"] == ["BertForMaskedLM"] and model_config["vocab_size"] == 302
    assert config["params"]["total"] == param_counts(ModelShape(**recipe["shape"])).total
    # and scored as one: the planned variant's loss is the masked-token loss compress measured on it
    rows = {r["variant"]: r for r in read_jsonl(run_dir / "compress.jsonl")}
    compression = recipe["compression"]
    assert point["measured"]["loss"] == pytest.approx(
        next(r["val_loss"] for r in rows.values() if r["method"] == compression["method"]
             and r["sparsity"] == pytest.approx(compression["sparsity"], abs=0.01)
             and (r["bits"] == 8) == compression["int8"]))
    assert point["measured"]["dense_loss"] == pytest.approx(rows["dense"]["val_loss"], abs=1e-4)
    assert point["measured"]["bytes"] <= plan["recommendation"]["inference"]["bytes"] <= 250000
    assert "recommendation" in proc.stdout and "verdict:" in proc.stdout
