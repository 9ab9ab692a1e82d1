"""``tlc export``: each export loads in a process that cannot import tlc and computes what tlc computes.

Tolerances (issue 16): logits within 1e-5 of tlc's own evaluation of the variant for fp32 and
2% for int8 (max absolute difference over max absolute logit); validation loss within 1e-3 (fp32)
and 0.01 (int8) of the variant's compress.jsonl row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tlc.cli import main
from tlc.io import read_jsonl

LOADER = Path(__file__).with_name("export_loader.py")
FP32, INT8 = (1e-5, 1e-3), (0.02, 0.01)  # (logits, val_loss) tolerances


def _inputs(run: Path, folder: Path) -> Path:
    """The probe batch and the validation windows tlc scored the variants on, for the loader."""
    from tlc.train.data import load_corpus, load_tokens, val_offsets, windows

    config = json.loads((run / "config.json").read_text())
    data, shape = config["data"], config["shape"]
    tokens = load_tokens(load_corpus(data["source"], data["val_percent"], data["text_field"]), shape["vocab_size"])
    stream = windows(tokens.val, val_offsets(len(tokens.val), shape["context"], config["train"]["eval_tokens"]),
                     shape["context"])
    path = folder / "inputs.npz"
    np.savez(path, probe=stream[:3, :-1], windows=stream)
    return path


def _load_elsewhere(inputs: Path, jobs: list[tuple[str, Path]], tmp: Path) -> list[dict]:
    """Run the loader once for several (format, folder) pairs; returns each result."""
    argv = [sys.executable, str(LOADER), str(inputs)]
    outs = []
    for i, (fmt, folder) in enumerate(jobs):
        outs.append(tmp / f"loaded-{i}.npz")
        argv += [fmt, str(folder), str(outs[-1])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [dict(np.load(o, allow_pickle=False)) for o in outs]


def _export_and_load(run: Path, variants: list[str], fmt: str, tmp: Path) -> tuple[np.ndarray, list[dict]]:
    """Export each variant as ``fmt`` into tmp/<variant>, load them all in the loader (transformers, no tlc);
    returns the probe batch and each variant's result."""
    for variant in variants:
        _export(run, variant, tmp / variant, fmt)
    inputs = _inputs(run, tmp)
    return np.load(inputs)["probe"], _load_elsewhere(inputs, [("hf", tmp / v) for v in variants], tmp)


def _tlc_logits(run: Path, variant: str, probe: np.ndarray) -> np.ndarray:
    from tlc.compress.store import load_variant

    model = load_variant(run / "compressed" / variant)
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(probe)).logits.float().numpy()


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _row(run: Path, variant: str) -> dict:
    return next(r for r in read_jsonl(run / "compress.jsonl") if r["variant"] == variant)


def _export(run: Path, variant: str, out: Path, fmt: str, *extra: str) -> None:
    assert main(["export", str(run), "--variant", variant, "--to", str(out), "--format", fmt, *extra]) == 0


HF_VARIANTS = ["dense", "structured-s50", "magnitude-s50-int8", "structured-s50-int8"]


def test_hf_exports_load_without_tlc_and_match_tlc(compressed_run, tmp_path):
    run = compressed_run
    probe, results = _export_and_load(run, HF_VARIANTS, "hf", tmp_path)
    for variant, got in zip(HF_VARIANTS, results):
        logits_tol, loss_tol = INT8 if variant.endswith("int8") else FP32
        assert _relative(got["logits"], _tlc_logits(run, variant, probe)) <= logits_tol, variant
        assert abs(float(got["val_loss"]) - _row(run, variant)["val_loss"]) <= loss_tol, variant
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(run / "model" / "tokenizer.json"))
    assert str(results[0]["decoded"]) == tokenizer.decode(probe[0].tolist())
    # structured: the smaller FFN stays; GPT-2's removed heads come back as zeros, recorded in tlc_export.json
    source = json.loads((run / "compressed" / "structured-s50" / "config.json").read_text())
    exported = json.loads((tmp_path / "structured-s50" / "config.json").read_text())
    assert exported["n_inner"] == source["n_inner"] < 4 * source["n_embd"]
    assert "tlc_pruned_heads" not in exported and exported["n_head"] == source["n_head"]
    record = json.loads((tmp_path / "structured-s50" / "tlc_export.json").read_text())
    assert record["zero_filled_heads"] == source.get("tlc_pruned_heads", {})
    int8 = json.loads((tmp_path / "magnitude-s50-int8" / "config.json").read_text())["quantization_config"]
    assert int8["load_in_8bit"] and int8["quant_method"] == "bitsandbytes" and int8["llm_int8_threshold"] == 0.0


def test_int8_export_holds_tlcs_int8_values(compressed_run, tmp_path):
    from safetensors import safe_open

    from tlc.compress.store import read_weights

    _export(compressed_run, "magnitude-s50-int8", tmp_path / "q", "hf")
    _, int8 = read_weights(compressed_run / "compressed" / "magnitude-s50-int8")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        for name, (q, scale) in int8.items():
            if name.endswith("wte") or name.endswith("wpe"):
                continue  # embeddings are exported dequantized
            assert torch.equal(f.get_tensor(f"{name}.weight"), q), name
            assert torch.allclose(f.get_tensor(f"{name}.SCB"), scale.float() * 127), name


@pytest.mark.parametrize("variant", ["dense", "structured-s50"])
def test_onnx_exports_run_on_onnxruntime_and_match_tlc(compressed_run, tmp_path, variant):
    pytest.importorskip("onnxruntime")
    run = compressed_run
    _export(run, variant, tmp_path / "onnx", "onnx")
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    inputs = _inputs(run, tmp_path)
    probe = np.load(inputs)["probe"]
    fp32, int8 = _load_elsewhere(inputs, [("onnx", tmp_path / "onnx"), ("onnx-int8", tmp_path / "onnx")], tmp_path)
    assert _relative(fp32["logits"], _tlc_logits(run, variant, probe)) <= FP32[0]
    assert abs(float(fp32["val_loss"]) - _row(run, variant)["val_loss"]) <= FP32[1]
    # ONNX Runtime's int8 against tlc's int8 twin of the same variant
    twin = "none-int8" if variant == "dense" else f"{variant}-int8"
    assert _relative(int8["logits"], _tlc_logits(run, twin, probe)) <= INT8[0]
    assert abs(float(int8["val_loss"]) - _row(run, twin)["val_loss"]) <= INT8[1]


@pytest.mark.parametrize("bits", [32, 8])
def test_llama_structured_export_keeps_fewer_heads_and_loads_without_tlc(tmp_path, bits):
    from tlc.compress.store import load_variant, save_variant
    from tlc.compress.structured import shrink, structured_plan
    from tlc.config import ModelShape
    from tlc.export.hf import write_hf
    from tlc.train.model import build_model

    model = build_model(ModelShape(32, 2, 4, 16, 64, "llama"), seed=0).eval()
    calibration = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    shrunk = shrink(model, structured_plan(model, 0.5, calibration))
    save_variant(tmp_path / "variant", shrunk, bits=bits, int8_path="torch_dynamic" if bits == 8 else None)
    out = tmp_path / "hf"
    out.mkdir()
    write_hf(tmp_path / "variant", tmp_path / "no-tokenizer", out)
    (out / "tokenizer.json").write_text(_byte_tokenizer_json())
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] < 4 and config["intermediate_size"] < 4 * 32
    probe = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "in.npz", probe=probe.numpy(), windows=np.zeros((1, 17), dtype=np.int64))
    (got,) = _load_elsewhere(tmp_path / "in.npz", [("hf", out)], tmp_path)
    with torch.inference_mode():
        expected = load_variant(tmp_path / "variant")(input_ids=probe).logits.float().numpy()
    assert _relative(got["logits"], expected) <= (FP32 if bits == 32 else INT8)[0]


def _byte_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0")).to_str()


# ----------------------------------------------------------------------------------------------
# Bad input: one-line errors, nothing half-written


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_unknown_variant_lists_the_valid_ones(compressed_run, tmp_path, capsys):
    err = _error(capsys, ["export", str(compressed_run), "--variant", "magnitude-s90", "--to", str(tmp_path / "x")])
    assert "--variant: 'magnitude-s90'" in err and "dense, none-int8, magnitude-s50" in err
    assert not (tmp_path / "x").exists()


def test_nonempty_target_is_refused_unless_forced(compressed_run, tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    err = _error(capsys, ["export", str(compressed_run), "--variant", "dense", "--to", str(target)])
    assert "--to:" in err and "--force" in err and (target / "keep.txt").exists()
    _export(compressed_run, "dense", target, "hf", "--force")
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary folder left


def test_export_never_replaces_the_run(compressed_run, tmp_path, capsys):
    for target in (compressed_run, compressed_run.parent, compressed_run / "compressed" / "x"):
        err = _error(capsys, ["export", str(compressed_run), "--variant", "dense", "--to", str(target), "--force"])
        assert "--to:" in err and "would overwrite the run" in err
    assert (compressed_run / "compressed" / "dense" / "model.safetensors").exists()


def test_run_never_compressed_and_not_a_run(compressed_run, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(compressed_run / "model", bare / "model")
    shutil.copyfile(compressed_run / "config.json", bare / "config.json")
    err = _error(capsys, ["export", str(bare), "--variant", "dense", "--to", str(tmp_path / "x")])
    assert "never compressed" in err and "tlc compress" in err
    err = _error(capsys, ["export", str(tmp_path), "--variant", "dense", "--to", str(tmp_path / "x")])
    assert err.startswith("tlc export: error: RUN:")
    err = _error(capsys, ["export", str(compressed_run), "--variant", "dense", "--to", str(tmp_path / "x"),
                          "--format", "tflite"])
    assert "--format: 'tflite'" in err and "hf, onnx" in err


def test_failed_export_leaves_nothing(compressed_run, tmp_path, monkeypatch):
    import tlc.export.hf

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tlc.export.hf, "write_hf", broken)
    with pytest.raises(RuntimeError):
        main(["export", str(compressed_run), "--variant", "dense", "--to", str(tmp_path / "x")])
    assert list(tmp_path.iterdir()) == []


def test_compress_times_8bit_variants_on_onnxruntime(compressed_run):
    pytest.importorskip("onnxruntime")
    for row in read_jsonl(compressed_run / "compress.jsonl"):
        if row["bits"] == 8:
            assert row["latency_ms_b1_ort_int8"] > 0 and row["latency_ms_b32_ort_int8"] > 0, row["variant"]
        else:
            assert row["latency_ms_b1_ort_int8"] is None, row["variant"]


def test_later_variants_of_a_model_reuse_its_onnx_graph_with_their_own_weights_or_are_exported(monkeypatch, tmp_path):
    """ORT int8 latency exports the first variant of a trained model; later ones of the same architecture get that
    graph with their own weight matrices, kept only where its logits are theirs."""
    pytest.importorskip("onnxruntime")
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    from tlc.export import to_onnx

    exports = []
    export = to_onnx.export_fp32
    monkeypatch.setattr(to_onnx, "export_fp32", lambda *a: exports.append(1) or export(*a))
    torch.manual_seed(0)
    dense = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300, n_positions=32)).eval()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        weight = pruned.transformer.h[0].mlp.c_fc.weight
        weight[weight.abs() < weight.abs().median()] = 0
    biased = copy.deepcopy(pruned)
    with torch.no_grad():
        biased.transformer.h[0].mlp.c_fc.bias += 1.0  # a value the exporter folds into a constant
    for model in (dense, pruned, biased):
        times = to_onnx.ort_int8_latency(model, 32, 300, 8, 1, source="run")
        assert times["latency_ms_b1_ort_int8"] > 0 and times["latency_ms_b32_ort_int8"] > 0
    # dense exported; pruned reused its graph; biased could not (the exporter had folded dense's zero biases into
    # one shared constant, so the graph had no c_fc.bias to take biased's values) and was exported again
    assert len(exports) == 2
    key = next(iter(to_onnx._graphs))  # biased's graph, where that bias is an initializer of its own
    assert to_onnx._reused_graph(pruned, key, tmp_path / "pruned.onnx", 32)


def test_ort_latency_without_onnxruntime_is_a_one_line_error(compressed_run, capsys, monkeypatch):
    import tlc.export

    monkeypatch.setattr(tlc.export, "onnx_available", lambda: False)
    err = _error(capsys, ["compress", str(compressed_run), "--ort-latency"])
    assert err.startswith("tlc compress: error: --ort-latency:") and "tlc[export]" in err


def test_the_planner_reads_the_fastest_runtime_measured():
    from tlc.plan.cost import fastest_latency

    row = {"latency_ms_b1": 0.5, "latency_ms_b32": 0.2, "latency_ms_b1_ort_int8": 0.03, "latency_ms_b32_ort_int8": None}
    assert fastest_latency(row, 1) == 0.03 and fastest_latency(row, 32) == 0.2
    assert fastest_latency({"latency_ms_b1": None}, 1) is None
