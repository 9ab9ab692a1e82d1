"""Training curves in TensorBoard, written by DeepSpeed's own monitor: read the event files back."""

from __future__ import annotations

import pytest

from tlc.io import read_jsonl


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_event_files_hold_train_and_validation_loss_by_step_and_tokens(compressed_run):
    pytest.importorskip("tensorboard")
    scalars = _scalars(compressed_run / "tensorboard")
    metrics = read_jsonl(compressed_run / "metrics.jsonl")
    assert [s for s, _ in scalars["val/loss/by_step"]] == [m["step"] for m in metrics]
    assert [s for s, _ in scalars["val/loss/by_tokens"]] == [m["tokens"] for m in metrics]
    for (_, value), m in zip(scalars["val/loss/by_step"], metrics):
        assert value == pytest.approx(m["val_loss"], rel=1e-6)  # event files hold float32
    for (_, value), m in zip(scalars["train/loss_mean/by_tokens"], metrics):
        assert value == pytest.approx(m["train_loss"], rel=1e-6)
    steps = metrics[-1]["step"]
    assert [s for s, _ in scalars["train/loss/by_step"]] == list(range(1, steps + 1))
    assert {"val/bpb/by_step", "val/acc/by_tokens", "Train/Samples/lr"} <= set(scalars)  # the last is DeepSpeed's
