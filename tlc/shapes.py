"""Parameter counts and training FLOPs of a model shape, from the shape alone (no torch).

The training stage records them and the planner prices shapes it never built with the same
numbers; a test checks them against the built model and against DeepSpeed's FLOPs profiler.
The counting itself lives with the rest of the architecture's description in :mod:`tlc.architecture`.
"""

from __future__ import annotations

from tlc.architecture import ParamCounts, flops_per_token, param_counts

__all__ = ["ParamCounts", "flops_per_token", "param_counts"]
