"""Training: the loop, the `tlc train` and `tlc sweep` commands, models, data and the run-directory guard."""
