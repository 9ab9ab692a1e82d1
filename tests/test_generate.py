"""``tlc generate``: greedy and seeded sampling from any variant, its record, the report's side-by-side
section, and its bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tlc.cli import main
from tlc.io import read_jsonl


def _sweep_copy(compressed_run, tmp_path):
    run = tmp_path / "sweep" / compressed_run.name
    shutil.copytree(compressed_run, run, ignore=shutil.ignore_patterns("checkpoint", "samples.jsonl"))
    return run


def _generate(capsys, *argv: str) -> str:
    assert main(["generate", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_greedy_is_the_argmax_continuation_and_is_recorded(compressed_run, tmp_path, capsys):
    from tlc.compress.store import load_variant
    from tlc.generate.sample import load_tokenizer

    run = _sweep_copy(compressed_run, tmp_path)
    out = _generate(capsys, run, "--variant", "magnitude-s50", "--prompt", "def f(x):", "--tokens", "6")
    tokenizer, _ = load_tokenizer(run)
    model = load_variant(run / "compressed" / "magnitude-s50")
    ids = tokenizer.encode("def f(x):").ids
    expected = []
    with torch.inference_mode():
        for _ in range(6):
            expected.append(int(model(input_ids=torch.tensor([ids + expected])).logits[0, -1].argmax()))
    completion = tokenizer.decode(expected)
    assert out == "def f(x):" + completion + "\n"
    (row,) = read_jsonl(run / "samples.jsonl")
    assert row["variant"] == "magnitude-s50" and row["completion"] == completion and row["generated"] == 6
    assert row["temperature"] == 0 and row["method"] == "magnitude" and row["bits"] == 32


def test_sampling_is_seeded_and_runs_on_every_kind_of_variant(compressed_run, tmp_path, capsys):
    run = _sweep_copy(compressed_run, tmp_path)
    args = ["--prompt", "import os\n", "--tokens", "12", "--temperature", "1.5", "--no-record"]
    first = _generate(capsys, run, *args, "--seed", "1")
    assert _generate(capsys, run, *args, "--seed", "1") == first
    assert any(_generate(capsys, run, *args, "--seed", str(s)) != first for s in (2, 3, 4))
    for variant in ("dense", "none-int8", "structured-s50", "structured-s50-int8"):
        assert _generate(capsys, run, "--variant", variant, *args).startswith("import os\n")
    assert not (run / "samples.jsonl").exists()


def test_context_is_a_sliding_window(compressed_run, tmp_path, capsys):
    run = _sweep_copy(compressed_run, tmp_path)
    context = json.loads((run / "config.json").read_text())["shape"]["context"]
    _generate(capsys, run, "--prompt", "x = 1\n", "--tokens", str(2 * context), "--temperature", "1", "--no-record")


def test_report_shows_dense_beside_the_recommended_variant_escaped(compressed_run, tmp_path, capsys):
    run = _sweep_copy(compressed_run, tmp_path)
    plan = {"recommendation": {"compression": {"method": "structured", "sparsity": 0.45, "int8": True}}}
    (run.parent / "plan.json").write_text(json.dumps(plan))
    prompt = "<script>alert(1)</script>"
    _generate(capsys, run, "--prompt", prompt, "--tokens", "4")
    _generate(capsys, run, "--variant", "magnitude-s50", "--prompt", prompt, "--tokens", "4")
    _generate(capsys, run, "--variant", "recommended", "--prompt", prompt, "--tokens", "4")
    assert read_jsonl(run / "samples.jsonl")[-1]["variant"] == "structured-s50-int8"

    from tlc.report.data import collect
    from tlc.report.samples import samples_html, samples_markdown

    data = collect(run.parent)
    page = samples_html(data)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.index("structured-s50-int8") < page.index("magnitude-s50")  # the recommended one first
    assert "(recommended)" in page and page.count("(recommended)") == 1
    assert "structured-s50-int8 (structured 50% + int8) (recommended)" in "\n".join(samples_markdown(data))
    from tlc.report.build import write_report

    index = write_report(run.parent).read_text(encoding="utf-8")
    assert "Samples: dense beside compressed" in index and "<script>" not in index


def test_without_samples_the_report_says_how_to_make_them(compressed_run, tmp_path):
    from tlc.report.data import collect
    from tlc.report.samples import samples_html

    run = _sweep_copy(compressed_run, tmp_path)
    assert "No samples yet: tlc generate" in samples_html(collect(run.parent))


# ----------------------------------------------------------------------------------------------
# Bad input


def _error(capsys, *argv) -> str:
    assert main(["generate", *map(str, argv)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "x", "--tokens", "0"], "--tokens: must be at least 1, got 0"),
    (["--prompt", ""], "--prompt: the prompt is empty"),
    (["--prompt", "x", "--temperature", "-1"], "--temperature: must be 0"),
    (["--prompt", "x", "--temperature", "nan"], "--temperature: must be 0"),
    (["--prompt", "x", "--variant", "magnitude-s90"], "--variant: 'magnitude-s90' is not a variant"),
    (["--prompt", "x", "--variant", "recommended"], "--variant recommended: no plan.json"),
])
def test_bad_input_is_one_line(compressed_run, tmp_path, capsys, argv, message):
    run = _sweep_copy(compressed_run, tmp_path)
    assert message in _error(capsys, run, *argv)
    assert not (run / "samples.jsonl").exists()


def test_prompt_longer_than_the_context(compressed_run, tmp_path, capsys):
    run = _sweep_copy(compressed_run, tmp_path)
    context = json.loads((run / "config.json").read_text())["shape"]["context"]
    err = _error(capsys, run, "--prompt", "value = 12345\n" * context)
    assert "--prompt:" in err and f"longer than the model's context of {context}" in err


def test_a_run_never_compressed_generates_only_from_its_trained_model(compressed_run, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(compressed_run / "model", bare / "model")
    shutil.copyfile(compressed_run / "config.json", bare / "config.json")
    assert "never compressed" in _error(capsys, bare, "--prompt", "x", "--variant", "dense")
    assert _generate(capsys, bare, "--prompt", "x = ", "--tokens", "3").startswith("x = ")
