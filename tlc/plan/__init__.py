"""Planning: the law, cost model, search space, Optuna search and plan output."""
