"""Decoder-only transformers built from a shape, their parameter counts and training FLOPs.

Models come from a `transformers` config (GPT-2 or Llama-style), never from downloaded
weights. Counts are analytic so that the planner can price shapes it never built; a test
checks them against the built model and against DeepSpeed's FLOPs profiler.
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


def model_config(shape: ModelShape, eot_id: int = 0):
    """The `transformers` config for a shape (dropout off: runs are short and must be exactly resumable)."""
    if shape.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=shape.vocab_size,
            n_positions=shape.context,
            n_embd=shape.width,
            n_layer=shape.depth,
            n_head=shape.heads,
            n_inner=shape.ffn_mult * shape.width,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=eot_id,
            eos_token_id=eot_id,
            tie_word_embeddings=True,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.width,
        intermediate_size=shape.ffn_mult * shape.width,
        num_hidden_layers=shape.depth,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.context,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        attention_dropout=0.0,
    )


def build_model(shape: ModelShape, eot_id: int = 0, seed: int = 0):
    """A freshly initialised causal LM for ``shape``, seeded so that a run's init is reproducible."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(shape, eot_id), attn_implementation="sdpa")
    return model
