"""Which corpus a result was measured on, and the check that a later stage uses the same one.

fit.json, plan.json and validation.json each carry a ``corpus`` record: the data settings and the
fingerprint (`tlc.train.data.Corpus.fingerprint`: the split rule and every file's name and content
hash) of the corpus the sweep's runs trained and were evaluated on. `tlc plan` and `tlc validate`
read the corpus at that source again and refuse to go on when it is another one: a law fitted to
one corpus predicts nothing about a model trained on a different one. ``--allow-other-corpus``
overrides the refusal, and the record says so.
"""

from __future__ import annotations

from pathlib import Path

from tlc.errors import UserError
from tlc.io import list_runs, read_run_config

SETTINGS = ("source", "val_percent", "text_field")


def runs_corpus(runs_dir: Path) -> dict | None:
    """fit.json's corpus record from the runs' config.json: the data settings and fingerprint; None when no
    run records a fingerprint. Runs that disagree give fingerprint null and list every one under "fingerprints"."""
    data = [c["data"] for p in list_runs(Path(runs_dir))
            if isinstance((c := read_run_config(p) or {}).get("data"), dict) and c["data"].get("fingerprint")]
    if not data:
        return None
    prints = sorted({d["fingerprint"] for d in data})
    return {**{k: data[0].get(k) for k in SETTINGS}, "fingerprint": prints[0] if len(prints) == 1 else None,
            "fingerprints": prints}


def check_corpus(recorded: dict | None, made_on: str, command: str, allow_other: bool, flag: str) -> dict | None:
    """Read the corpus at the recorded source now and compare fingerprints; the record to store with the
    result: the recorded settings and fingerprint, the one read now, and whether --allow-other-corpus was
    needed. UserError (one line, naming ``flag``) on a mismatch without ``allow_other``; None when nothing
    was recorded (runs from before fingerprints, or synthetic ones)."""
    from tlc.train.data import load_corpus

    if not recorded:
        return None
    types = {"source": str, "val_percent": (int, float), "text_field": str}
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), t) for k, t in types.items()) \
            or not isinstance(recorded.get("fingerprint") or "", str) \
            or not all(isinstance(p, str) for p in recorded.get("fingerprints") or []):
        raise UserError(f"{flag}: {made_on}'s corpus record is malformed; make it again ({command} reads the one "
                        "tlc fit and tlc plan write)")
    expected = recorded.get("fingerprint")
    try:
        current = load_corpus(recorded["source"], recorded["val_percent"], recorded["text_field"]).fingerprint
        why = f"fingerprint {current[:12]} now"
    except UserError as error:
        current, why = None, f"unreadable now: {str(error).split('; ')[0]}"
    record = {**recorded, "current_fingerprint": current, "allowed_other_corpus": False}
    if expected is not None and current == expected:
        return record
    if not allow_other:
        prints = recorded.get("fingerprints") or []
        then = expected[:12] if expected else "runs disagree: " + ", ".join(p[:12] for p in prints)
        raise UserError(f"{flag}: the corpus at {recorded['source']!r} is not the one {made_on} was "
                        f"made on ({why}, {then} then); train on that corpus, or pass --allow-other-corpus to "
                        f"{command} anyway")
    record["allowed_other_corpus"] = True
    return record
