"""Validation: carry a plan out and check it came true.

Reads ``runs/<sweep>/plan.json`` (and the fit it came from), trains and compresses each planned
point under ``runs/<sweep>/validation/`` and writes ``runs/<sweep>/validation.json``: predicted
loss and interval against measured loss, bytes, non-zeros, latency and wall time, and whether
"train large, then compress" won as predicted.

Entry point: :mod:`tlc.validate.command` (``tlc validate``). The work: :mod:`~tlc.validate.validation`.
"""
