"""Fitting scaling laws to a sweep."""
