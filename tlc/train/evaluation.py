"""Language-model loss and validation metrics, shared by training and the compression stage.

Validation runs over fixed windows of the validation stream (``tlc.train.data.val_offsets``), so
every model of a sweep, dense or compressed, is scored on the same tokens. Metrics: loss in nats
per token, bits per byte (comparable across tokenizers) and next-token accuracy, and the loss split
by target: tokens that already occurred earlier in their window, which a model can copy from its
context, and the rest. The two parts scale differently: a model that learns to copy (Olsson et al.
2022's induction heads) drops the first part abruptly, and no smooth law of N and D sees it coming
(BENCHMARKS.md, "Where the plans past 1× missed").
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from tlc.train.data import TokenData, windows


# Tokens per evaluation forward pass. Evaluating at the training micro-batch made tiny models pay Python's per-call
# cost many times over (context 32, micro-batch 8: 32 forwards for 8192 tokens); without gradients, a pass over
# this many tokens holds little more than its logits, as a training micro-batch of this size would.
EVAL_BATCH_TOKENS = 4096


def eval_batch_size(micro_batch: int, context: int) -> int:
    """Windows per evaluation forward: the training micro-batch, or more, up to EVAL_BATCH_TOKENS tokens.

    The losses do not depend on it (each window is scored alone), except through int8 dynamic quantization,
    whose activation scale is taken over the whole batch."""
    return max(micro_batch, EVAL_BATCH_TOKENS // context)


def lm_loss(model, batch, salt: tuple[int, ...] = (0,)):
    """Mean next-token cross-entropy (nats) of a (B, T+1) window batch, and the logits; for a masked-LM
    encoder the cross-entropy at its masked positions, masked as ``salt`` and the windows decide
    (`tlc.train.masking`)."""
    import torch.nn.functional as F

    from tlc.architecture import model_objective

    if model_objective(model) == "mlm":
        from tlc.train.masking import masked_lm_loss

        return masked_lm_loss(model, batch, salt)

    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
    logits = model(input_ids=inputs).logits  # (B, T, V)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    return loss, logits


def val_batches(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int,
                device) -> Iterator[tuple]:
    """(logits float32 (B, T, V), windows (B, T+1)) for the validation windows at ``offsets``, in order;
    the targets are ``windows[:, 1:]``.

    Gradient mode is the caller's to set (``torch.no_grad`` or ``torch.inference_mode``).
    """
    import torch

    for start in range(0, len(offsets), batch_size):
        batch = torch.from_numpy(windows(tokens.val, offsets[start : start + batch_size], context)).to(device)
        yield model(input_ids=batch[:, :-1]).logits.float(), batch


def scored_batches(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int,
                   device) -> Iterator[tuple]:
    """(logits float32 (n, V), targets (n,), repeated (n,) bool) of every scored validation position, in order:
    each next token for a causal model, the masked positions for a masked-LM encoder (`tlc.train.masking`).
    ``repeated``: the target already occurred earlier in its window."""
    from tlc.architecture import model_objective

    if model_objective(model) == "mlm":
        from tlc.train.masking import masked_val_batches

        yield from masked_val_batches(model, tokens.val, offsets, context, batch_size, device)
        return
    for logits, window in val_batches(model, tokens, offsets, context, batch_size, device):
        yield logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1), repeated_targets(window).reshape(-1)


def repeated_targets(window):
    """(B, T) bool for a (B, T+1) window batch: whether each target (token t+1) already occurred among
    tokens 0..t of its window. O(B·(T + V)) via each token's first position in its window."""
    import torch

    positions = torch.arange(window.size(1), device=window.device).expand_as(window)
    vocab = int(window.max()) + 1
    first = torch.full((window.size(0), vocab), window.size(1), dtype=positions.dtype, device=window.device)
    first.scatter_reduce_(1, window, positions, reduce="amin")
    return (first.gather(1, window) < positions)[:, 1:]


def bits_per_byte(val_loss: float, tokens: TokenData) -> float:
    """Nats per token to bits per byte of validation text."""
    return val_loss / math.log(2) / tokens.val_bytes_per_token


def evaluate(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int, device, rank=0, world=1):
    """Validation loss (nats/token), bits per byte and next-token accuracy over fixed windows (for an
    encoder: at its masked positions, `scored_batches`), and the
    loss on targets that occurred earlier in their window (``val_loss_repeat``; None without any),
    on the others (``val_loss_novel``) and the share of the first (``val_repeat_share``).

    Windows are shared out over processes and the sums reduced, so the result does not depend
    on the world size.
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    # loss sum, correct predictions, predictions, loss sum on repeated targets, repeated targets; kept on the
    # model's device: NCCL reduces CUDA tensors only, and the sums need no host sync per batch
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    with torch.no_grad():
        for logits, targets, repeated in scored_batches(model, tokens, offsets[rank::world], context, batch_size,
                                                        device):
            losses = F.cross_entropy(logits, targets, reduction="none")
            sums[0] += losses.sum()
            sums[1] += (logits.argmax(-1) == targets).sum()
            sums[2] += targets.numel()
            sums[3] += losses[repeated].sum()
            sums[4] += repeated.sum()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    sums = sums.cpu()
    model.train(was_training)
    val_loss = float(sums[0] / sums[2])
    return {"val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, tokens), "val_acc": float(sums[1] / sums[2]),
            **loss_by_target(float(sums[0]), float(sums[2]), float(sums[3]), float(sums[4]))}


def loss_by_target(loss_sum: float, targets: float, repeat_loss_sum: float, repeats: float) -> dict:
    """``val_loss_repeat`` and ``val_loss_novel`` (mean loss on targets seen / not seen earlier in their
    window; None where there are none) and ``val_repeat_share``, from loss sums and target counts."""
    novel = targets - repeats
    return {"val_loss_repeat": repeat_loss_sum / repeats if repeats else None,
            "val_loss_novel": (loss_sum - repeat_loss_sum) / novel if novel else None,
            "val_repeat_share": repeats / targets}
