"""Text from a model: ``tlc generate`` (:mod:`tlc.generate.command`) samples a completion from any
variant of a run (:mod:`~tlc.generate.sample`) and records it in ``<run>/samples.jsonl`` for the
report's side-by-side section.
"""
