"""8-bit weights: per-output-row symmetric int8 storage and the fastest int8 runtime on this device.

Storage (the same for every runtime): each matrix W [out, in] becomes q = round(W / s) in int8
with one scale per output row (stored fp16), s = max|W_row| / 127 (bitsandbytes' row-wise absmax, LLM.int8()
without outlier decomposition). Pruned zeros stay zero. The token (and position) embeddings are
stored the same way; at run time the embedding lookup uses the dequantized table and a tied LM
head becomes an int8 layer built from the same q and s.

Runtime: bitsandbytes ``Linear8bitLt`` on CUDA. On CPU both ``torch.ao`` dynamic quantization
(fbgemm int8 GEMM, per-channel weights) and bitsandbytes' CPU path work; :func:`choose_int8_path`
times both on this machine and caches the faster (``$TLC_CACHE/int8_path.json``).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import warnings

import torch
from torch import nn

from tlc.compress.evaluate import median_seconds
from tlc.compress.prune import is_conv1d, prunable_layers, set_submodule

INT8_PATHS = ("torch_dynamic", "bitsandbytes")
# What bitsandbytes logs when its kernel-hub lookup fails; tlc refuses that lookup (import_bitsandbytes).
HUB_LOOKUP_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _drop_hub_lookup_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(HUB_LOOKUP_WARNING)


def import_bitsandbytes():
    """bitsandbytes, imported without its kernel-hub lookup; import it only where an int8 layer needs it.

    On a CPU with AVX512_BF16, importing bitsandbytes asks the Hugging Face hub (through the ``kernels``
    package) for a 4-bit CPU kernel: a network call at run time, and where it fails a warning the user can do
    nothing about ("could not verify publisher trust status"). tlc uses no 4-bit kernel, so ``kernels`` is
    hidden while bitsandbytes imports: bitsandbytes then takes its own fallback, as without ``kernels``
    installed, and the warning that fallback logs is dropped.
    """
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    hidden = "kernels" in sys.modules, sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]  # makes `from kernels import ...` raise ImportError
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    log.addFilter(_drop_hub_lookup_warning)
    try:
        import bitsandbytes
    finally:
        log.removeFilter(_drop_hub_lookup_warning)
        if hidden[0]:
            sys.modules["kernels"] = hidden[1]  # type: ignore[assignment]
        else:
            del sys.modules["kernels"]
    return bitsandbytes


FP16_SMALLEST = 2.0 ** -24  # the smallest positive (subnormal) float16


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [out, in], scale fp32 [out]) with weight ~= q * scale[:, None]."""
    w = weight.detach().float()
    # scales are stored in fp16; quantizing with the fp16-rounded scale keeps storage and compute identical.
    # A row of zeros (pruned away) or of values under 127 * 2^-24 would round its scale to 0 in fp16 and q to 0/0:
    # the smallest positive fp16 keeps the scale a number, and such a row's q exact (zeros) or within 1 of it.
    scale = (w.abs().amax(dim=1) / 127.0).half().float().clamp_min(FP16_SMALLEST)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 matrix an int8 (q, scale) pair stands for."""
    return q.float() * scale[:, None].float()


def embedding_names(model: nn.Module) -> list[str]:
    """Embedding tables stored in int8 with the matrices: GPT-2's wte and wpe, Llama's embed_tokens."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]


def int8_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Row-wise int8 of every prunable matrix ([out, in] orientation) and every embedding table."""
    out = {}
    for name, module in prunable_layers(model).items():
        out[name] = quantize_rows(module.weight.t() if is_conv1d(module) else module.weight)
    for name in embedding_names(model):
        out[name] = quantize_rows(model.get_submodule(name).weight)
    return out


def int8_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, path: str) -> nn.Module:
    """A module computing x @ (q * scale).T + bias with int8 weights on the given runtime path."""
    out_f, in_f = q.shape
    if path == "torch_dynamic":
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        with warnings.catch_warnings():  # torch marks its quantized tensor constructors deprecated
            warnings.simplefilter("ignore", UserWarning)
            layer = DynamicLinear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
            qweight = torch._make_per_channel_quantized_tensor(
                q.cpu(), scale.double().cpu(), torch.zeros(out_f, dtype=torch.long), axis=0)
            layer.set_weight_bias(qweight, None if bias is None else bias.detach().float().cpu())
        return layer
    if path == "bitsandbytes":
        bnb = import_bitsandbytes()
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # it logs a cast warning on every fp32 call

        device = q.device
        layer = bnb.nn.Linear8bitLt(in_f, out_f, bias=bias is not None, has_fp16_weights=False, threshold=0.0)
        absmax = (scale.float() * 127.0).contiguous()
        layer.weight = bnb.nn.Int8Params(q.contiguous(), requires_grad=False, has_fp16_weights=False,
                                         CB=q.contiguous(), SCB=absmax)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        return layer.to(device)
    raise ValueError(f"unknown int8 path {path!r}; valid: {', '.join(INT8_PATHS)}")


def apply_int8(model: nn.Module, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str) -> nn.Module:
    """Swap the prunable matrices (and a tied LM head) for int8 layers, in place; embeddings get the
    dequantized tables. ``weights`` comes from :func:`int8_weights` or a saved artifact."""
    tied_head = getattr(model, "lm_head", None) is not None and any(
        model.lm_head.weight is model.get_submodule(n).weight for n in embedding_names(model))
    for name, module in prunable_layers(model).items():
        q, scale = weights[name]
        set_submodule(model, name, int8_linear(q, scale, module.bias, path))
    for name in embedding_names(model):
        q, scale = weights[name]
        emb = model.get_submodule(name)
        with torch.no_grad():
            emb.weight.copy_(dequantize_rows(q, scale))
    if tied_head:
        q, scale = weights[embedding_names(model)[0]]
        model.lm_head = int8_linear(q, scale, None, path)
    elif getattr(model, "lm_head", None) is not None and isinstance(model.lm_head, nn.Linear):
        q, scale = quantize_rows(model.lm_head.weight)
        model.lm_head = int8_linear(q, scale, model.lm_head.bias, path)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Choosing the runtime by measurement


def machine_key(device: torch.device, width: int) -> str:
    """What the cached choice depends on: machine, processor, device, library versions and layer width."""
    from importlib import metadata

    try:  # the installed version, read without importing bitsandbytes (its import is slow and asks the hub)
        bnb_version = metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        bnb_version = "absent"
    return "|".join([platform.node(), platform.processor() or platform.machine(), str(device), torch.__version__,
                     bnb_version, f"width={width}"])


def time_forward(module: nn.Module, x: torch.Tensor, repeats: int = 7, warmup: int = 2) -> float:
    """Median seconds of ``module(x)`` over ``repeats`` timed calls (no grad)."""
    return median_seconds(lambda: module(x), x.is_cuda, repeats, warmup)


def measure_int8_paths(width: int, device: torch.device, tokens: int = 32 * 32, layers: int = 4) -> dict[str, float]:
    """Seconds per forward of a stack of ``layers`` width x 4·width matrices for each int8 path that runs here."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4 * width, width), (width, 4 * width)] * (layers // 2)
    mats = [torch.randn(o, i, generator=g) / i**0.5 for o, i in shapes]
    x = torch.randn(tokens, width, generator=g).to(device)
    timings = {}
    for path in INT8_PATHS:
        try:
            stack = nn.Sequential(*[int8_linear(*quantize_rows(w.to(device)), None, path) for w in mats]).to(device)
            timings[path] = time_forward(stack, x)
        except Exception as error:  # a path that cannot run here is simply not a candidate
            timings[path] = float("nan")
            print(f"int8 path {path} unavailable here: {type(error).__name__}: {str(error)[:120]}")
    return timings


def choose_int8_path(device: torch.device, width: int) -> tuple[str, dict]:
    """The int8 runtime for this device: bitsandbytes on CUDA; on CPU the faster measured one, cached.

    Returns (path, record) where record holds the timings that decided it.
    """
    if device.type == "cuda":
        return "bitsandbytes", {"reason": "cuda"}
    from tlc.io import atomic_write_json
    from tlc.train.data import cache_dir

    cache = cache_dir() / "int8_path.json"
    key = machine_key(device, width)
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key in known and known[key].get("path") in INT8_PATHS:
        return known[key]["path"], known[key]
    timings = measure_int8_paths(width, device)
    valid = {p: t for p, t in timings.items() if t == t}
    if not valid:
        raise RuntimeError("no int8 runtime works on this machine (torch fbgemm and bitsandbytes both failed)")
    record = {"path": min(valid, key=valid.get), "seconds": timings}
    known[key] = record
    atomic_write_json(cache, known)
    return record["path"], record
