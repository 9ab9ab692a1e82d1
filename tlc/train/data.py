"""Corpora, the byte-level BPE tokenizer, token streams and batches.

The embedded default corpus is the running interpreter's standard-library source: real text
that every machine has, with no download. Documents are read in a deterministic order and
split into train and validation by a hash of their path, so adding a file never moves another
one across the split. Tokenizers and token streams are cached by the corpus fingerprint.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlc.errors import UserError
from tlc.io import atomic_write_bytes

EOT = "<|endoftext|>"
CHUNK_BYTES = 64 * 1024  # long documents are cut into pieces so one big file still splits into train and val
MIN_PIECES = 200  # small corpora get smaller pieces, so that a 5% validation share is never empty
DATA_HELP = "give 'stdlib', a text file, a folder, a glob such as 'texts/*.txt', or a .jsonl file with a text field"


@dataclass(frozen=True)
class Corpus:
    """Documents split into train and validation, and a fingerprint of exactly this content."""

    source: str
    train_docs: tuple[str, ...]
    val_docs: tuple[str, ...]
    fingerprint: str  # sha256 over (name, content hash) of every document, in order

    @property
    def val_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.val_docs)


def cache_dir() -> Path:
    """Where tokenizers and token streams are cached (``$TLC_CACHE``, else ``~/.cache/tlc``)."""
    return Path(os.environ.get("TLC_CACHE") or Path.home() / ".cache" / "tlc")


# ----------------------------------------------------------------------------------------------
# Reading documents


def _stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or "dist-packages" in rel.split("/"):
            continue
        files.append((rel, path))
    return files


def _read_text(path: Path) -> str | None:
    """Text of a file, or None when it is binary (has NUL bytes) or unreadable."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw[:8192]:
        return None
    return raw.decode("utf-8", errors="replace")


def _jsonl_docs(path: Path, text_field: str) -> list[tuple[str, str]]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"--data: {path}:{i} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f"--data: {path}:{i} has no string field {text_field!r} (set data.text_field)")
            docs.append((f"{path.name}:{i}", record[text_field]))
    return docs


def _source_docs(source: str, text_field: str) -> list[tuple[str, str]]:
    """(name, text) pairs for a source, in a deterministic order."""
    if source == "stdlib":
        return [(rel, text) for rel, p in _stdlib_files() if (text := _read_text(p)) is not None]
    if any(ch in source for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise UserError(f"--data: the glob {source!r} matches no files; {DATA_HELP}")
        base = Path(os.path.commonpath([str(p.parent) for p in paths]))
    else:
        target = Path(source)
        if not target.exists():
            raise UserError(f"--data: no such file or folder {source!r}; {DATA_HELP}")
        if target.is_file():
            if target.suffix == ".jsonl":
                return _jsonl_docs(target, text_field)
            paths, base = [target], target.parent
        else:
            paths = sorted(p for p in target.rglob("*") if p.is_file() and not p.name.startswith("."))
            base = target
    docs = []
    for p in paths:
        if p.suffix == ".jsonl":
            docs.extend(_jsonl_docs(p, text_field))
        elif (text := _read_text(p)) is not None:
            docs.append((p.relative_to(base).as_posix(), text))
    return docs


def _chunks(name: str, text: str, size: int) -> list[tuple[str, str]]:
    """Cut a document at line ends into pieces of about ``size`` characters, named ``name#k``."""
    if len(text) <= size:
        return [(name, text)]
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        pieces.append((f"{name}#{len(pieces)}", text[start:end]))
        start = end
    return pieces


def _is_validation(name: str, val_percent: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 10_000
    return bucket < val_percent * 100


def load_corpus(source: str = "stdlib", val_percent: float = 5.0, text_field: str = "text") -> Corpus:
    """Read a corpus and split it into train and validation by a hash of each document's name.

    Documents longer than a piece size (64 KiB, or less for corpora under ~13 MB so that there
    are at least MIN_PIECES pieces) are cut at line ends and each piece hashed by ``name#k``.
    """
    whole = _source_docs(source, text_field)
    size = max(1024, min(CHUNK_BYTES, sum(len(t) for _, t in whole) // MIN_PIECES))
    docs = [piece for name, text in whole for piece in _chunks(name, text, size)]
    docs = [(n, t) for n, t in docs if t.strip()]
    if not docs:
        raise UserError(f"--data: {source!r} holds no readable text; {DATA_HELP}")
    digest = hashlib.sha256()
    train, val = [], []
    for name, text in docs:
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(text.encode("utf-8")).digest())
        (val if _is_validation(name, val_percent) else train).append(text)
    if not val or not train:
        raise UserError(
            f"--data: {source!r} has too little text to split ({len(docs)} pieces of up to {size} characters); "
            "give more text or raise data.val_percent"
        )
    digest.update(f"val_percent={val_percent}".encode())
    return Corpus(source=source, train_docs=tuple(train), val_docs=tuple(val), fingerprint=digest.hexdigest())


# ----------------------------------------------------------------------------------------------
# Tokenizer and token streams


def train_tokenizer(corpus: Corpus, vocab_size: int):
    """A byte-level BPE tokenizer trained on the training split, cached by fingerprint and vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = cache_dir() / "tokenizers" / f"{corpus.fingerprint[:20]}-v{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.train_docs, trainer=trainer, length=len(corpus.train_docs))
    atomic_write_bytes(path, tokenizer.to_str().encode("utf-8"))
    return tokenizer


@dataclass(frozen=True)
class TokenData:
    """Token streams for both splits (documents joined by the end-of-text token)."""

    train: np.ndarray  # (n_train,) uint16 token ids
    val: np.ndarray  # (n_val,) uint16 token ids
    val_bytes_per_token: float  # UTF-8 bytes of the validation text per validation token, for bits per byte
    eot_id: int
    tokenizer: object  # tokenizers.Tokenizer


def _encode(tokenizer, docs: tuple[str, ...], eot_id: int) -> np.ndarray:
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        for enc in tokenizer.encode_batch(list(docs[start : start + 256])):
            ids.extend(enc.ids)
            ids.append(eot_id)
    return np.asarray(ids, dtype=np.uint16)


def load_tokens(corpus: Corpus, vocab_size: int) -> TokenData:
    """Tokenize both splits once and cache the streams next to the tokenizer."""
    tokenizer = train_tokenizer(corpus, vocab_size)
    eot_id = tokenizer.token_to_id(EOT)
    stem = cache_dir() / "tokens" / f"{corpus.fingerprint[:20]}-v{vocab_size}"
    streams = {}
    for split, docs in (("train", corpus.train_docs), ("val", corpus.val_docs)):
        path = stem.with_name(f"{stem.name}-{split}.npy")
        if path.exists():
            streams[split] = np.load(path, allow_pickle=False)
        else:
            streams[split] = _encode(tokenizer, docs, eot_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, streams[split], allow_pickle=False)
            os.replace(tmp, path)
    n_val_text_tokens = len(streams["val"]) - len(corpus.val_docs)  # not counting the separators
    return TokenData(
        train=streams["train"],
        val=streams["val"],
        val_bytes_per_token=corpus.val_bytes / max(1, n_val_text_tokens),
        eot_id=eot_id,
        tokenizer=tokenizer,
    )


# ----------------------------------------------------------------------------------------------
# Batches


def train_offsets(n_tokens: int, context: int, global_batch: int, seed: int, step: int) -> np.ndarray:
    """Start positions of the ``global_batch`` training windows of optimizer step ``step``.

    A pure function of (seed, step): any split of a step's windows over processes and
    micro-batches sees the same data, and a resumed run continues with exactly the batches
    an uninterrupted run would have seen.
    """
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - context - 1, size=global_batch)


def windows(stream: np.ndarray, offsets: np.ndarray, context: int) -> np.ndarray:
    """(len(offsets), context + 1) int64 windows: inputs are [:, :-1], targets [:, 1:]."""
    index = offsets[:, None] + np.arange(context + 1)[None, :]
    return stream[index].astype(np.int64)


def val_offsets(n_tokens: int, context: int, eval_tokens: int) -> np.ndarray:
    """Evenly spread, fixed validation windows covering about ``eval_tokens`` predictions."""
    n_windows = max(1, math.ceil(eval_tokens / context))
    last = n_tokens - context - 1
    if last < 0:
        raise UserError(f"data: the validation split has {n_tokens} tokens, fewer than one context of {context}")
    return np.unique(np.linspace(0, last, n_windows).astype(np.int64))
