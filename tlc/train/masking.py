"""Masked language modelling (RoBERTa's recipe): which tokens an encoder must restore, and its loss.

BERT's corruption (Devlin et al. 2019, section 3.1; kept by RoBERTa, Liu et al. 2019): 15% of a
window's positions are chosen; of those, 80% become ``<mask>``, 10% a random token and 10% stay
as they are; the loss is the cross-entropy of the original token at the chosen positions only.
RoBERTa draws the positions afresh each time a sequence is seen ("dynamic masking"). Here the
draw is a pure function of a salt and the window's own tokens: training salts with (seed, step),
so a resumed run, or any split of a step over processes and micro-batches, masks exactly as an
uninterrupted one; validation salts with a constant, so every model of a sweep and every
compressed variant is scored on the same positions, as causal runs are on the same targets.

Exactly ``round(0.15 · T)`` positions per window are chosen (not a Bernoulli draw per token), so
every window contributes the same number of predictions and the loss is a plain mean.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from tlc.architecture import MASK_TOKEN, PAD_TOKEN

MASK_RATE = 0.15  # share of positions the encoder must restore
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen positions: <mask>, a random token; the rest stay unchanged
VAL_SALT = (7919, 0)  # validation masks: the same for every model and variant
IGNORE = -100  # label of a position the loss skips (torch's cross_entropy default ignore_index)


def masked_count(context: int) -> int:
    """Positions chosen per window of ``context`` tokens."""
    return max(1, round(MASK_RATE * context))


def mask_windows(windows: np.ndarray, bpe_vocab: int, salt: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) for (B, T) int64 token windows: inputs corrupted 80/10/10 at the chosen positions,
    labels the original token there and ``IGNORE`` elsewhere. ``<mask>`` is id ``bpe_vocab``; random
    replacements are drawn from the BPE vocabulary [0, bpe_vocab), never the special tokens."""
    inputs, labels = windows.copy(), np.full_like(windows, IGNORE)
    k = masked_count(windows.shape[1])
    for i, window in enumerate(windows):
        rng = np.random.default_rng([*salt, zlib.crc32(window.tobytes())])
        chosen = rng.choice(windows.shape[1], size=k, replace=False)
        action = rng.random(k)
        labels[i, chosen] = window[chosen]
        masked, random = chosen[action < MASK_SHARE], chosen[(action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)]
        inputs[i, masked] = bpe_vocab
        inputs[i, random] = rng.integers(0, bpe_vocab, size=random.size)
    return inputs, labels


def bpe_vocab_of(model) -> int:
    """The BPE vocabulary of an encoder: its embedding rows less ``<mask>`` and ``<pad>``."""
    return int(getattr(model, "module", model).config.vocab_size) - 2


def masked_lm_loss(model, batch, salt: tuple[int, ...] = (0,)):
    """Mean cross-entropy (nats) of the original tokens at the masked positions of a (B, T+1) window batch
    (the encoder reads the first T tokens; the extra one keeps the batch layout of causal runs), and the logits."""
    import torch
    import torch.nn.functional as F

    tokens = batch[:, :-1]
    inputs, labels = mask_windows(tokens.cpu().numpy(), bpe_vocab_of(model), salt)
    inputs, labels = torch.from_numpy(inputs).to(batch.device), torch.from_numpy(labels).to(batch.device)
    logits = model(input_ids=inputs).logits  # (B, T, V+2)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE)
    return loss, logits


def masked_val_batches(model, stream: np.ndarray, offsets: np.ndarray, context: int, batch_size: int,
                       device) -> Iterator[tuple]:
    """(logits float32 (n, V+2), targets (n,), repeated (n,) bool) at the masked positions of the validation
    windows at ``offsets``, in order; ``repeated``: the target occurs earlier in its window (as for causal runs).

    Gradient mode is the caller's to set.
    """
    import torch

    from tlc.train.data import windows
    from tlc.train.evaluation import repeated_targets

    bpe_vocab = bpe_vocab_of(model)
    for start in range(0, len(offsets), batch_size):
        batch = windows(stream, offsets[start : start + batch_size], context)[:, :-1]  # (B, T)
        inputs, labels = mask_windows(batch, bpe_vocab, VAL_SALT)
        chosen = torch.from_numpy(labels != IGNORE).to(device)
        logits = model(input_ids=torch.from_numpy(inputs).to(device)).logits.float()  # (B, T, V+2)
        window = torch.from_numpy(batch).to(device)
        earlier = torch.cat([torch.zeros_like(chosen[:, :1]), repeated_targets(window)], dim=1)  # (B, T)
        yield logits[chosen], window[chosen], earlier[chosen]


def encoder_tokenizer(tokenizer, vocab_size: int):
    """A copy of the BPE ``tokenizers.Tokenizer`` with ``<mask>`` and ``<pad>`` appended after its
    ``vocab_size`` tokens (the ids `tlc.architecture` gives them)."""
    from tokenizers import AddedToken, Tokenizer

    from tlc.errors import UserError

    size = tokenizer.get_vocab_size()
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.add_special_tokens([AddedToken(MASK_TOKEN, special=True), AddedToken(PAD_TOKEN, special=True)])
    if (copy.token_to_id(MASK_TOKEN), copy.token_to_id(PAD_TOKEN)) != (vocab_size, vocab_size + 1):
        raise UserError(f"vocab_size: the corpus gives a BPE vocabulary of only {size} tokens, not {vocab_size}; "
                        f"an mlm run needs them all (its <mask> id is {vocab_size}): use a vocab_size of {size}")
    return copy
