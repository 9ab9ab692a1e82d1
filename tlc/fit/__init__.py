"""Fitting: scaling laws and compression models from a sweep's measurements.

Reads every run's ``config.json``, ``metrics.jsonl`` and ``compress.jsonl`` under
``runs/<sweep>/``. Writes ``runs/<sweep>/fit.json``: each law's parameters, bootstrap intervals,
status and held-out error. The fitting itself is :mod:`scaling` (numpy and scipy only).

Entry point: :mod:`tlc.fit.command` (``tlc fit``). The work: :mod:`~tlc.fit.observations` (reads a
sweep's run files into observations) and :func:`tlc.fit.observations.fit_sweep`.
"""
