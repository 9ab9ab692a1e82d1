"""Which compressed variants ``tlc compress`` makes, how each is built, and how it is timed.

A variant is (method, target sparsity, bits): ``none`` at 0 (the dense baseline, and int8
alone), each pruning method at each requested sparsity (2:4 only at its fixed 0.5), and, with
``--int8``, every one of them again with 8-bit weights on top.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tlc.errors import UserError

METHODS = ("magnitude", "magnitude-global", "block", "structured", "2:4", "gradual", "movement")
DEFAULT_METHODS = ("magnitude", "block", "structured", "2:4", "gradual")
# Four levels: the fit bends the pruning models and checks how they interpolate only with three or more,
# and the planner asks for sparsities between those measured (BENCHMARKS.md, "Pruning between the
# measured sparsities").
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)
RECOVERING = ("gradual", "movement")  # methods that fine-tune while they prune
METHOD_HELP = {
    "magnitude": "unstructured |w|, the same sparsity in every layer",
    "magnitude-global": "unstructured |w| ranked over all layers at once",
    "block": "square blocks (--block-size) with the lowest Frobenius norm",
    "structured": "whole attention heads and FFN neurons, physically removed",
    "2:4": "2 of every 4 consecutive inputs (sparsity fixed at 0.5)",
    "gradual": "cubic schedule during a --recovery-steps fine-tune, magnitude scores",
    "movement": "cubic schedule during a --recovery-steps fine-tune, movement scores",
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


@dataclass(frozen=True)
class VariantSpec:
    """One compressed variant to make."""

    method: str  # a METHODS name, or "none"
    sparsity: float  # target sparsity of the prunable weights
    bits: int  # 32 or 8
    block: int | None = None  # block size for "block"

    @property
    def id(self) -> str:
        """Folder-safe name, e.g. ``dense``, ``none-int8``, ``block32-s90``, ``2of4-s50-int8``."""
        if self.method == "none":
            return "dense" if self.bits == 32 else "none-int8"
        name = {"2:4": "2of4", "block": f"block{self.block}"}.get(self.method, self.method)
        return f"{name}-s{round(self.sparsity * 100):02d}" + ("-int8" if self.bits == 8 else "")

    @property
    def base(self) -> VariantSpec:
        """The 32-bit variant an 8-bit one is quantized from."""
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
        levels = (0.5,) if method == "2:4" else tuple(s for s in settings.sparsities if s > 0)
        for s in levels:
            specs.extend(VariantSpec(method, s, b, settings.block_size if method == "block" else None) for b in bits)
    return specs


def sparse_kind(spec: VariantSpec) -> str:
    """How the prunable matrices of a variant are stored (see tlc.compress.store)."""
    if spec.method in ("none", "structured"):
        return "dense"
    return "bsr" if spec.method == "block" else "bitmask"


def build_pruned(spec: VariantSpec, dense, calibration, recovery: dict | None):
    """The 32-bit model of ``spec`` made from ``dense`` (left untouched), and its achieved sparsity.

    ``dense`` is the trained model, ``calibration`` a (windows, context) batch of training tokens and
    ``recovery`` what gradual methods fine-tune with: tokens, context, train, steps, seed.
    """
    from tlc.compress.prune import PATTERNS, apply_masks, count_sparsity

    model = copy.deepcopy(dense)
    if spec.method == "none":
        return model, 0.0
    if spec.method == "structured":
        from tlc.compress.structured import shrink, structured_plan

        plan = structured_plan(model, spec.sparsity, calibration)
        return shrink(model, plan), plan.sparsity
    if spec.method in RECOVERING:
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
    if spec.bits == 8:
        return f"int8_{int8_path}"
    if spec.method in ("none", "structured"):
        return "dense"
    return "dense_masked"
