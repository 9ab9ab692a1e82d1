"""Report: an offline HTML and Markdown report of a sweep, with its figures.

Reads only what earlier stages wrote under ``runs/<sweep>/``: every run's ``config.json``,
``metrics.jsonl`` and ``compress.jsonl``, and ``fit.json`` and ``plan.json`` where present. It
never trains or compresses. Writes ``runs/<sweep>/report/`` (``index.html``, ``report.md``,
``*.png``), replaced atomically.

Entry point: :mod:`tlc.report.command` (``tlc report``). The work: :mod:`~tlc.report.data` (reads
and checks the run files), :mod:`~tlc.report.build` (tables and pages) and
:mod:`~tlc.report.figures` (the matplotlib figures).
"""
