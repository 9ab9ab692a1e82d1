"""Parameter counts and training FLOPs of a model shape, from the shape alone (no torch).

The training stage records them and the planner prices shapes it never built with the same
numbers; a test checks them against the built model and against DeepSpeed's FLOPs profiler.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlc.config import ModelShape


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter, tied embeddings counted once
    non_embedding: int  # total minus token and position embeddings (Kaplan et al. 2020's N)
    embedding: int  # token (and learned position) embeddings


def param_counts(shape: ModelShape) -> ParamCounts:
    """Parameters of the model :func:`build_model` makes, counted from the shape alone."""
    d, L, V, T = shape.width, shape.depth, shape.vocab_size, shape.context
    f = shape.ffn_mult * d
    if shape.arch == "gpt2":
        # per block: qkv (d x 3d + 3d), out proj (d x d + d), fc (d x f + f), proj (f x d + d), 2 LayerNorms (4d)
        per_block = 4 * d * d + 2 * d * f + 9 * d + f
        embedding = V * d + T * d  # token + learned positions; the LM head is tied to the token embedding
        non_embedding = L * per_block + 2 * d  # + final LayerNorm
    else:
        # per block: q, k, v, o (4 d^2, no bias), gate/up/down (3 d f), 2 RMSNorms (2d)
        per_block = 4 * d * d + 3 * d * f + 2 * d
        embedding = V * d  # rotary positions have no parameters; the LM head is tied
        non_embedding = L * per_block + d
    return ParamCounts(total=embedding + non_embedding, non_embedding=non_embedding, embedding=embedding)


def flops_per_token(shape: ModelShape) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus the attention term.

    Forward cost is 2 FLOPs per multiply-accumulate. Matmul parameters are the non-embedding
    parameters plus the output projection onto the vocabulary (V x d, a real matmul even when
    tied). Attention scores and the weighted sum cost 2·T·d each per token per layer, counted
    over the full context as dense kernels compute them (Hoffmann et al. 2022, appendix F).
    Backward is twice the forward, hence 3x (Kaplan et al. 2020, section 2.1).
    """
    counts = param_counts(shape)
    d, L, V, T = shape.width, shape.depth, shape.vocab_size, shape.context
    forward = 2 * (counts.non_embedding + V * d) + 4 * L * T * d
    return 3.0 * forward
