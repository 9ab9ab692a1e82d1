"""Numbers as users write them on the command line: FLOPs, parameter counts and byte sizes.

    parse_flops("3.5e18") == 3.5e18
    parse_budget("6h") == (None, 21600.0)   # a training budget: FLOPs, or a duration (s, min, h, d)
    parse_count("125M") == 125e6           # K, M, B (10^9), T: decimal multipliers
    parse_bytes("1.5GiB") == 1.5 * 2**30   # kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024

Every parser raises UserError naming the flag and showing what would be valid.
"""

from __future__ import annotations

import math
import re

from tlc.errors import UserError

BYTE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_NUMBER = r"(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER_WITH_UNIT = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-z]*)\s*$")  # "1.5GiB", "20 MB", "5e7"


def _split(flag: str, text: str, example: str) -> tuple[float, str]:
    match = _NUMBER_WITH_UNIT.match(str(text))
    if not match:
        raise UserError(f"{flag}: expected a positive number such as {example}, got {text!r}")
    return float(match.group(1).replace("_", "")), match.group(2).lower()


def _positive(flag: str, value: float, text: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{flag}: must be a finite number > 0, got {text!r}")
    return value


def parse_positive(text: str, flag: str, example: str) -> float:
    """A plain positive number (no unit), e.g. milliseconds; ``example`` shows what would be valid."""
    try:
        value = float(str(text).replace("_", ""))
    except ValueError:
        raise UserError(f"{flag}: expected {example}, got {text!r}") from None
    return _positive(flag, value, text)


def parse_flops(text: str, flag: str = "--budget") -> float:
    """Training compute in FLOPs, a plain positive number: 1e17, 3.5e18, 2_000e15."""
    return parse_positive(text, flag, "FLOPs as a positive number such as 1e17 or 3.5e18")


DURATION_UNITS = {"s": 1, "sec": 1, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_budget(text: str, flag: str = "--budget") -> tuple[float | None, float | None]:
    """A training budget: (FLOPs, None) for a plain number such as 1e17, or (None, seconds) for a
    duration such as 6h, 45min, 90s or 1.5d."""
    match = _NUMBER_WITH_UNIT.match(str(text))
    if match and match.group(2):
        unit = match.group(2).lower()
        if unit not in DURATION_UNITS:
            raise UserError(f"{flag}: unknown unit {match.group(2)!r} in {text!r}; give FLOPs such as 1e17 or a "
                            f"duration in {', '.join(DURATION_UNITS)} such as 6h or 45min")
        return None, _positive(flag, float(match.group(1).replace("_", "")) * DURATION_UNITS[unit], text)
    try:
        return parse_flops(text, flag), None
    except UserError:
        raise UserError(f"{flag}: expected FLOPs such as 1e17 or a duration such as 6h or 45min, got {text!r}") from None


def parse_count(text: str, flag: str = "--max-params") -> float:
    """A positive count with an optional decimal suffix: 2e8, 125M, 1.3B, 70k."""
    value, unit = _split(flag, text, "2e8, 125M or 1.3B")
    if unit not in COUNT_UNITS:
        valid = ", ".join(u.upper() for u in COUNT_UNITS if u)
        raise UserError(f"{flag}: unknown unit {unit!r} in {text!r}; valid suffixes: {valid} (or none)")
    return _positive(flag, value * COUNT_UNITS[unit], text)


def parse_bytes(text: str, flag: str = "--max-bytes") -> float:
    """A positive size in bytes: 20MB (10^6), 1.5GiB (2^30), 500kB, or a plain number of bytes."""
    value, unit = _split(flag, text, "20MB, 1.5GiB or 5e7")
    if unit not in BYTE_UNITS:
        raise UserError(
            f"{flag}: unknown unit {unit!r} in {text!r}; valid: B, kB, MB, GB, TB (powers of 1000), "
            "KiB, MiB, GiB, TiB (powers of 1024), or a plain number of bytes"
        )
    return _positive(flag, value * BYTE_UNITS[unit], text)


def format_bytes(value: float) -> str:
    """Decimal units, three significant figures: 1.23 MB."""
    value = float(f"{value:.3g}")  # round first, so 999.9999e6 prints as 1 GB
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} B"


def format_count(value: float) -> str:
    """Decimal suffixes, three significant figures: 125M, 1.3B."""
    value = float(f"{value:.3g}")
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"
