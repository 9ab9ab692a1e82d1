"""bench/plan_accuracy.py scores exactly the interval the plan printed, and keeps coverage and error apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "plan_accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_plan_accuracy", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(measured: float, sem: float | None, mean=3.0, low=2.9, high=3.1) -> dict:
    return {"predicted": {"loss": {"mean": mean, "low": low, "high": high}},
            "measured": {"loss": measured, "loss_sem": sem}}


def test_inside_is_the_printed_interval_exactly_and_validate_widens_by_the_standard_error(bench):
    just_out = bench.score_point(_point(3.12, 0.05))
    assert just_out["inside"] is False and just_out["validate"] is True  # not inflated by seed noise
    assert just_out["error"] == pytest.approx((3.12 - 3.0) / 3.12) and just_out["half_width"] == pytest.approx(0.1 / 3)
    assert bench.score_point(_point(3.05, None))["inside"] is True
    assert bench.score_point(_point(3.05, None, low=None, high=None))["inside"] is None


def test_coverage_and_mean_error_are_reported_apart(bench):
    scores = [bench.score_point(p) for p in (_point(3.05, 0.01), _point(3.3, 0.01), _point(2.7, 0.01),
                                             _point(3.0, 0.01, low=None, high=None))]
    total = bench.coverage_and_error(scores)
    assert (total["inside"], total["scored"]) == (1, 3) and total["coverage"] == pytest.approx(1 / 3)
    errors = [(3.05 - 3) / 3.05, (3.3 - 3) / 3.3, (2.7 - 3) / 2.7, 0.0]
    assert total["mean_abs_error"] == pytest.approx(sum(map(abs, errors)) / 4)
    assert total["mean_signed_error"] == pytest.approx(sum(errors) / 4)
