"""Data shipped with tlc: published run tables (tlc/data/published/, see its README.md)."""
