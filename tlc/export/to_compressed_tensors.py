"""A variant as a compressed-tensors folder: ``AutoModelForCausalLM.from_pretrained`` loads it (with the
``compressed-tensors`` package installed); the schemes are the weight-only ones vLLM's compressed-tensors
loader maps to its WNA16 kernels (not run here: vLLM's PyPI wheel is a CUDA build).

The format (compressed-tensors 0.20): ``config.json`` carries ``quantization_config`` with
``quant_method: compressed-tensors``, a ``format`` and ``config_groups``, each a scheme (weights:
bits, symmetric int, per-channel or per-group scales) and the layers it ``targets``. A quantized
nn.Linear is stored as ``<layer>.weight_packed`` int32 [out, ceil(in · bits / 32)] (element i of a row
in bits i·b to i·b + b - 1 of the row's little-endian words, as code + 2^(b-1)), ``<layer>.weight_scale``
[out, groups] and ``<layer>.weight_shape`` int64 [2] = (out, in): the weight is code × its group's scale.

What each kind of tlc variant becomes:

- 8-bit (``*-int8``): tlc's stored int8 codes and its per-output-row scales, packed 4 to an int32
  (``pack-quantized``, 8 bits, strategy ``channel``). Weight-only: tlc's own int8 runtime also
  quantizes activations (fbgemm per tensor, or bitsandbytes per token), which compressed-tensors'
  dynamic activation schemes do not reproduce (its symmetric scale is absmax / 127.5), so the
  export runs tlc's int8 weights on float activations;
- gptq and rtn: their 4- or 8-bit codes and per-group scales (``pack-quantized``, strategy ``group``,
  or ``channel`` for ``g0``);
- pruned variants keep their zeros in place: compressed-tensors 0.20 has no sparse weight format (it
  registers no sparse-bitmask or 2:4 compressor, and its own writer puts ``sparsity_config: {}``),
  so a pruned fp32 variant is ``format: dense`` and a pruned 8-bit one is packed int8 with zero codes;
  the sparsity is recorded in ``tlc_export.json``;
- token and position embeddings are float (an 8-bit variant's dequantized table), and the LM head
  stays tied to them, unquantized, as transformers and vLLM expect.

GPT-2 is written as OPT (``model_type: opt``): compressed-tensors quantizes only ``nn.Linear`` and
``nn.Embedding`` (GPT-2's ``Conv1D``, weight stored [in, out], is skipped), and OPT is GPT-2's network with
``nn.Linear`` layers: pre-LayerNorm blocks (eps 1e-5), learned positions, biases everywhere, 1/sqrt(head_dim)
scaling, the activation by name, a tied head. The matrices are transposed to [out, in], ``c_attn`` splits into
``q_proj``, ``k_proj`` and ``v_proj``, and the position table gets OPT's two leading rows. Positions are
counted from the attention mask (as GPT-2 counts them without padding). GPTBigCode, the closer twin,
is not used: transformers 5's GPTBigCode initialisation reads ``c_proj.weight``, which a packed layer does
not have, so ``from_pretrained`` fails on it. Llama and BERT runs keep their architecture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tlc.errors import UserError

WEIGHTS = "model.safetensors"
NEEDS = ("transformers", "compressed-tensors")  # what from_pretrained needs to load the folder
# tlc's scales are fp16-exact, so fp16 stores them losslessly; transformers loads them into parameters of the
# model's dtype (fp32 here) and dequantizes code × scale there, as tlc does (the tests check it bit for bit)
SCALE_DTYPE = torch.float16


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes [rows, cols] in [-2^(b-1), 2^(b-1)) as compressed-tensors' int32 words [rows, ceil(cols·b/32)].

    Element i of a row sits in bits (i·b mod 32) .. of word i·b // 32, offset by 2^(b-1) to be unsigned.
    Only widths that divide 32 (tlc's 4 and 8), so no element straddles two words.
    """
    if 32 % bits:
        raise ValueError(f"bits must divide 32, got {bits}")
    per_word = 32 // bits
    rows, cols = q.shape
    unsigned = q.to(torch.int64) + (1 << (bits - 1))  # [rows, cols], 0 .. 2^b - 1
    pad = -cols % per_word
    unsigned = torch.nn.functional.pad(unsigned, (0, pad)).view(rows, -1, per_word)  # [rows, words, per_word]
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (unsigned << shifts).sum(dim=-1)  # disjoint bit ranges: the sum is an OR, [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same 32 bits, signed


GPT2_TO_OPT = {"ln_1": "self_attn_layer_norm", "attn.c_proj": "self_attn.out_proj", "ln_2": "final_layer_norm",
               "mlp.c_fc": "fc1", "mlp.c_proj": "fc2"}  # per block; c_attn splits into q_proj, k_proj, v_proj
OPT_POSITION_OFFSET = 2  # OPT's learned positions start 2 rows down its table (OPTLearnedPositionalEmbedding)


def opt_config(config):
    """The OPT config computing what a GPT-2 config computes (pre-LayerNorm blocks, learned positions, tied head)."""
    from transformers import OPTConfig

    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if getattr(config, flag, False):
            raise UserError(f"--format compressed-tensors: this GPT-2 sets {flag}, which OPT cannot express; "
                            "use --format hf")
    if config.layer_norm_epsilon != 1e-5 or not config.scale_attn_weights:
        raise UserError("--format compressed-tensors: this GPT-2's layer_norm_epsilon or scale_attn_weights differs "
                        "from OPT's fixed 1e-5 and 1/sqrt(head_dim); use --format hf")
    return OPTConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, num_hidden_layers=config.n_layer,
        ffn_dim=config.n_inner or 4 * config.n_embd, max_position_embeddings=config.n_positions,
        do_layer_norm_before=True, word_embed_proj_dim=config.n_embd, dropout=0.0, attention_dropout=0.0,
        num_attention_heads=config.n_head, activation_function=config.activation_function, enable_bias=True,
        pad_token_id=None, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        tie_word_embeddings=True, architectures=["OPTForCausalLM"],
    )


def _as_opt(state: dict, codes: dict, config) -> tuple[dict, dict]:
    """GPT-2's state (Conv1D weights [in, out]) and codes ([out, in]) renamed to OPT's, matrices [out, in].

    c_attn's output rows [q | k | v] become q_proj, k_proj and v_proj; the position table gets OPT's two
    leading rows (zeros: only left-padded positions would read them). GPT-2's mask buffers are dropped.
    """
    width = config.n_embd
    out, out_codes = {}, {}
    for layer in range(config.n_layer):
        source, target = f"transformer.h.{layer}", f"model.decoder.layers.{layer}"
        for old, new in GPT2_TO_OPT.items():
            for kind in ("weight", "bias"):
                tensor = state[f"{source}.{old}.{kind}"]
                out[f"{target}.{new}.{kind}"] = tensor.t() if kind == "weight" and tensor.dim() == 2 else tensor
            if f"{source}.{old}" in codes:
                out_codes[f"{target}.{new}"] = codes[f"{source}.{old}"]
        weight, bias = state[f"{source}.attn.c_attn.weight"].t(), state[f"{source}.attn.c_attn.bias"]  # [3w, in]
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = slice(i * width, (i + 1) * width)
            out[f"{target}.self_attn.{name}.weight"] = weight[rows]
            out[f"{target}.self_attn.{name}.bias"] = bias[rows]
            if f"{source}.attn.c_attn" in codes:
                q, scale, bits = codes[f"{source}.attn.c_attn"]
                out_codes[f"{target}.self_attn.{name}"] = (q[rows], scale[rows], bits)
    positions = state["transformer.wpe.weight"]
    out["model.decoder.embed_positions.weight"] = torch.cat([positions.new_zeros(OPT_POSITION_OFFSET, width),
                                                            positions])
    out["model.decoder.embed_tokens.weight"] = state["transformer.wte.weight"]
    out["model.decoder.final_layer_norm.weight"] = state["transformer.ln_f.weight"]
    out["model.decoder.final_layer_norm.bias"] = state["transformer.ln_f.bias"]
    return out, out_codes


def _scheme(bits: int, groups: int, columns: int, layer: str) -> dict:
    """The compressed-tensors weight arguments of one matrix: symmetric int, per channel or per group."""
    if groups == 1:
        return {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "channel"}
    if columns % groups:
        raise UserError(f"--format compressed-tensors: {layer} has {columns} inputs in {groups} scale groups "
                        "(the last one shorter), which compressed-tensors cannot express; compress with a "
                        "--group-size that divides every layer's inputs, or use --format hf")
    return {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": columns // groups}


def quantization_config(schemes: dict[str, dict], ignore: list[str]) -> dict:
    """``config.json``'s ``quantization_config``: one config group per distinct weight scheme, targeting layers by
    name; validated by compressed-tensors' own QuantizationConfig."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig

    groups: dict[str, dict] = {}
    for layer, weights in schemes.items():
        key = json.dumps(weights, sort_keys=True)
        groups.setdefault(key, {"targets": [], "weights": weights, "format": "pack-quantized"})["targets"].append(layer)
    config = QuantizationConfig.model_validate({
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())},
        "format": "pack-quantized" if groups else "dense",
        "quantization_status": "compressed",
        "ignore": ignore,
    })
    return {**config.model_dump(mode="json"), "quant_method": "compressed-tensors",
            "version": compressed_tensors.__version__}


def write_compressed_tensors(variant_folder: Path, model_folder: Path, out: Path) -> dict:
    """Write the variant at ``variant_folder`` into the (new, empty) folder ``out``; tokenizer from ``model_folder``.

    Returns what was written: ``bits``, ``architecture`` (and the run's ``source_architecture``),
    ``quantized_layers``, ``weights_bytes`` (model.safetensors), ``zero_filled_heads``, ``needs``.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from tlc.compress.prune import prunable_layers
    from tlc.compress.store import MANIFEST, model_from_state, read_weights, stored_codes
    from tlc.export.hf import TOKENIZER_FILES, zero_fill_heads

    manifest = json.loads((Path(variant_folder) / MANIFEST).read_text(encoding="utf-8"))
    state, int8 = read_weights(variant_folder)
    config = AutoConfig.from_pretrained(str(variant_folder))
    layer_names = list(prunable_layers(model_from_state(config, state)))
    filled = dict(getattr(config, "tlc_pruned_heads", None) or {})
    if filled:
        state, int8, config = zero_fill_heads(state, int8, config)
        codes = {name: (q, scale[:, None], 8) for name, (q, scale) in int8.items()}
    else:
        codes = stored_codes(variant_folder)
    codes = {name: c for name, c in codes.items() if name in layer_names}  # embeddings stay float
    source_type = config.model_type
    if source_type == "gpt2":
        state, codes = _as_opt(state, codes, config)
        config = opt_config(config)
    elif source_type not in ("llama", "bert"):
        raise UserError(f"--format compressed-tensors: a {source_type} model is not one tlc exports this way; "
                        "use --format hf")
    schemes, tensors = {}, {k: v.contiguous() for k, v in state.items()}
    for name, (q, scale, bits) in codes.items():
        weight = tensors.pop(f"{name}.weight")
        if tuple(q.shape) != tuple(weight.shape):
            raise ValueError(f"{name}: stored codes {tuple(q.shape)} do not match the weight {tuple(weight.shape)}")
        schemes[name] = _scheme(bits, scale.shape[1], q.shape[1], name)
        tensors[f"{name}.weight_packed"] = pack_codes(q, bits)
        tensors[f"{name}.weight_scale"] = scale.to(SCALE_DTYPE).contiguous()
        tensors[f"{name}.weight_shape"] = torch.tensor(q.shape, dtype=torch.int64)
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied to the token embedding, which loading fills it from
    linear = _linear_names(config)
    config.quantization_config = quantization_config(schemes, [n for n in linear if n not in schemes])
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(model_folder) / name).exists():
            shutil.copyfile(Path(model_folder) / name, out / name)
    return {"bits": manifest.get("bits", 32), "architecture": config.model_type, "source_architecture": source_type,
            "quantized_layers": len(schemes), "weights_bytes": (out / WEIGHTS).stat().st_size,
            "zero_filled_heads": filled, "needs": list(NEEDS)}


def _linear_names(config) -> list[str]:
    """Every nn.Linear of the model ``config`` describes (built on the meta device: no memory, no init)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from tlc.architecture import config_objective

    auto = AutoModelForMaskedLM if config_objective(config) == "mlm" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
