"""A variant as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` (``AutoModelForMaskedLM``
for an mlm run) loads without tlc.

What each kind of variant becomes:

- unstructured, 2:4 and block variants: fp32 tensors holding their zeros (transformers has no
  sparse format to load them as);
- structured variants keep their smaller FFN (``n_inner`` / ``intermediate_size``). Llama's
  config describes fewer heads (``num_attention_heads``, ``head_dim``). GPT-2 in transformers 5
  ties head size to ``n_embd / n_head`` and reads no per-layer head list, so the removed heads
  come back as zeros (:func:`zero_fill_heads`): exact, but attention is full size again;
- 8-bit variants: bitsandbytes' LLM.int8() serialization (``weight`` int8 [out, in] and ``SCB``,
  the absmax of each row) with ``llm_int8_threshold=0``. That is tlc's own storage (row-wise
  absmax, no outlier columns), so the exported int8 values are exactly tlc's. Loading needs
  ``bitsandbytes`` and ``accelerate``; it runs on CPU. The LM head tied to the token embedding
  stays in floating point (transformers never quantizes it), holding the dequantized table; an
  encoder's whole MLM head (``cls``: transform and tied decoder) stays in floating point likewise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tlc.compress.prune import prunable_layers
from tlc.compress.store import MANIFEST, model_from_state, read_weights

WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
INT8_NEEDS = ("bitsandbytes", "accelerate")  # what from_pretrained needs for an 8-bit export


def _head_columns(kept: list[int], heads: int, head_dim: int, sections: int) -> torch.Tensor:
    """Where each column of a shrunk per-head projection goes in the full one ([sections][heads][head_dim])."""
    offsets = torch.arange(head_dim)
    return torch.cat([s * heads * head_dim + h * head_dim + offsets for s in range(sections) for h in kept])


def zero_fill_heads(state: dict, int8: dict, config) -> tuple[dict, dict, object]:
    """GPT-2 with heads removed (``config.tlc_pruned_heads``) as full-size attention with zero heads.

    A zero head has zero query, key and value weights and biases, and zero columns in the output
    projection: its attention weights are uniform over a zero value, so it adds exactly nothing.
    ``state`` is in parameter layout (Conv1D [in, out]); ``int8`` holds (q [out, in], scale [out]).
    Returns new (state, int8, config) without ``tlc_pruned_heads``.
    """
    pruned = getattr(config, "tlc_pruned_heads", None) or {}
    heads, width = config.n_head, config.n_embd
    head_dim = width // heads
    state, int8 = dict(state), dict(int8)
    for layer, removed in pruned.items():
        kept = [h for h in range(heads) if h not in set(removed)]
        qkv = _head_columns(kept, heads, head_dim, 3)  # c_attn outputs: q | k | v
        out_in = _head_columns(kept, heads, head_dim, 1)  # c_proj inputs
        prefix = f"transformer.h.{layer}.attn"
        w = state[f"{prefix}.c_attn.weight"]  # [d, 3 * kept * hd]
        full = w.new_zeros(w.shape[0], 3 * heads * head_dim)
        full[:, qkv] = w
        state[f"{prefix}.c_attn.weight"] = full
        b = state[f"{prefix}.c_attn.bias"]
        state[f"{prefix}.c_attn.bias"] = b.new_zeros(3 * heads * head_dim).index_copy_(0, qkv, b)
        w = state[f"{prefix}.c_proj.weight"]  # [kept * hd, d]
        state[f"{prefix}.c_proj.weight"] = w.new_zeros(heads * head_dim, w.shape[1]).index_copy_(0, out_in, w)
        if f"{prefix}.c_attn" in int8:
            q, scale = int8[f"{prefix}.c_attn"]  # [3 * kept * hd, d]
            full_q = q.new_zeros(3 * heads * head_dim, q.shape[1]).index_copy_(0, qkv, q)
            # rows of zeros need a scale too; any positive one leaves them zero
            full_scale = scale.new_ones(3 * heads * head_dim).index_copy_(0, qkv, scale)
            int8[f"{prefix}.c_attn"] = (full_q, full_scale)
            q, scale = int8[f"{prefix}.c_proj"]  # [d, kept * hd]
            full_q = q.new_zeros(q.shape[0], heads * head_dim)
            full_q[:, out_in] = q
            int8[f"{prefix}.c_proj"] = (full_q, scale)
    config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "tlc_pruned_heads"})
    return state, int8, config


def _int8_tensors(model: torch.nn.Module, int8: dict) -> dict[str, torch.Tensor]:
    """The state dict in bitsandbytes' 8-bit serialization: int8 ``weight`` [out, in], ``SCB``, ``weight_format``."""
    layers = prunable_layers(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors = {}
    for key, tensor in model.state_dict().items():
        module_name = key.rpartition(".")[0]
        if module_name in layers and key.endswith(".weight"):
            q, scale = int8[module_name]
            tensors[key] = q.contiguous()
            tensors[f"{module_name}.SCB"] = (scale.float() * 127.0).contiguous()  # row absmax: scale = SCB / 127
            tensors[f"{module_name}.weight_format"] = torch.tensor(0, dtype=torch.uint8)  # 0: row-major
        elif not (tied and key == "lm_head.weight"):
            tensors[key] = tensor.detach().contiguous().clone()
    return tensors


def int8_quantization_config(head: str = "lm_head") -> dict:
    """``config.json``'s quantization_config: LLM.int8() without outlier columns, the head (``lm_head``, or an
    encoder's ``cls``) kept in float."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0, llm_int8_skip_modules=[head]).to_dict()


def write_hf(variant_folder: Path, model_folder: Path, out: Path) -> dict:
    """Write the variant at ``variant_folder`` into the (new, empty) folder ``out``; tokenizer from ``model_folder``.

    Returns what was written: ``bits``, ``zero_filled_heads`` (per layer), ``needs`` (packages to load it).
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    manifest = json.loads((Path(variant_folder) / MANIFEST).read_text(encoding="utf-8"))
    state, int8 = read_weights(variant_folder)
    config = AutoConfig.from_pretrained(str(variant_folder))
    filled = dict(getattr(config, "tlc_pruned_heads", None) or {})
    if filled:
        state, int8, config = zero_fill_heads(state, int8, config)
    model = model_from_state(config, state)
    bits = manifest.get("bits", 32)
    if bits == 8:
        save_file(_int8_tensors(model, int8), str(out / WEIGHTS), metadata={"format": "pt"})
        from tlc.architecture import config_objective

        config.quantization_config = int8_quantization_config("cls" if config_objective(config) == "mlm" else "lm_head")
        config.save_pretrained(out)
    else:
        model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(model_folder) / name).exists():
            shutil.copyfile(Path(model_folder) / name, out / name)
    return {"bits": bits, "zero_filled_heads": filled, "needs": ["transformers", *(INT8_NEEDS if bits == 8 else ())]}
