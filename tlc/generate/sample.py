"""Sampling a completion from a trained or compressed model, and the record the report reads.

Decoding re-reads the last ``context`` tokens at every step (no cache): the models tlc trains are
small, and this is the same forward pass tlc evaluates, on every variant (int8 and sparse included).

A masked-LM encoder (objective mlm) has no left-to-right continuation: it restores ``<mask>`` tokens
(the token it was trained on, one BPE token per ``<mask>``) in a prompt instead. Masks are filled left
to right, each from a forward pass over the prompt with the masks before it already filled, so
adjacent masks agree with each other (one pass for all would choose each as if the others were unknown).

``<run>/samples.jsonl``, one line per ``tlc generate``: variant, method, sparsity, bits, prompt,
completion, tokens (asked), generated (produced; fewer when the end-of-text token came first),
temperature, seed, prompt_tokens; for an encoder also objective "mlm", and completion is then the
whole prompt with its masks filled (tokens and generated: the number of masks).
"""

from __future__ import annotations

from pathlib import Path

SAMPLES = "samples.jsonl"


def load_tokenizer(run_dir: Path):
    """The run's byte-level BPE tokenizer (``model/tokenizer.json``) and its end-of-text id."""
    from tokenizers import Tokenizer

    from tlc.train.data import EOT

    tokenizer = Tokenizer.from_file(str(Path(run_dir) / "model" / "tokenizer.json"))
    return tokenizer, tokenizer.token_to_id(EOT)


def load_model(run_dir: Path, variant_folder: Path | None, objective: str = "clm"):
    """The dense model of ``model/`` (no variant), or a saved variant as tlc evaluates it; fp32, eval mode."""
    if variant_folder is None:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
        return auto.from_pretrained(str(Path(run_dir) / "model"), use_safetensors=True,
                                    attn_implementation="sdpa").float().eval()
    from tlc.compress.store import load_variant

    return load_variant(variant_folder)


def complete(model, prompt_ids: list[int], tokens: int, temperature: float, seed: int, context: int,
             stop_id: int | None = None) -> list[int]:
    """Up to ``tokens`` new token ids after ``prompt_ids``: greedy at temperature 0, else sampled from
    softmax(logits / temperature) with a generator seeded by ``seed``; stops after ``stop_id``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(tokens):
            window = torch.tensor([ids[-context:]], dtype=torch.long)  # (1, T <= context)
            logits = model(input_ids=window).logits[0, -1].float()  # (V,)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(token)
            new.append(token)
            if token == stop_id:
                break
    return new


def fill_masks(model, prompt_ids: list[int], mask_id: int, temperature: float, seed: int) -> list[int]:
    """The token chosen for each ``mask_id`` in ``prompt_ids``, left to right (module docstring): greedy at
    temperature 0, else sampled as `complete` samples. Only BPE tokens (ids below ``mask_id``) are chosen,
    never ``<mask>`` or ``<pad>``, which follow it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    fills: list[int] = []
    with torch.inference_mode():
        for position in [i for i, token in enumerate(ids) if token == mask_id]:
            logits = model(input_ids=torch.tensor([ids])).logits[0, position, :mask_id].float()  # (V,)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            ids[position] = token
            fills.append(token)
    return fills
