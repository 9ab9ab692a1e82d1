"""Decoder-only transformers built from a shape (GPT-2 or Llama-style `transformers` configs).

Models come from a `transformers` config, never from downloaded weights. Their parameter counts
and training FLOPs are :mod:`tlc.shapes` (torch-free, shared with the planner); a test checks
them against the models built here.
"""

from __future__ import annotations

from tlc.config import ModelShape


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
