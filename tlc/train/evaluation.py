"""Language-model loss and validation metrics, shared by training and the compression stage.

Validation runs over fixed windows of the validation stream (``tlc.train.data.val_offsets``), so
every model of a sweep, dense or compressed, is scored on the same tokens. Metrics: loss in nats
per token, bits per byte (comparable across tokenizers) and next-token accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from tlc.train.data import TokenData, windows


def lm_loss(model, batch):
    """Mean next-token cross-entropy (nats) of a (B, T+1) window batch, and the logits."""
    import torch.nn.functional as F

    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
    logits = model(input_ids=inputs).logits  # (B, T, V)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    return loss, logits


def val_batches(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int,
                device) -> Iterator[tuple]:
    """(logits float32 (B, T, V), targets (B, T)) for the validation windows at ``offsets``, in order.

    Gradient mode is the caller's to set (``torch.no_grad`` or ``torch.inference_mode``).
    """
    import torch

    for start in range(0, len(offsets), batch_size):
        batch = torch.from_numpy(windows(tokens.val, offsets[start : start + batch_size], context)).to(device)
        yield model(input_ids=batch[:, :-1]).logits.float(), batch[:, 1:]


def bits_per_byte(val_loss: float, tokens: TokenData) -> float:
    """Nats per token to bits per byte of validation text."""
    return val_loss / math.log(2) / tokens.val_bytes_per_token


def evaluate(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int, device, rank=0, world=1):
    """Validation loss (nats/token), bits per byte and next-token accuracy over fixed windows.

    Windows are shared out over processes and the sums reduced, so the result does not depend
    on the world size.
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct predictions, predictions
    with torch.no_grad():
        for logits, targets in val_batches(model, tokens, offsets[rank::world], context, batch_size, device):
            sums[0] += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum").item()
            sums[1] += (logits.argmax(-1) == targets).sum().item()
            sums[2] += targets.numel()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train(was_training)
    val_loss = float(sums[0] / sums[2])
    return {"val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, tokens), "val_acc": float(sums[1] / sums[2])}
