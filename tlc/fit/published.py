"""The published run tables shipped in tlc/data/published/ (sources and conversions in its README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tlc.errors import UserError


@dataclass(frozen=True)
class PublishedSet:
    """One shipped table: its file, what N counts in it, and where it comes from."""

    name: str
    filename: str
    size: str  # "total" or "non_embedding": the column N is read from
    source: str  # paper and repository, one line
    licence: str


PUBLISHED = {s.name: s for s in (
    PublishedSet("chinchilla", "chinchilla.csv", "total",
                 "Hoffmann et al. 2022, Fig. 4, as extracted by Besiroglu et al. 2024 "
                 "(github.com/epoch-research/analyzing-chinchilla @ 9225883)", "no licence file; facts read off a figure"),
    PublishedSet("gadre-c4", "gadre-c4.csv", "total", "Gadre et al. 2024, trained on C4, C4 validation loss "
                 "(github.com/mlfoundations/scaling @ a003c49)", "MIT"),
    PublishedSet("gadre-rpj", "gadre-rpj.csv", "total", "Gadre et al. 2024, trained on RedPajama, C4 validation loss "
                 "(github.com/mlfoundations/scaling @ a003c49)", "MIT"),
    PublishedSet("gadre-rw", "gadre-rw.csv", "total", "Gadre et al. 2024, trained on RefinedWeb, C4 validation loss "
                 "(github.com/mlfoundations/scaling @ a003c49)", "MIT"),
    PublishedSet("frantar-t5", "frantar-t5.csv", "non_embedding", "Frantar et al. 2023, T5 on C4, trained sparse; "
                 "D in training steps (github.com/google-research/jaxpruner @ f133ee5)", "Apache-2.0"),
)}


def published_path(name: str) -> Path:
    """The CSV of a shipped set; a UserError lists the valid names."""
    if name not in PUBLISHED:
        raise UserError(f"--published: {name!r} is not a shipped set; valid: {', '.join(PUBLISHED)}")
    return Path(str(resources.files("tlc.data") / "published" / PUBLISHED[name].filename))
