"""Evaluation of compressed variants: the training stage's metrics, loss by token frequency,
disagreement and compression-identified exemplars, and latency per token.

Metrics follow :func:`tlc.train.evaluation.evaluate` exactly (same windows, nats per token, bits per byte,
next-token accuracy) and add, per scored position, the loss and the arg-max prediction, so that
variants can be compared position by position.

Token-frequency buckets (Hooker et al. 2020: compression costs rare patterns first): vocabulary
ids are sorted from rarest to most frequent by their count in the *training* stream and cut into
5 buckets of equal training-token mass (a token belongs to the bucket holding the midpoint of its
share of the cumulative mass). Bucket 0 is the rarest fifth of training tokens, bucket 4 the most
frequent. Each validation position is bucketed by its target token. A bucket that no validation
target falls into reports ``null``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from tlc.train.data import TokenData
from tlc.train.evaluation import bits_per_byte, loss_by_target, scored_batches

N_BUCKETS = 5


def frequency_buckets(train_tokens: np.ndarray, vocab_size: int, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """Bucket (0 = rarest) of every vocabulary id, by equal training-token mass. Shape [vocab_size]."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    order = np.argsort(counts, kind="stable")  # rarest first
    mass = counts[order]
    midpoint = (np.cumsum(mass) - mass / 2) / max(1.0, mass.sum())
    buckets = np.empty(vocab_size, dtype=np.int64)
    buckets[order] = np.minimum(n_buckets - 1, (midpoint * n_buckets).astype(np.int64))
    return buckets


def evaluate_positions(model, tokens: TokenData, offsets: np.ndarray, context: int, batch_size: int, device,
                       buckets: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of ``model`` on the validation windows, with per-position loss and predictions.

    Returns (metrics, token_loss float32 [positions], predictions int32 [positions]); metrics has
    val_loss, val_bpb, val_acc, val_loss_repeat, val_loss_novel and val_repeat_share (as
    tlc.train.evaluation.evaluate), loss_by_freq_bucket and freq_bucket_tokens.
    """
    losses, preds, targets_all, repeats = [], [], [], []
    model.eval()
    with torch.inference_mode():
        for logits, targets, repeated in scored_batches(model, tokens, offsets, context, batch_size, device):
            loss = F.cross_entropy(logits, targets, reduction="none")
            losses.append(loss.cpu().numpy())
            preds.append(logits.argmax(-1).cpu().numpy().astype(np.int32))
            targets_all.append(targets.cpu().numpy())
            repeats.append(repeated.cpu().numpy())
    token_loss = np.concatenate(losses).astype(np.float32)
    predictions = np.concatenate(preds)
    targets = np.concatenate(targets_all)
    repeated = np.concatenate(repeats)
    loss64 = token_loss.astype(np.float64)
    val_loss = float(loss64.mean())
    target_bucket = buckets[targets]
    by_bucket, counts = [], []
    for b in range(N_BUCKETS):
        selected = token_loss[target_bucket == b]
        counts.append(int(selected.size))
        by_bucket.append(float(selected.astype(np.float64).mean()) if selected.size else None)
    metrics = {
        "val_loss": val_loss,
        "val_bpb": bits_per_byte(val_loss, tokens),
        "val_acc": float((predictions == targets).mean()),
        **loss_by_target(float(loss64.sum()), float(loss64.size), float(loss64[repeated].sum()), float(repeated.sum())),
        "loss_by_freq_bucket": by_bucket,
        "freq_bucket_tokens": counts,
    }
    return metrics, token_loss, predictions


def disagreement(predictions: np.ndarray, token_loss: np.ndarray, dense_predictions: np.ndarray,
                 dense_loss: np.ndarray) -> dict:
    """Positions where this variant's prediction differs from its own dense model's (one seed)."""
    differ = predictions != dense_predictions
    return _summary("disagreement_not_cie", differ, token_loss, dense_loss, seeds=1)


def modal_prediction(predictions: list[np.ndarray]) -> np.ndarray:
    """Per position, the most common prediction over a population (ties to the smallest id).

    Vectorised over positions: each column sorted, then for each row of the sorted column how many entries
    equal it; the first row with the most is the smallest of the most common ids. O(seeds² · positions),
    for populations of a few seeds (a call per position of np.unique took 26 s per compress pass of the demo).
    """
    ordered = np.sort(np.stack(predictions), axis=0)  # (seeds, positions)
    counts = (ordered[:, None, :] == ordered[None, :, :]).sum(axis=1)  # counts[k, i]: entries equal to ordered[k, i]
    return np.take_along_axis(ordered, counts.argmax(axis=0)[None, :], axis=0)[0]


def compression_identified_exemplars(compressed: list[np.ndarray], dense: list[np.ndarray],
                                     compressed_loss: np.ndarray, dense_loss: np.ndarray) -> dict:
    """Hooker et al. 2020's CIE: positions where the modal prediction of the compressed population
    (same shape and method/level, every seed) differs from the dense population's modal prediction.

    ``compressed_loss`` and ``dense_loss`` are the population means of per-position loss.
    """
    differ = modal_prediction(compressed) != modal_prediction(dense)
    return _summary("cie", differ, compressed_loss, dense_loss, seeds=len(compressed))


def _summary(kind: str, selected: np.ndarray, loss: np.ndarray, dense_loss: np.ndarray, seeds: int) -> dict:
    count = int(selected.sum())
    return {
        "kind": kind,
        "seeds": seeds,
        "count": count,
        "fraction": count / max(1, selected.size),
        "loss": float(loss[selected].astype(np.float64).mean()) if count else None,
        "dense_loss": float(dense_loss[selected].astype(np.float64).mean()) if count else None,
    }


# ----------------------------------------------------------------------------------------------
# Latency


def latency_ms_per_token(model, vocab_size: int, device, batch: int, prompt_tokens: int = 32,
                         repeats: int = 7, warmup: int = 2) -> float:
    """Median forward-pass time per token (ms) for a fixed prompt of ``prompt_tokens`` at ``batch``."""
    g = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, vocab_size, (batch, prompt_tokens), generator=g).to(device)
    model.eval()
    seconds = median_seconds(lambda: model(input_ids=prompt), prompt.is_cuda, repeats, warmup)
    return 1000.0 * seconds / (batch * prompt_tokens)


def median_seconds(call, cuda: bool, repeats: int = 7, warmup: int = 2) -> float:
    """Median wall seconds of ``call()`` over ``repeats`` timed calls after ``warmup`` untimed ones (no grad)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)
