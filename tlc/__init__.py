"""tlc — train large, then compress.

Trains a sweep of transformer shapes, compresses every model, fits scaling laws to the
measurements and plans which model to train and how to compress it for a given budget.
"""

__version__ = "0.1.0"
