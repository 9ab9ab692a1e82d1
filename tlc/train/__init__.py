"""Training: one model (``tlc train``) or a sweep of shapes and seeds (``tlc sweep``).

Reads a sweep file (``sweeps/*.yaml``) or command-line shape and settings, and a corpus (the
embedded standard library by default). Writes one run directory per model under
``runs/<sweep>/<run-id>/``: ``config.json``, ``metrics.jsonl`` (loss, accuracy, tokens, FLOPs,
wall time per evaluation), ``checkpoint/`` for resuming and ``model/`` (safetensors and tokenizer);
a sweep also writes ``sweep.yaml`` and its Optuna ``study.db``.

Entry points: :mod:`tlc.train.command` (``tlc train``) and :mod:`tlc.train.sweep_command`
(``tlc sweep``). The work: :mod:`~tlc.train.loop` (the training loop), :mod:`~tlc.train.engine`
(DeepSpeed engine, distributed set-up and checkpoints), :mod:`~tlc.train.model` (models from a
shape), :mod:`~tlc.train.data` (corpus, tokenizer, windows), :mod:`~tlc.train.sweep` (the sweep's
runs shared through Optuna) and :mod:`~tlc.train.guard` (run-directory lock and safe loading).
"""
