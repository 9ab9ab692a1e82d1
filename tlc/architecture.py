"""One description of a model: how a shape becomes parameters, FLOPs, a `transformers` config and a byte layout.

A :class:`ModelShape` (width, depth, heads, context, vocabulary, family, objective) is all that
training, compression, the planner and the artifact-size model need. This module owns every
fact that follows from it, torch-free, so that a shape the planner never built is priced with
the same numbers as the model training builds:

- the layout of the state dict (:func:`model_tensors`: names, [out, in] shapes, roles), and the
  same layout as vectorised counts (:func:`layout_counts`) for pricing grids of shapes at once;
- parameter counts (:func:`param_counts`) and training FLOPs per token (:func:`flops_per_token`);
- the `transformers` config and the Auto class that builds it (:func:`model_config`).

Families: ``gpt2`` (learned positions, GELU, LayerNorm, Conv1D), ``llama`` (RoPE, SwiGLU,
RMSNorm), both causal (``objective: clm``); and with ``objective: mlm`` a RoBERTa-style encoder
(Liu et al. 2019; Li et al. 2020 compress it), built as `transformers`' BertForMaskedLM: post-LN,
learned positions, GELU, bidirectional attention, and an MLM head (dense, LayerNorm, tied decoder).
BERT's class rather than RoBERTa's because RoBERTa offsets position ids by the padding id, which
would put the position table's size at the mercy of where the pad token sits in the vocabulary;
the training recipe (dynamic masking, no next-sentence task, full windows) is RoBERTa's.

The encoder's vocabulary is the BPE vocabulary plus two tokens appended after it, ``<mask>``
and ``<pad>`` (:func:`model_vocab`), so causal and masked runs share one tokenizer and one token
stream; the pad token never occurs in training windows.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("gpt2", "llama")
OBJECTIVES = ("clm", "mlm")  # causal (next-token) or masked language modelling
MASK_TOKEN, PAD_TOKEN = "<mask>", "<pad>"  # the encoder's extra tokens, after the BPE vocabulary
# Prunable matrices inside a block, by module-name suffix: GPT-2 (Conv1D), Llama, BERT (nn.Linear).
# BERT's "output.dense" is both the attention output (attention.output.dense) and the FFN's down projection.
PRUNABLE_SUFFIXES = (
    "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj",
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "attention.self.query", "attention.self.key", "attention.self.value", "output.dense", "intermediate.dense",
)


@dataclass(frozen=True)
class ModelShape:
    """The shape of one transformer."""

    width: int  # d_model: residual stream width
    depth: int  # number of transformer blocks
    heads: int  # attention heads; width must be a multiple of heads
    context: int = 128  # tokens per training sequence (and position embeddings)
    vocab_size: int = 1024  # BPE vocabulary, shared by the tokenizer
    arch: str = "gpt2"  # "gpt2" (learned positions, GELU, Conv1D) or "llama" (RoPE, SwiGLU, RMSNorm)
    ffn_mult: int = 4  # FFN hidden width = ffn_mult * width
    objective: str = "clm"  # "clm": causal decoder; "mlm": RoBERTa-style masked-LM encoder (module docstring)

    def run_id(self, seed: int) -> str:
        """Name a run by its shape, e.g. ``w256-d4-s0`` (architecture prefixed when not GPT-2, ``mlm-`` for
        an encoder)."""
        prefix = "" if self.arch == "gpt2" else f"{self.arch}-"
        if self.objective == "mlm":
            prefix = "mlm-" + prefix
        return f"{prefix}w{self.width}-d{self.depth}-s{seed}"


def family(arch: str, objective: str = "clm") -> str:
    """The layout family a shape is built as: ``gpt2``, ``llama`` or ``bert`` (the masked-LM encoder)."""
    return "bert" if objective == "mlm" else arch


def model_vocab(vocab_size: int, objective: str = "clm") -> int:
    """Rows of the model's token embedding: the BPE vocabulary, plus ``<mask>`` and ``<pad>`` for an encoder."""
    return vocab_size + 2 if objective == "mlm" else vocab_size


def mask_token_id(shape: ModelShape) -> int:
    """The encoder's ``<mask>`` id: the first id after the BPE vocabulary."""
    return shape.vocab_size


def pad_token_id(shape: ModelShape) -> int:
    """The encoder's ``<pad>`` id (never in a training window; BERT zeroes its embedding row)."""
    return shape.vocab_size + 1


# ----------------------------------------------------------------------------------------------
# Layout: the state dict, and the same as vectorised counts


@dataclass(frozen=True)
class Tensor:
    """One tensor of the model's state dict: name, [out, in] shape for matrices, and its role."""

    name: str
    shape: tuple[int, ...]
    role: str  # "matrix" (prunable), "embedding", "other"
    conv1d: bool = False


def model_tensors(shape: ModelShape) -> list[Tensor]:
    """The state dict `tlc.train.model.build_model` makes for ``shape`` (the tied LM head stored once)."""
    d, f, T = shape.width, shape.ffn_mult * shape.width, shape.context
    V = model_vocab(shape.vocab_size, shape.objective)
    out: list[Tensor] = []
    kind = family(shape.arch, shape.objective)
    if kind == "gpt2":
        out += [Tensor("transformer.wte.weight", (V, d), "embedding"), Tensor("transformer.wpe.weight", (T, d),
                                                                                 "embedding")]
        for i in range(shape.depth):
            p = f"transformer.h.{i}."
            out += [Tensor(p + "ln_1.weight", (d,), "other"), Tensor(p + "ln_1.bias", (d,), "other"),
                    Tensor(p + "attn.c_attn.weight", (3 * d, d), "matrix", True),
                    Tensor(p + "attn.c_attn.bias", (3 * d,), "other"),
                    Tensor(p + "attn.c_proj.weight", (d, d), "matrix", True), Tensor(p + "attn.c_proj.bias", (d,), "other"),
                    Tensor(p + "ln_2.weight", (d,), "other"), Tensor(p + "ln_2.bias", (d,), "other"),
                    Tensor(p + "mlp.c_fc.weight", (f, d), "matrix", True), Tensor(p + "mlp.c_fc.bias", (f,), "other"),
                    Tensor(p + "mlp.c_proj.weight", (d, f), "matrix", True), Tensor(p + "mlp.c_proj.bias", (d,), "other")]
        out += [Tensor("transformer.ln_f.weight", (d,), "other"), Tensor("transformer.ln_f.bias", (d,), "other")]
        return out
    if kind == "bert":
        e = "bert.embeddings."
        out += [Tensor(e + "word_embeddings.weight", (V, d), "embedding"),
                Tensor(e + "position_embeddings.weight", (T, d), "embedding"),
                Tensor(e + "token_type_embeddings.weight", (1, d), "embedding"),
                Tensor(e + "LayerNorm.weight", (d,), "other"), Tensor(e + "LayerNorm.bias", (d,), "other")]
        for i in range(shape.depth):
            p = f"bert.encoder.layer.{i}."
            for name, rows, cols in (("attention.self.query", d, d), ("attention.self.key", d, d),
                                     ("attention.self.value", d, d), ("attention.output.dense", d, d),
                                     ("intermediate.dense", f, d), ("output.dense", d, f)):
                out += [Tensor(p + name + ".weight", (rows, cols), "matrix"),
                        Tensor(p + name + ".bias", (rows,), "other")]
            out += [Tensor(p + f"{ln}.LayerNorm.{w}", (d,), "other")
                    for ln in ("attention.output", "output") for w in ("weight", "bias")]
        h = "cls.predictions."
        out += [Tensor(h + "bias", (V,), "other"), Tensor(h + "transform.dense.weight", (d, d), "other"),
                Tensor(h + "transform.dense.bias", (d,), "other"),
                Tensor(h + "transform.LayerNorm.weight", (d,), "other"),
                Tensor(h + "transform.LayerNorm.bias", (d,), "other")]
        return out
    out.append(Tensor("model.embed_tokens.weight", (V, d), "embedding"))
    for i in range(shape.depth):
        p = f"model.layers.{i}."
        out += [Tensor(p + f"self_attn.{n}_proj.weight", (d, d), "matrix") for n in ("q", "k", "v", "o")]
        out += [Tensor(p + "mlp.gate_proj.weight", (f, d), "matrix"), Tensor(p + "mlp.up_proj.weight", (f, d), "matrix"),
                Tensor(p + "mlp.down_proj.weight", (d, f), "matrix"),
                Tensor(p + "input_layernorm.weight", (d,), "other"),
                Tensor(p + "post_attention_layernorm.weight", (d,), "other")]
    out.append(Tensor("model.norm.weight", (d,), "other"))
    return out


def matrix_types(kind: str, d, f) -> list[tuple[int, object, object]]:
    """(count per block, rows, cols) of a family's prunable matrices, [out, in]; d and f may be arrays."""
    if kind == "gpt2":
        return [(1, 3 * d, d), (1, d, d), (1, f, d), (1, d, f)]
    if kind == "bert":
        return [(4, d, d), (1, f, d), (1, d, f)]
    return [(4, d, d), (2, f, d), (1, d, f)]


@dataclass(frozen=True)
class LayoutCounts:
    """A shape's tensors by role, as counts (ints, or arrays for a grid of widths and depths)."""

    embedding_rows: list  # rows of each embedding table (each has `width` columns)
    others: object  # parameters outside the matrices and embeddings: norms, biases, the MLM head's transform
    matrices: list  # matrix_types: (count per block, rows, cols)


def layout_counts(template: dict, d, L) -> LayoutCounts:
    """:func:`model_tensors` as counts, vectorised over width ``d`` and depth ``L``.

    ``template``: arch, context, vocab_size, ffn_mult and (optional, default clm) objective.
    """
    objective = template.get("objective", "clm")
    kind = family(template["arch"], objective)
    V, T = model_vocab(template["vocab_size"], objective), template["context"]
    f = template["ffn_mult"] * d
    if kind == "gpt2":  # per block 2 LayerNorms (4d) and biases (3d + d + f + d); final LayerNorm
        rows, others = [V, T], L * (9 * d + f) + 2 * d
    elif kind == "bert":  # per block the same biases and norms as GPT-2; embedding LayerNorm; MLM head
        rows = [V, T, 1]  # token, position, one token type
        others = L * (9 * d + f) + 2 * d + (d * d + d + 2 * d) + V
    else:  # 2 RMSNorms per block, no biases; final RMSNorm
        rows, others = [V], L * 2 * d + d
    return LayoutCounts(rows, others, matrix_types(kind, d, f))


def shape_from_counts(template: dict, non_embedding, embedding):
    """(width, depth) arrays of ``template``'s shapes with these parameter counts: the inverse of
    :func:`param_counts`, vectorised (the embedding tables fix the width, the rest the depth)."""
    import numpy as np

    non_embedding, embedding = np.asarray(non_embedding, dtype=float), np.asarray(embedding, dtype=float)
    width = np.rint(embedding / sum(layout_counts(template, 1, 1).embedding_rows))

    def counted(depth: int):
        layout = layout_counts(template, width, depth)
        return depth * sum(n * r * c for n, r, c in layout.matrices) + layout.others

    fixed = counted(0)
    depth = np.rint((non_embedding - fixed) / np.maximum(counted(1) - fixed, 1))
    return width.astype(np.int64), depth.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Parameters and training FLOPs


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter, tied embeddings counted once
    non_embedding: int  # total minus token and position embeddings (Kaplan et al. 2020's N)
    embedding: int  # token (and learned position, token type) embeddings


def _template(shape: ModelShape) -> dict:
    return {"arch": shape.arch, "context": shape.context, "vocab_size": shape.vocab_size, "ffn_mult": shape.ffn_mult,
            "objective": shape.objective}


def param_counts(shape: ModelShape) -> ParamCounts:
    """Parameters of the model `tlc.train.model.build_model` makes, counted from the shape alone."""
    counts = layout_counts(_template(shape), shape.width, shape.depth)
    embedding = sum(counts.embedding_rows) * shape.width  # the LM head is tied to the token embedding
    non_embedding = shape.depth * sum(n * r * c for n, r, c in counts.matrices) + counts.others
    return ParamCounts(total=embedding + non_embedding, non_embedding=non_embedding, embedding=embedding)


def flops_per_token(shape: ModelShape) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus the attention term.

    Forward cost is 2 FLOPs per multiply-accumulate. Matmul parameters are the non-embedding
    parameters plus the output projection onto the vocabulary (V x d, a real matmul even when
    tied; an encoder projects every position, as `transformers`' MLM head does, not only the
    masked ones). Attention scores and the weighted sum cost 2·T·d each per token per layer,
    counted over the full context as dense kernels compute them (Hoffmann et al. 2022, appendix
    F): no halving for a causal mask, so a bidirectional encoder costs the same.
    Backward is twice the forward, hence 3x (Kaplan et al. 2020, section 2.1).
    """
    counts = param_counts(shape)
    d, L, T = shape.width, shape.depth, shape.context
    V = model_vocab(shape.vocab_size, shape.objective)
    forward = 2 * (counts.non_embedding + V * d) + 4 * L * T * d
    return 3.0 * forward


# ----------------------------------------------------------------------------------------------
# transformers


def model_config(shape: ModelShape, eot_id: int = 0):
    """The `transformers` config for a shape (dropout off: runs are short and must be exactly resumable)."""
    kind = family(shape.arch, shape.objective)
    if kind == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=shape.vocab_size,
            n_positions=shape.context,
            n_embd=shape.width,
            n_layer=shape.depth,
            n_head=shape.heads,
            n_inner=shape.ffn_mult * shape.width,
            # GPT-2's tanh approximation of GELU as torch's one fused op rather than transformers' "gelu_new", the
            # same formula in five elementwise ops (outputs within 3e-7): a demo shape's training step 1.07-1.19x
            # faster on one EPYC core (bench/step_speed.py; BENCHMARKS.md, "Training speed")
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=eot_id,
            eos_token_id=eot_id,
            tie_word_embeddings=True,
        )
    if kind == "bert":
        from transformers import BertConfig

        return BertConfig(
            vocab_size=model_vocab(shape.vocab_size, shape.objective),
            hidden_size=shape.width,
            num_hidden_layers=shape.depth,
            num_attention_heads=shape.heads,
            intermediate_size=shape.ffn_mult * shape.width,
            max_position_embeddings=shape.context,
            type_vocab_size=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=pad_token_id(shape),
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


def auto_model_class(objective: str = "clm"):
    """`transformers`' Auto class that builds and loads a model of this objective."""
    if objective == "mlm":
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def config_objective(config) -> str:
    """The objective of a `transformers` config: ``mlm`` for the BERT encoder tlc builds, else ``clm``."""
    return "mlm" if getattr(config, "model_type", "") == "bert" else "clm"


def model_objective(model) -> str:
    """The objective of a built model (or of a DeepSpeed engine holding it)."""
    return config_objective(getattr(getattr(model, "module", model), "config", None))
