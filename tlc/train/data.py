"""Corpora, the byte-level BPE tokenizer, token streams and batches.

The embedded default corpus is the running interpreter's standard-library source: real text
that every machine has, with no download. Documents are read in a deterministic order and
each goes wholly to train or to validation by a hash of its path (a file) or of its text (a
JSON-lines record), so no document has text on both sides, and adding a file never moves
another one across the split. Tokenizers and token streams are cached by the corpus fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from tlc.io import atomic_write_bytes, atomic_write_json

EOT = "<|endoftext|>"
SPLIT_RULE = ("per document: a file by sha256 of its path, a JSON-lines record by sha256 of its text; "
              "validation when the hash's first 8 bytes mod 10000 < val_percent*100 (if none is, the one "
              "document with the smallest hash); a single plain-text file is one stream whose last "
              "val_percent of characters, cut at a line end, is validation")
DATA_HELP = "give 'stdlib', a text file, a folder, a glob such as 'texts/*.txt', or a .jsonl file with a text field"


@dataclass(frozen=True)
class SourceFile:
    """One file the corpus was read from: what data.json records of it."""

    name: str
    bytes: int
    sha256: str
    documents: int  # documents it held (1 for a text file, its records for a .jsonl)
    val_documents: int  # how many of them went to validation


@dataclass(frozen=True)
class Corpus:
    """Documents split into train and validation, and a fingerprint of exactly this content."""

    source: str
    train_docs: tuple[str, ...]
    val_docs: tuple[str, ...]
    fingerprint: str  # sha256 over the split rule, val_percent and (name, content hash) of every file, in order
    files: tuple[SourceFile, ...] = ()
    val_percent: float = 5.0

    @property
    def val_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.val_docs)


def cache_dir() -> Path:
    """Where tokenizers and token streams are cached (``$TLC_CACHE``, else ``~/.cache/tlc``)."""
    return Path(os.environ.get("TLC_CACHE") or Path.home() / ".cache" / "tlc")


# ----------------------------------------------------------------------------------------------
# Reading documents


def _stdlib_files() -> list[tuple[str, Path]]:
    """The standard library's ``.py`` files, in path order; installed packages (site-packages) left out.

    Walked with those folders pruned: a Python's site-packages can hold ten times the standard library's files.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "dist-packages")]
        paths += [Path(folder, name) for name in names if name.endswith(".py")]
    return [(path.relative_to(root).as_posix(), path) for path in sorted(paths)]


@dataclass(frozen=True)
class _File:
    """A file as read: its documents, and whether they split by record (JSON lines) or as one stream."""

    name: str
    raw: bytes
    docs: tuple[str, ...]
    records: bool


def _jsonl_file(path: Path, text_field: str) -> _File:
    raw = path.read_bytes()
    docs = []
    for i, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--data: {path}:{i} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UserError(f"--data: {path}:{i} has no string field {text_field!r} (set data.text_field)")
        docs.append(record[text_field])
    return _File(path.name, raw, tuple(docs), records=True)


def _text_file(name: str, path: Path) -> _File | None:
    """A text file as one document, or None when it is binary (has NUL bytes) or unreadable."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw[:8192]:
        return None
    return _File(name, raw, (raw.decode("utf-8", errors="replace"),), records=False)


def _is_file(path: Path, source: str) -> bool:
    """Whether ``path`` is a file; an entry that cannot be examined (e.g. /proc/1/cwd under --data /) is a
    one-line error naming it, not a traceback."""
    try:
        return path.is_file()
    except OSError as e:
        raise UserError(f"--data: cannot read {str(path)!r} under {source!r} ({e.strerror}); {DATA_HELP}") from None


def _source_files(source: str, text_field: str) -> list[_File]:
    """The files of a source, in a deterministic order."""
    if source == "stdlib":
        return [f for rel, p in _stdlib_files() if (f := _text_file(rel, p)) is not None]
    if any(ch in source for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True))
        paths = [p for p in paths if _is_file(p, source)]
        if not paths:
            raise UserError(f"--data: the glob {source!r} matches no files; {DATA_HELP}")
        base = Path(os.path.commonpath([str(p.parent) for p in paths]))
    else:
        target = Path(source)
        if not target.exists():
            raise UserError(f"--data: no such file or folder {source!r}; {DATA_HELP}")
        if target.is_file():
            paths, base = [target], target.parent
        else:
            paths = sorted(p for p in target.rglob("*") if not p.name.startswith(".") and _is_file(p, source))
            base = target
    files = []
    for p in paths:
        if p.suffix == ".jsonl":
            files.append(_jsonl_file(p, text_field))
        elif (f := _text_file(p.relative_to(base).as_posix(), p)) is not None:
            files.append(f)
    return files


def _hash_bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _tail_split(text: str, val_percent: float) -> tuple[str, str]:
    """One stream cut once, at a line end: (train head, validation tail of about val_percent)."""
    cut = int(len(text) * (1 - val_percent / 100))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    return text[:cut], text[cut:]


def load_corpus(source: str = "stdlib", val_percent: float = 5.0, text_field: str = "text") -> Corpus:
    """Read a corpus and split it into train and validation, each document wholly on one side.

    A file is one document, keyed by its path; a JSON-lines record is one document, keyed by its
    text (so identical records land on the same side). A key goes to validation when its hash
    bucket is under ``val_percent``; should no document, the one with the smallest hash goes. A
    source that is a single plain-text file has only one document: its tail is the validation side.
    """
    files = _source_files(source, text_field)
    # (split key, text, index of its file): a file's key is its path, a record's its text
    keyed = [(text if f.records else f.name, text, fi) for fi, f in enumerate(files) for text in f.docs if text.strip()]
    if not keyed:
        raise UserError(f"--data: {source!r} holds no readable text; {DATA_HELP}")
    train, val, val_count = [], [], [0] * len(files)
    if len(keyed) == 1 and not files[keyed[0][2]].records:
        head, tail = _tail_split(keyed[0][1], val_percent)
        if head.strip():
            train.append(head)
        if tail.strip():
            val.append(tail)
            val_count[keyed[0][2]] = 1
    else:
        buckets = [_hash_bucket(key) for key, _, _ in keyed]
        chosen = {i for i, b in enumerate(buckets) if b % 10_000 < val_percent * 100}
        if not chosen and val_percent > 0:
            chosen = {min(range(len(keyed)), key=buckets.__getitem__)}
        for i, (_, text, fi) in enumerate(keyed):
            (val if i in chosen else train).append(text)
            val_count[fi] += i in chosen
    if not val or not train:
        raise UserError(
            f"--data: {source!r} has too little text to split ({len(keyed)} documents, "
            f"{sum(len(f.raw) for f in files)} bytes); "
            "give more text or raise data.val_percent"
        )
    records = tuple(SourceFile(f.name, len(f.raw), hashlib.sha256(f.raw).hexdigest(), len(f.docs), val_count[i])
                    for i, f in enumerate(files))
    digest = hashlib.sha256(f"{SPLIT_RULE}\0val_percent={val_percent}\0text_field={text_field}".encode())
    for r in records:
        digest.update(r.name.encode("utf-8") + b"\0" + bytes.fromhex(r.sha256))
    return Corpus(source=source, train_docs=tuple(train), val_docs=tuple(val), fingerprint=digest.hexdigest(),
                  files=records, val_percent=val_percent)


def data_record(corpus: Corpus, tokens: "TokenData") -> dict:
    """data.json: the corpus fingerprint, every file read (size, sha256, documents on each side), the
    split rule, and the documents, characters and tokens of each side (tokens count separators)."""
    return {
        "source": corpus.source,
        "fingerprint": corpus.fingerprint,
        "split": {"rule": SPLIT_RULE, "val_percent": corpus.val_percent},
        "train": {"documents": len(corpus.train_docs), "characters": sum(map(len, corpus.train_docs)),
                  "tokens": int(len(tokens.train))},
        "val": {"documents": len(corpus.val_docs), "characters": sum(map(len, corpus.val_docs)),
                "tokens": int(len(tokens.val))},
        "files": [dataclasses.asdict(f) for f in corpus.files],
    }


def write_data_record(run_dir: Path, corpus: Corpus, tokens: "TokenData") -> None:
    """Write ``run_dir/data.json`` atomically."""
    atomic_write_json(Path(run_dir) / "data.json", data_record(corpus, tokens))


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
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which nothing here reads: the same ids
    # in about half the time (the embedded corpus: 9.7 s -> 5.3 s wall, 18 -> 10 CPU-s)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        for enc in encode(list(docs[start : start + 256])):
            ids.extend(enc.ids)
            ids.append(eot_id)
    return np.asarray(ids, dtype=np.uint16)


@contextlib.contextmanager
def _building(name: str):
    """Hold an exclusive lock on ``<cache>/locks/NAME.lock`` in the block, waiting for it: of the processes
    that need the same tokenizer and token streams at once on a cold cache (torchrun's ranks, sweep workers
    started in separate terminals; ``tlc sweep --workers N`` prepares the data before it starts its helpers),
    one builds them and the others then read them, instead of each spending the build's CPU (~20 CPU-s on the
    embedded corpus) on the same shared cores. Without fcntl (Windows) there is no lock: each builds, as before."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def load_tokens(corpus: Corpus, vocab_size: int) -> TokenData:
    """Tokenize both splits once and cache the streams next to the tokenizer."""
    name = f"{corpus.fingerprint[:20]}-v{vocab_size}"
    with _building(name):
        return _load_tokens(corpus, vocab_size, name)


def _load_tokens(corpus: Corpus, vocab_size: int, name: str) -> TokenData:
    tokenizer = train_tokenizer(corpus, vocab_size)
    eot_id = tokenizer.token_to_id(EOT)
    stem = cache_dir() / "tokens" / name
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
