"""Versions of the packages a run depends on, recorded in every config.json."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("tlc", "torch", "deepspeed", "transformers", "tokenizers", "optuna", "numpy", "scipy", "bitsandbytes")


def package_versions() -> dict[str, str | None]:
    """Installed versions (None where a package is absent), plus Python and the platform."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
