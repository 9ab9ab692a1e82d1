"""Compression: pruning, 8-bit quantization, evaluation and latency, and the variant store."""
