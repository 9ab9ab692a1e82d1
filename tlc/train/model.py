"""Transformers built from a shape: GPT-2 or Llama-style causal decoders, or a RoBERTa-style encoder.

Models come from a `transformers` config, never from downloaded weights. The config, parameter
counts and training FLOPs of a shape are :mod:`tlc.architecture` (torch-free, shared with the
planner); a test checks them against the models built here.
"""

from __future__ import annotations

from tlc.architecture import ModelShape, auto_model_class, model_config

__all__ = ["build_model", "model_config"]


def build_model(shape: ModelShape, eot_id: int = 0, seed: int = 0):
    """A freshly initialised language model for ``shape``, seeded so that a run's init is reproducible."""
    import torch

    torch.manual_seed(seed)
    return auto_model_class(shape.objective).from_config(model_config(shape, eot_id), attn_implementation="sdpa")
