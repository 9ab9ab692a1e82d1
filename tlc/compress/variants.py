"""Which compressed variants ``tlc compress`` makes, how each is built, and how it is timed.

A variant is (method, target sparsity, bits): ``none`` at 0 (the dense baseline, and int8
alone), each pruning method at each requested sparsity (2:4 only at its fixed 0.5), and, with
``--int8``, every one of them again with 8-bit weights on top.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tlc.errors import UserError

METHODS = ("magnitude", "magnitude-global", "block", "structured", "2:4", "gradual", "movement",
           "wanda", "wanda-2:4", "sparsegpt", "sparsegpt-2:4", "gptq", "rtn")
DEFAULT_METHODS = ("magnitude", "block", "structured", "2:4", "gradual")
# Four levels: the fit bends the pruning models and checks how they interpolate only with three or more,
# and the planner asks for sparsities between those measured (BENCHMARKS.md, "Pruning between the
# measured sparsities").
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)
RECOVERING = ("gradual", "movement")  # methods that fine-tune while they prune
N_OF_M = ("2:4", "wanda-2:4", "sparsegpt-2:4")  # sparsity fixed at 0.5
QUANTIZERS = ("gptq", "rtn")  # weight-only quantization to --quant-bits, no pruning
# methods that look at calibration windows of training text (--calibration-sequences of them)
CALIBRATED = ("wanda", "wanda-2:4", "sparsegpt", "sparsegpt-2:4", "gptq")
METHOD_HELP = {
    "magnitude": "unstructured |w|, the same sparsity in every layer",
    "magnitude-global": "unstructured |w| ranked over all layers at once",
    "block": "square blocks (--block-size) with the lowest Frobenius norm",
    "structured": "whole attention heads and FFN neurons, physically removed",
    "2:4": "2 of every 4 consecutive inputs (sparsity fixed at 0.5)",
    "gradual": "cubic schedule during a --recovery-steps fine-tune, magnitude scores",
    "movement": "cubic schedule during a --recovery-steps fine-tune, movement scores",
    "wanda": "|w| times its input's norm over calibration text, per output row (Sun et al. 2023)",
    "wanda-2:4": "wanda scores, 2 of every 4 consecutive inputs kept",
    "sparsegpt": "one-shot pruning with second-order weight updates from calibration text (Frantar & Alistarh 2023)",
    "sparsegpt-2:4": "sparsegpt, 2 of every 4 consecutive inputs kept",
    "gptq": "weight-only --quant-bits quantization, --group-size inputs per scale, with GPTQ's updates "
            "(Frantar et al. 2022); no pruning",
    "rtn": "weight-only --quant-bits round-to-nearest on gptq's grid: its calibration-free baseline",
}


@dataclass(frozen=True)
class CompressSettings:
    """Everything ``tlc compress`` was asked for."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    int8: bool = True  # also 8-bit alone and on top of every pruned variant
    recovery_steps: int = 50  # fine-tune steps of the gradual methods
    block_size: int = 32  # side of the square blocks of "block"
    calibration_windows: int = 16  # training windows that score heads and neurons
    latency_repeats: int = 7  # timed forward passes per batch size (median reported)
    ort_latency: bool = False  # also time each 8-bit variant on ONNX Runtime int8 (needs onnxruntime)
    prompt_tokens: int = 32  # the fixed prompt length timed
    calibration_sequences: int = 128  # training windows (of the model's context) that wanda, sparsegpt, gptq see
    quant_bits: tuple[int, ...] = (8, 4)  # weight bits of gptq and rtn variants
    group_size: int = 32  # inputs per scale of gptq and rtn (0: one scale per output row)


@dataclass(frozen=True)
class VariantSpec:
    """One compressed variant to make."""

    method: str  # a METHODS name, or "none"
    sparsity: float  # target sparsity of the prunable weights
    bits: int  # 32 or 8; 8 or 4 for the weight-only QUANTIZERS
    block: int | None = None  # block size for "block"
    group: int | None = None  # inputs per scale for QUANTIZERS

    @property
    def id(self) -> str:
        """Folder-safe name, e.g. ``dense``, ``none-int8``, ``block32-s90``, ``2of4-s50-int8``, ``gptq-w4g32``."""
        if self.method == "none":
            return "dense" if self.bits == 32 else "none-int8"
        if self.method in QUANTIZERS:
            return f"{self.method}-w{self.bits}g{self.group or 0}"
        name = {"block": f"block{self.block}"}.get(self.method, self.method.replace(":", "of"))
        return f"{name}-s{round(self.sparsity * 100):02d}" + ("-int8" if self.bits == 8 else "")

    @property
    def base(self) -> VariantSpec:
        """The 32-bit variant an 8-bit one is quantized from (a weight-only quantized variant is its own)."""
        if self.method in QUANTIZERS:
            return self
        return VariantSpec(self.method, self.sparsity, 32, self.block)


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods magnitude,block`` -> ('magnitude', 'block'); unknown names are a UserError."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        got = f"unknown method {unknown[0]!r}" if unknown else "no method given"
        raise UserError(f"--methods: {got}; valid: {', '.join(METHODS)}")
    return names


def parse_sparsities(text: str) -> tuple[float, ...]:
    """``--sparsity 0.5,0.9`` -> (0.5, 0.9); each level must be a number in [0, 1)."""
    levels = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--sparsity: expected numbers in [0, 1) such as 0.5,0.9, got {part!r}") from None
        if not 0.0 <= value < 1.0:
            raise UserError(f"--sparsity: each level must be in [0, 1), got {part}")
        levels.append(value)
    if not levels:
        raise UserError("--sparsity: give at least one level, e.g. 0.5,0.9")
    return tuple(dict.fromkeys(levels))


def variant_specs(settings: CompressSettings) -> list[VariantSpec]:
    """Every variant in the order they are made (each 8-bit one right after its 32-bit base)."""
    bits = (32, 8) if settings.int8 else (32,)
    specs = [VariantSpec("none", 0.0, b) for b in bits]
    for method in settings.methods:
        if method in QUANTIZERS:
            specs.extend(VariantSpec(method, 0.0, b, group=settings.group_size) for b in settings.quant_bits)
            continue
        levels = (0.5,) if method in N_OF_M else tuple(s for s in settings.sparsities if s > 0)
        for s in levels:
            specs.extend(VariantSpec(method, s, b, settings.block_size if method == "block" else None) for b in bits)
    return specs


def sparse_kind(spec: VariantSpec) -> str:
    """How the prunable matrices of a variant are stored (see tlc.compress.store)."""
    if spec.method in ("none", "structured") or spec.method in QUANTIZERS:
        return "dense"  # weight-only quantized matrices are stored as codes and scales (tlc.compress.store)
    return "bsr" if spec.method == "block" else "bitmask"


def build_pruned(spec: VariantSpec, dense, calibration, recovery: dict | None):
    """The 32-bit model of ``spec`` made from ``dense`` (left untouched), and its achieved sparsity.

    ``dense`` is the trained model, ``calibration`` a (windows, context) batch of training tokens (the
    calibrated methods' --calibration-sequences windows for those) and ``recovery`` what gradual methods
    fine-tune with: tokens, context, train, steps, seed.
    """
    from tlc.compress.prune import PATTERNS, apply_masks, count_sparsity

    model = copy.deepcopy(dense)
    if spec.method == "none":
        return model, 0.0
    if spec.method == "structured":
        from tlc.compress.structured import shrink, structured_plan

        plan = structured_plan(model, spec.sparsity, calibration)
        return shrink(model, plan), plan.sparsity
    if spec.method in ("wanda", "wanda-2:4", "sparsegpt", "sparsegpt-2:4"):
        from tlc.compress.calibrated import sparsegpt_prune, wanda_prune
        from tlc.compress.prune import check_sparsity

        check_sparsity(spec.sparsity)
        prune = wanda_prune if spec.method.startswith("wanda") else sparsegpt_prune
        prune(model, spec.sparsity, calibration, (2, 4) if spec.method.endswith("2:4") else None)
    elif spec.method in RECOVERING:
        from tlc.compress.gradual import gradual_prune

        scores = "movement" if spec.method == "movement" else "magnitude"
        model, _ = gradual_prune(model, spec.sparsity, recovery["tokens"], recovery["context"], recovery["train"],
                                 recovery["steps"], scores=scores, seed=recovery["seed"])
    else:
        masks = PATTERNS[spec.method](model, spec.sparsity, calibration, block_size=spec.block or 32)
        apply_masks(model, masks)
    zeros, total = count_sparsity(model)
    return model, zeros / total


# ----------------------------------------------------------------------------------------------
# Latency


def block_sparse_model(model, block_size: int, example, tokens: int = 256) -> tuple[object | None, str]:
    """``model`` with its block-pruned layers as cuda_ext BlockSparseLinear, or (None, why not).

    Each layer is stored as blocks or densely as cuda_ext decides for calls of ``tokens`` tokens: by
    this machine's measured crossover for its shape (cached, see cuda_ext/crossover.py), so the
    converted model runs the path a deployed one would. The converted model is checked against
    ``model`` on the ``example`` token batch first.
    """
    import torch

    try:
        import cuda_ext
    except Exception as error:  # the extension is optional: fall back, and say why
        return None, f"cuda_ext not importable ({type(error).__name__})"
    try:
        if not cuda_ext.available():
            return None, "cuda_ext kernel not built"
        converted = cuda_ext.convert_block_sparse(copy.deepcopy(model), block_size, tokens=tokens)
        if not any(isinstance(m, cuda_ext.BlockSparseLinear) for m in converted.modules()):
            return None, "no layer sparse enough for cuda_ext"
        with torch.inference_mode():
            expected = model(input_ids=example).logits
            got = converted(input_ids=example).logits
        if not torch.allclose(expected, got, rtol=1e-3, atol=1e-3):
            return None, "cuda_ext output differs from the masked model"
        return converted, "cuda_ext_bsr"
    except Exception as error:
        return None, f"cuda_ext failed ({type(error).__name__}: {str(error)[:80]})"


def block_storage_note(converted) -> str:
    """Which cuda_ext kernel path ran and how many converted layers kept their blocks, e.g.
    "cuda_ext avx2: 6 of 8 layers as blocks, 2 dense above the measured crossover"."""
    import cuda_ext

    layers = [m for m in converted.modules() if isinstance(m, cuda_ext.BlockSparseLinear)]
    as_blocks = sum(m.weight is None for m in layers)
    return (f"cuda_ext {cuda_ext.cpu_kernel_isa() or 'reference'}: {as_blocks} of {len(layers)} layers as blocks, "
            f"{len(layers) - as_blocks} dense above the measured crossover")


def latency_kind(spec: VariantSpec, int8_path: str | None) -> str:
    """How a variant is timed when no special kernel applies."""
    if spec.method in QUANTIZERS:
        return "dense_dequantized"  # weight-only codes have no faster kernel on this CPU: timed as fp32
    if spec.bits == 8:
        return f"int8_{int8_path}"
    if spec.method in ("none", "structured"):
        return "dense"
    return "dense_masked"
