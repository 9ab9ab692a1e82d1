"""The default training precision: chosen by the hardware, measured once per CPU and cached, overridable."""

from __future__ import annotations

import json

import pytest
import torch

from tlc.train import precision as prec


@pytest.fixture
def probe_calls(monkeypatch):
    """Replace the measured step by fixed timings; the list records each measurement made."""
    calls = []
    timings = {"fp32": 0.040, "bf16": 0.280}

    def fake_probe(rounds=3):
        calls.extend(["fp32", "bf16"])
        return dict(timings)

    monkeypatch.setattr(prec, "probe_step_seconds", fake_probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return calls, timings


def test_cpu_choice_is_the_faster_measured_step_and_is_cached(tmp_path, probe_calls):
    calls, timings = probe_calls
    first = prec.choose_precision("auto", tmp_path)
    assert first.precision == "fp32" and calls == ["fp32", "bf16"]
    assert "40 ms in fp32 and 280 ms in bf16 (measured now)" in first.reason
    second = prec.choose_precision("auto", tmp_path)
    assert second.precision == "fp32" and calls == ["fp32", "bf16"]  # read from the cache, not measured again
    assert "cached in" in second.reason
    cached = json.loads((tmp_path / prec.CACHE_FILE).read_text())
    assert cached[prec.cpu_key()]["seconds"] == {"fp32": 0.040, "bf16": 0.280}


def test_cpu_picks_bf16_where_it_measures_faster(tmp_path, probe_calls):
    calls, timings = probe_calls
    timings.update(fp32=0.050, bf16=0.030)
    assert prec.choose_precision("auto", tmp_path).precision == "bf16"


def test_a_damaged_cache_is_measured_again(tmp_path, probe_calls):
    calls, _ = probe_calls
    (tmp_path / prec.CACHE_FILE).write_text("{not json")
    assert prec.choose_precision("auto", tmp_path).precision == "fp32" and calls == ["fp32", "bf16"]
    (tmp_path / prec.CACHE_FILE).write_text(json.dumps({prec.cpu_key(): {"precision": "fp8"}}))
    prec.choose_precision("auto", tmp_path)
    assert calls == ["fp32", "bf16"] * 2


def test_an_explicit_precision_or_a_resumed_run_is_not_measured(tmp_path, probe_calls):
    calls, _ = probe_calls
    chosen = prec.choose_precision("bf16", tmp_path)
    assert chosen.precision == "bf16" and "--precision" in chosen.reason
    resumed = prec.choose_precision("auto", tmp_path, recorded="bf16")
    assert resumed.precision == "bf16" and "resumes" in resumed.reason
    assert calls == []


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32")])
def test_cuda_choice_follows_compute_capability(tmp_path, probe_calls, monkeypatch, capability, expected):
    calls, _ = probe_calls
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    chosen = prec.choose_precision("auto", tmp_path)
    assert chosen.precision == expected and f"compute capability {capability[0]}.{capability[1]}" in chosen.reason
    assert calls == []


def test_the_real_probe_times_both_precisions():
    seconds = prec.probe_step_seconds(rounds=1)
    assert set(seconds) == {"fp32", "bf16"} and all(0 < s < 60 for s in seconds.values())


@pytest.mark.gpu
def test_cuda_default_is_bf16_on_ampere_and_later(tmp_path):
    major, _ = torch.cuda.get_device_capability()
    assert prec.choose_precision("auto", tmp_path).precision == ("bf16" if major >= 8 else "fp32")


@pytest.mark.gpu
def test_a_cuda_run_trains_in_the_default_precision(tmp_path, small_corpus):
    from conftest import TINY_SHAPE, run_tlc

    proc = run_tlc("train", *TINY_SHAPE, "--tokens", "2048", "--micro-batch", "8", "--evals", "2",
                   "--data", small_corpus, "--out", tmp_path / "run", "--no-progress", check=True)
    major, _ = torch.cuda.get_device_capability()
    expected = "bf16" if major >= 8 else "fp32"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"] == expected
    assert f"precision {expected} (auto: " in proc.stderr
