"""``tlc export --format compressed-tensors``: transformers loads the folder (compressed-tensors installed, tlc not
importable) and computes exactly what tlc computes from the variant's stored weights.

Tolerances (issue 32): logits within 1e-4 (max absolute difference) of tlc's evaluation of the variant's stored
weights; they agree to a few 1e-6 (OPT scales the query before q·k, GPT-2 after), and a wrong packing, scale
layout or GPT-2-to-OPT mapping moves them by whole units. Validation loss: gptq, rtn and pruned variants run in
tlc as the same fp32 weights, so the export's loss equals compress.jsonl's within 1e-4 (what is left is the
order of summation: fp32 in tlc, float64 in the loader). 8-bit variants: the export carries tlc's int8 weights,
but tlc's int8 runtime also quantizes activations (fbgemm), which compressed-tensors cannot reproduce: their
loss is compared with the INT8 tolerance of test_export.py (0.01), their logits with tlc's int8 weights.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_tlc
from test_export import INT8, _error, _export, _export_and_load, _row

LOGITS, LOSS = 1e-4, 1e-4
GROUP = 16  # --group-size of the gptq and rtn variants below: two groups per input row of width 32


@pytest.fixture(scope="module")
def quantized_run(compressed_run, tmp_path_factory):
    """compressed_run (dense, magnitude and structured at 50%, each with int8) plus 4-bit rtn and gptq variants.

    A copy, so that the session's shared run keeps its variants."""
    run = tmp_path_factory.mktemp("ct") / compressed_run.name
    shutil.copytree(compressed_run, run)
    run_tlc("compress", run, "--methods", "rtn,gptq", "--quant-bits", "4", "--group-size", str(GROUP),
            "--calibration-sequences", "16", "--latency-repeats", "1", "--no-int8", check=True)
    return run


VARIANTS = ["none-int8", "magnitude-s50", "magnitude-s50-int8", "structured-s50-int8",
            f"rtn-w4g{GROUP}", f"gptq-w4g{GROUP}"]


def _stored_logits(run, variant: str, probe: np.ndarray) -> np.ndarray:
    """tlc's forward pass over the variant's stored weights (8-bit: dequantized, without activation quantization)."""
    from tlc.compress.store import load_fp32

    with torch.inference_mode():
        return load_fp32(run / "compressed" / variant)(input_ids=torch.from_numpy(probe)).logits.float().numpy()


def test_exports_load_in_transformers_and_match_tlc(quantized_run, tmp_path):
    run = quantized_run
    probe, results = _export_and_load(run, VARIANTS, "compressed-tensors", tmp_path)
    for variant, got in zip(VARIANTS, results):
        assert np.abs(got["logits"] - _stored_logits(run, variant, probe)).max() <= LOGITS, variant
        loss_tol = INT8[1] if variant.endswith("int8") else LOSS
        assert abs(float(got["val_loss"]) - _row(run, variant)["val_loss"]) <= loss_tol, variant
    config = json.loads((tmp_path / f"rtn-w4g{GROUP}" / "config.json").read_text())
    assert config["model_type"] == "opt" and config["architectures"] == ["OPTForCausalLM"]
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    (group,) = quant["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["strategy"] == "group"
    # q, k, v, out, fc1 and fc2 of 2 blocks
    assert group["weights"]["group_size"] == GROUP and len(group["targets"]) == 6 * 2
    assert quant["ignore"] == ["lm_head"]
    int8 = json.loads((tmp_path / "none-int8" / "config.json").read_text())["quantization_config"]
    (group,) = int8["config_groups"].values()
    assert group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    pruned = json.loads((tmp_path / "magnitude-s50" / "config.json").read_text())["quantization_config"]
    assert pruned["format"] == "dense" and not pruned["config_groups"]


def test_int4_bytes_are_tlcs_packed_codes_and_scales(quantized_run, tmp_path):
    """Each 4-bit matrix is its codes at 4 bits (int32 words) and fp16 scales: the bytes tlc counted for it."""
    from safetensors import safe_open

    variant = f"gptq-w4g{GROUP}"
    _export(quantized_run, variant, tmp_path / "q", "compressed-tensors")
    with safe_open(str(quantized_run / "compressed" / variant / "model.safetensors"), "pt") as f:
        tlc_bytes = sum(f.get_slice(k).get_shape()[0] * (2 if k.endswith(".scale") else 1)
                        * int(np.prod(f.get_slice(k).get_shape()[1:] or [1]))
                        for k in f.keys() if k.endswith((".q4", ".scale")))
    exported = 0
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if key.endswith("weight_packed"):
                out, words = f.get_slice(key).get_shape()
                assert f.get_slice(key).get_dtype() == "I32"
                out_in = f.get_tensor(key.replace("packed", "shape")).tolist()
                assert out_in[0] == out and words * 8 == out_in[1]  # eight 4-bit codes per int32
                scale = f.get_slice(key.replace("packed", "scale"))
                assert scale.get_dtype() == "F16" and scale.get_shape() == [out, out_in[1] // GROUP]
                exported += out * words * 4 + out * (out_in[1] // GROUP) * 2
    assert exported == tlc_bytes > 0


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_is_what_compressed_tensors_unpacks(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from tlc.export.to_compressed_tensors import pack_codes

    low = -(2 ** (bits - 1))
    codes = torch.randint(low, -low, (5, 37), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, -(-37 * bits // 32))
    assert torch.equal(unpack_from_int32(packed, bits, torch.Size([5, 37])), codes)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_llama_and_bert_keep_their_architecture(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from tlc.compress.calibrated import Grid, quantize_weights
    from tlc.compress.store import load_fp32, save_variant
    from tlc.config import ModelShape
    from tlc.export.to_compressed_tensors import write_compressed_tensors
    from tlc.train.model import build_model

    objective = "mlm" if arch == "bert" else "clm"
    shape = ModelShape(32, 2, 4, 16, 64, "llama" if arch == "llama" else "gpt2", objective=objective)
    model = build_model(shape, seed=0).eval()
    quantized = quantize_weights(model, Grid(4, GROUP), None, method="rtn")
    save_variant(tmp_path / "rtn", model, weight_only=quantized)
    save_variant(tmp_path / "int8", build_model(shape, seed=1).eval(), bits=8, int8_path="torch_dynamic")
    probe = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    for name in ("rtn", "int8"):
        out = tmp_path / f"{name}-ct"
        out.mkdir()
        write_compressed_tensors(tmp_path / name, tmp_path / "no-tokenizer", out)
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == ("bert" if arch == "bert" else "llama")
        assert config["quantization_config"]["format"] == "pack-quantized"
        with torch.inference_mode():
            got = auto.from_pretrained(str(out)).eval()(input_ids=probe).logits
            expected = load_fp32(tmp_path / name)(input_ids=probe).logits
        assert (got - expected).abs().max() <= LOGITS, name


def test_uneven_groups_and_missing_package_are_one_line_errors(compressed_run, tmp_path, capsys, monkeypatch):
    from tlc.compress.calibrated import Grid, quantize_weights
    from tlc.compress.store import save_variant
    from tlc.config import ModelShape
    from tlc.errors import UserError
    from tlc.export.to_compressed_tensors import write_compressed_tensors
    from tlc.train.model import build_model

    model = build_model(ModelShape(32, 2, 4, 16, 64, "llama"), seed=0).eval()
    save_variant(tmp_path / "g24", model, weight_only=quantize_weights(model, Grid(4, 24), None, method="rtn"))
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="--group-size") as error:
        write_compressed_tensors(tmp_path / "g24", tmp_path / "none", tmp_path / "out")
    assert "\n" not in str(error.value)

    import tlc.export

    monkeypatch.setattr(tlc.export, "compressed_tensors_available", lambda: False)
    err = _error(capsys, ["export", str(compressed_run), "--variant", "dense", "--to", str(tmp_path / "x"),
                          "--format", "compressed-tensors"])
    assert err.startswith("tlc export: error: --format compressed-tensors:") and "tlc[export]" in err
    assert not (tmp_path / "x").exists()
