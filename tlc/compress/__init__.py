"""Compression: prune and 8-bit quantize every trained model, then evaluate and time each variant.

Reads each finished run's ``model/``, ``config.json`` and the corpus it was trained on. Writes
``<run>/compressed/<variant>/`` (weights in tlc's safetensors encodings: bitmask, BSR, int8 rows)
and one line per variant in ``<run>/compress.jsonl`` (method, sparsity, bits, non-zeros, bytes,
latency, loss, loss by token-frequency bucket).

Entry point: :mod:`tlc.compress.command` (``tlc compress``). The work:
:mod:`~tlc.compress.pipeline` (one run's variants, resumable), :mod:`~tlc.compress.variants`
(methods and settings), :mod:`~tlc.compress.prune` (magnitude, block, 2:4 masks),
:mod:`~tlc.compress.structured` (heads and FFN neurons removed), :mod:`~tlc.compress.gradual`
(gradual and movement pruning with a recovery fine-tune), :mod:`~tlc.compress.quantize` (int8),
:mod:`~tlc.compress.evaluate` (metrics and latency) and :mod:`~tlc.compress.store` (saving and
loading variants).
"""
