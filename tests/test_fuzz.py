"""Bad input, many ways: malformed sweep files and random command lines for every command.

The only outcomes allowed are success (or reaching training, which the tests stop at the
door) and a one-line error naming the problem: no traceback, and nothing left behind on disk.
Every call runs in process, in an empty sandbox folder, with the heavy entry points (DeepSpeed
start-up, the sweep's study, compression, the planner's search) replaced by a stop sign, so a
command line that would start real work counts as accepted and costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_figures import record
from tlc.cli import COMMANDS, build_parser, main
from tlc.config import load_sweep, parse_sweep
from tlc.errors import UserError

# TLC_FUZZ_EXAMPLES=1000 for a longer hunt; 40 per test keeps the suite fast
FUZZ = settings(max_examples=int(os.environ.get("TLC_FUZZ_EXAMPLES", "40")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TRICKY = ["", " ", "0", "-1", "-0", "1e400", "-1e400", "1e-400", "nan", "NaN", "inf", "-inf", "2e6", "1_000", "0x10",
          "3.5", "1e17", "9" * 40, "true", "null", "~", "../..", "../../escape", "/etc/passwd", "/", ".", "a\x00b",
          "\x00", "w16-d1-s0", "../w16-d1-s0", "stdlib", "gpt2", "llama", "bf16", "postgresql://", "sqlite:///",
          "junk://x", "sqlite:////nonexistent/dir/x.db", "<script>alert(1)</script>", "💥", "%s%n", "-", "--"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.sampled_from(TRICKY),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
COUNTS = {"malformed_inputs": 0, "accepted": 0, "help": 0, "one_line_errors": 0, "tracebacks": 0}


class ReachedWork(Exception):
    """Raised where real work (training, compressing, searching) would start: the input was accepted."""


def _base_sweep(corpus: Path) -> dict:
    return {"name": "fz", "model": {"context": 32, "vocab_size": 300},
            "shapes": [{"width": 16, "depth": 1, "heads": 2}], "seeds": [0],
            "train": {"tokens": 2048, "micro_batch": 8, "evals": 2, "precision": "fp32"},
            "data": {"source": str(corpus)}, "launch": {"retries": 0}}


PATHS = [("name",), ("model",), ("model", "context"), ("model", "vocab_size"), ("model", "arch"), ("shapes",),
         ("shapes", 0), ("shapes", 0, "width"), ("shapes", 0, "heads"), ("shapes", 0, "depth"), ("seeds",),
         ("seeds", 0), ("train",), ("train", "tokens"), ("train", "flops"), ("train", "lr"), ("train", "micro_batch"),
         ("train", "precision"), ("train", "warmup_frac"), ("train", "zero_stage"), ("data",), ("data", "source"),
         ("data", "val_percent"), ("launch",), ("launch", "nproc"), ("launch", "retries"), ("unknown_key",),
         ("train", "unknown"), ("shapes", 0, "bogus")]


def _mutate(doc: dict, path: tuple, value) -> dict:
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@st.composite
def sweep_documents(draw, corpus: Path):
    """A valid sweep with one to three fields replaced by junk, or junk outright."""
    if draw(st.integers(0, 4)) == 0:
        return draw(VALUES)
    doc = _base_sweep(corpus)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        try:
            doc = _mutate(doc, path, draw(VALUES))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation replaced the parent; keep what we have
    return doc


SWEEP_FILE_BYTES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\x00\x00", b"\xef\xbb\xbf", b"name: [", b"- - -", b"{a: 1, a: 2}", b"!!binary AAAA",
                     b"!!python/object/apply:os.system ['touch pwned']", b"name: fz\nshapes: *x\n", b"\t\tname: 1",
                     b"&a [*a]", b"name: " + b"9" * 5000]),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def _one_line_error(stderr: str, command: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith(f"tlc {command}: error: ") and len(lines[0]) > len(command) + 20


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def call(argv: list[str], sandbox: Path) -> str:
    """Run ``tlc ARGV`` in ``sandbox/a/b/c`` and classify it: 'accepted', 'error' or 'help'.

    Fails the test on a traceback, a multi-line error, or files left behind by an error.
    """
    cwd = sandbox / "a" / "b" / "c"
    cwd.mkdir(parents=True, exist_ok=True)
    before, old = _snapshot(sandbox), os.getcwd()
    err, out = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except ReachedWork:
        COUNTS["accepted"] += 1
        return "accepted"
    except SystemExit as e:  # argparse: --help (0) or a usage error (2) whose last line names the flag
        code = e.code
        assert code in (0, 2), (argv, code, err.getvalue())
        if code == 2:
            assert err.getvalue().strip().splitlines()[-1].startswith("tlc"), (argv, err.getvalue())
        result = "help" if code == 0 else "error"
    except BaseException:
        COUNTS["tracebacks"] += 1
        raise
    else:
        assert code == 2 and _one_line_error(err.getvalue(), argv[0]), (argv, code, err.getvalue()[-2000:])
        result = "error"
    finally:
        os.chdir(old)
    COUNTS["help" if result == "help" else "one_line_errors"] += 1
    if result == "error":
        assert _snapshot(sandbox) == before, (argv, sorted(_snapshot(sandbox) - before))  # nothing half-created
    return result


@pytest.fixture
def stop_at_work(monkeypatch):
    """Replace every entry point that starts real work by a ReachedWork stop sign."""
    import tlc.compress.command
    import tlc.fit.command
    import tlc.plan.command
    import tlc.train.sweep
    import tlc.train.loop

    def stop(*args, **kwargs):
        raise ReachedWork

    real_prepare = tlc.train.sweep.prepare_data

    def prepare(sweep):  # the embedded corpus takes seconds to read; a test corpus is quick and gets checked
        if sweep.data.source == "stdlib":
            raise ReachedWork
        return real_prepare(sweep)

    monkeypatch.setattr(tlc.train.loop, "init_distributed", stop)
    monkeypatch.setattr(tlc.train.sweep, "open_study", stop)
    monkeypatch.setattr(tlc.train.sweep, "prepare_data", prepare)
    monkeypatch.setattr(tlc.compress.command, "compress_run", stop)
    monkeypatch.setattr(tlc.plan.command, "make_plan", stop)
    # tlc fit's work is the fitting: a drawn `fit --published NAME --bootstrap 10**9` must stop there too
    monkeypatch.setattr(tlc.fit.command, "fit_table", stop)
    monkeypatch.setattr(tlc.fit.command, "fit_sweep", stop)


@pytest.fixture
def sandbox():
    root = Path(tempfile.mkdtemp(prefix="tlc-fuzz-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_malformed_sweep_documents_parse_or_name_the_field(small_corpus):
    @FUZZ
    @given(doc=sweep_documents(small_corpus))
    def check(doc):
        COUNTS["malformed_inputs"] += 1
        try:
            sweep = parse_sweep(doc, where="fz.yaml")
        except UserError as e:
            assert "\n" not in str(e) and str(e).startswith("fz.yaml"), str(e)
            COUNTS["one_line_errors"] += 1
            return
        COUNTS["accepted"] += 1
        for run in sweep.runs():  # what parses must be usable: finite numbers, safe run ids
            assert "/" not in run.run_id and ".." not in run.run_id
            assert all(math.isfinite(v) for v in (run.train.lr, run.train.tokens or run.train.flops))

    check()


def test_malformed_sweep_files_are_one_line_errors_and_leave_nothing_behind(small_corpus, stop_at_work, sandbox):
    @FUZZ
    @given(content=st.one_of(SWEEP_FILE_BYTES, sweep_documents(small_corpus).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True).encode("utf-8", "surrogatepass"))))
    def check(content):
        COUNTS["malformed_inputs"] += 1
        path = sandbox.parent / f"{sandbox.name}-sweep.yaml"
        path.write_bytes(content)
        try:
            load_sweep(path)
        except UserError as e:
            assert "\n" not in str(e), str(e)
            assert call(["sweep", str(path), "--runs-dir", "runs"], sandbox) == "error"
        else:
            COUNTS["accepted"] += 1
        assert not (sandbox.parent / "pwned").exists() and not Path("pwned").exists()

    try:
        check()
    finally:
        record("fuzz", **COUNTS)


FLAG_VALUES = st.one_of(st.sampled_from(TRICKY), st.integers(-(10**30), 10**30).map(str),
                        st.floats().map(repr), st.text(st.characters(blacklist_categories=("Cs",)), max_size=16))


def _flags(command: str) -> tuple[list[tuple[str, bool]], int]:
    """The command's options as (flag, takes a value) and its number of positional arguments."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    flags, positionals = [], 0
    for action in sub._actions:
        if not action.option_strings:
            positionals += 1
        elif "-h" not in action.option_strings:
            flags += [(flag, action.nargs != 0) for flag in action.option_strings]
    return flags, positionals


def _valid_base(command: str, corpus: Path, sandbox: Path) -> list[str] | None:
    """A command line that passes validation and reaches the stop sign; junk options are drawn on top of it."""
    if command == "train":
        return ["--width", "16", "--depth", "1", "--heads", "2", "--context", "32", "--vocab-size", "300",
                "--tokens", "2048", "--data", str(corpus)]
    if command == "sweep":
        path = sandbox.parent / f"{sandbox.name}-valid.yaml"
        path.write_text(yaml.safe_dump(_base_sweep(corpus)))
        return [str(path)]
    if command == "compress":  # a folder that looks like one trained run
        run = sandbox.parent / f"{sandbox.name}-run"
        (run / "model").mkdir(parents=True, exist_ok=True)
        (run / "model" / "config.json").write_text("{}")
        (run / "config.json").write_text("{}")
        return [str(run)]
    if command == "plan":
        return ["--budget", "1e17", "--law", "chinchilla"]
    return None  # fit and report read a sweep for real; demo starts from its defaults


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_command_lines_are_accepted_or_one_line_errors(command, small_corpus, stop_at_work, sandbox):
    flags, positionals = _flags(command)
    base = _valid_base(command, small_corpus, sandbox)
    options = st.lists(st.tuples(st.sampled_from(flags), FLAG_VALUES), max_size=4) if flags else st.just([])
    outcomes = []

    @FUZZ
    @given(positional=st.lists(FLAG_VALUES, min_size=positionals, max_size=positionals), options=options,
           from_base=st.booleans())
    def check(positional, options, from_base):
        COUNTS["malformed_inputs"] += 1
        argv = [command, *(base if from_base and base is not None else positional)]
        if command == "train" and not from_base:
            argv += ["--data", str(small_corpus)]  # the embedded corpus is slow to read; --data may still be drawn
        for (flag, takes_value), value in options:
            argv += [flag, value] if takes_value else [flag]
        outcomes.append(call(argv, sandbox))

    if base is not None:  # the base itself passes validation, so junk drawn on top of it tests one field at a time
        assert call([command, *base], sandbox) == "accepted"
    try:
        check()
    finally:
        record("fuzz", **COUNTS)
    assert "error" in outcomes  # the generator reaches validation
