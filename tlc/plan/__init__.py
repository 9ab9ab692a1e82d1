"""Planning: the model to train and how to compress it, for a training and an inference budget.

Reads ``runs/<sweep>/fit.json`` (the fitted laws), the sweep's ``config.json`` and
``compress.jsonl`` files (bytes and latency measured per variant), or a published law with no sweep
at all. Writes ``runs/<sweep>/plan.json``: the budget, the recommendation and the best
uncompressed ("train small") model with their predicted losses and intervals, and the Pareto front;
its Optuna studies go to the sweep's ``study.db``.

Entry point: :mod:`tlc.plan.command` (``tlc plan``). The work: :mod:`~tlc.plan.planner` (search
and polish), :mod:`~tlc.plan.law` (the loss surface), :mod:`~tlc.plan.cost` (bytes and latency
models), :mod:`~tlc.plan.space` (shapes, tokens, compression and their constraints),
:mod:`~tlc.plan.search` (Optuna studies), :mod:`~tlc.plan.trial_store` (fast trial writes) and
:mod:`~tlc.plan.output` (plan.json and the printed table).
"""
