"""Corpora, the split, the tokenizer cache and the batch layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tlc.train.data import cache_dir, load_corpus, load_tokens, train_offsets, val_offsets, windows
from tlc.errors import UserError


def test_stdlib_corpus_is_deterministic_and_excludes_site_packages():
    a = load_corpus("stdlib")
    b = load_corpus("stdlib")
    assert a.fingerprint == b.fingerprint
    assert len(a.train_docs) > 500 and len(a.val_docs) > 20
    share = len(a.val_docs) / (len(a.train_docs) + len(a.val_docs))
    assert 0.02 < share < 0.10  # 5% by path hash
    assert not any("site-packages" in d[:0] for d in a.train_docs)
    import tlc.train.data as data

    assert all("site-packages" not in rel for rel, _ in data._stdlib_files())


def test_split_is_by_name_hash_and_fingerprint_tracks_content(tmp_path):
    for i in range(60):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n" * 50)
    first = load_corpus(str(tmp_path))
    (tmp_path / "doc0.txt").write_text("changed\n" * 50)
    second = load_corpus(str(tmp_path))
    assert first.fingerprint != second.fingerprint
    assert len(first.val_docs) == len(second.val_docs)  # editing a file never moves others across the split
    (tmp_path / "extra.txt").write_text("new\n" * 50)
    third = load_corpus(str(tmp_path))
    assert set(first.val_docs) - {"changed\n" * 50} <= set(third.val_docs) | {"document 0\n" * 50}


def test_no_document_straddles_the_split_even_when_larger_than_the_old_64k_piece(tmp_path):
    for i in range(40):  # 40 files of ~150 KB: under the old per-piece split most had pieces on both sides
        (tmp_path / f"f{i:02d}.txt").write_text("".join(f"file {i} line {j}\n" for j in range(9000)))
    corpus = load_corpus(str(tmp_path), val_percent=10.0)
    assert corpus.val_docs and corpus.train_docs
    val_files = {d.split(" ")[1] for d in corpus.val_docs}
    train_files = {d.split(" ")[1] for d in corpus.train_docs}
    assert not val_files & train_files and len(val_files | train_files) == 40
    whole = {(tmp_path / f"f{i:02d}.txt").read_text() for i in range(40)}
    assert set(corpus.val_docs) | set(corpus.train_docs) == whole  # every file whole, on exactly one side
    assert {f.name for f in corpus.files if f.val_documents} == {f"f{int(i):02d}.txt" for i in val_files}
    assert all(f.bytes > 100_000 and len(f.sha256) == 64 for f in corpus.files)


def test_jsonl_records_split_by_content_so_duplicates_share_a_side(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"record {i % 150} " * 20}) for i in range(300)]  # each record twice
    jsonl.write_text("\n".join(lines) + "\n")
    corpus = load_corpus(str(jsonl))
    assert not set(corpus.val_docs) & set(corpus.train_docs) and len(corpus.val_docs) % 2 == 0
    assert corpus.files[0].documents == 300 and corpus.files[0].val_documents == len(corpus.val_docs)


def test_sources_file_glob_and_jsonl(tmp_path):
    big = tmp_path / "one.txt"
    text = "".join(f"line {i} of a long single file\n" for i in range(40000))  # one document: cut once
    big.write_text(text)
    single = load_corpus(str(big))
    assert single.train_docs[0] + single.val_docs[0] == text and len(single.val_docs) == 1
    assert 0.04 < len(single.val_docs[0]) / len(text) < 0.06 and single.val_docs[0].startswith("line ")
    sub = tmp_path / "many"
    sub.mkdir()
    for i in range(40):
        (sub / f"{i}.md").write_text(f"# note {i}\n" * 30)
    (sub / "blob.bin").write_bytes(b"\x00\x01binary")
    globbed = load_corpus(str(sub / "*.md"))
    assert len(globbed.train_docs) + len(globbed.val_docs) == 40
    folder = load_corpus(str(sub))
    assert len(folder.train_docs) + len(folder.val_docs) == 40  # binary file skipped
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"record {i} " * 20}) + "\n" for i in range(200)))
    records = load_corpus(str(jsonl))
    assert len(records.train_docs) + len(records.val_docs) == 200


def test_bad_sources_name_the_flag(tmp_path):
    with pytest.raises(UserError, match="--data: no such file or folder"):
        load_corpus(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="matches no files"):
        load_corpus(str(tmp_path / "*.nothing"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="no string field 'text'"):
        load_corpus(str(bad))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello\n")
    with pytest.raises(UserError, match="too little text"):
        load_corpus(str(tiny))


def test_an_entry_the_walk_cannot_examine_is_a_one_line_error(tmp_path, monkeypatch):
    """`tlc train --data /` met /proc/1/cwd (stat: permission denied) and ended in a traceback (found by test_fuzz)."""
    import pathlib

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("some text\n" * 50)
    (folder / "locked").write_text("")
    is_file = pathlib.Path.is_file

    def denied(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)

    monkeypatch.setattr(pathlib.Path, "is_file", denied)
    for source in (str(folder), str(folder / "*")):
        with pytest.raises(UserError, match=r"--data: cannot read '.*locked' under .*\(Permission denied\)"):
            load_corpus(source)


def test_tokenizer_is_cached_by_fingerprint_and_vocab(small_corpus):
    corpus = load_corpus(str(small_corpus))
    tokens = load_tokens(corpus, 300)
    assert tokens.tokenizer.get_vocab_size() == 300
    assert tokens.train.dtype == np.uint16 and tokens.train.max() < 300
    cached = list((cache_dir() / "tokenizers").glob(f"{corpus.fingerprint[:20]}-v300.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = load_tokens(corpus, 300)
    assert cached[0].stat().st_mtime_ns == mtime  # loaded, not retrained
    assert np.array_equal(again.val, tokens.val)
    # the streams (encoded without character offsets where tokenizers can) are the ids of a plain encode
    plain = [i for enc in tokens.tokenizer.encode_batch(list(corpus.val_docs)) for i in (*enc.ids, tokens.eot_id)]
    assert np.array_equal(tokens.val, plain)
    text = corpus.val_docs[0][:200]
    assert tokens.tokenizer.decode(tokens.tokenizer.encode(text).ids) == text  # byte-level: lossless
    # bits per byte: bytes per token is the ratio of the validation text to its tokens
    assert 1.0 < tokens.val_bytes_per_token < 6  # 300 tokens is 44 merges past the bytes


def test_processes_that_need_the_same_tokens_at_once_build_them_once(tmp_path, small_corpus):
    import os
    import subprocess
    import sys

    from conftest import REPO

    trained = tmp_path / "trained.log"
    # each process counts the tokenizers it trains; a barrier file makes both ask for the tokens together
    script = (
        "import sys, time, pathlib, tokenizers\n"
        "from tlc.train.data import load_corpus, load_tokens\n"
        "train = tokenizers.Tokenizer.train_from_iterator\n"
        "def counted(self, *a, **k):\n"
        f"    open({str(trained)!r}, 'a').write('trained\\n')\n"
        "    time.sleep(1.0)  # a slow build: the other process asks meanwhile\n"
        "    return train(self, *a, **k)\n"
        "tokenizers.Tokenizer.train_from_iterator = counted\n"
        "corpus = load_corpus(sys.argv[1])\n"
        "tokens = load_tokens(corpus, 300)\n"
        "print(int(tokens.train.sum()), len(tokens.train))\n"
    )
    env = {**os.environ, "TLC_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(small_corpus)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert trained.read_text().splitlines() == ["trained"]  # one build; the other process read it
    assert outs[0][0] == outs[1][0]  # the same streams


def test_batches_are_a_pure_function_of_seed_and_step():
    a = train_offsets(10_000, 32, 8, seed=3, step=5)
    b = train_offsets(10_000, 32, 8, seed=3, step=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, train_offsets(10_000, 32, 8, seed=3, step=6))
    stream = np.arange(10_000, dtype=np.uint16)
    w = windows(stream, a, 32)
    assert w.shape == (8, 33) and (np.diff(w, axis=1) == 1).all()
    v = val_offsets(5000, 32, 1000)
    assert len(v) == math.ceil(1000 / 32) and v.max() <= 5000 - 33
