"""Sparse training (train.prune): masks at init, gradual magnitude pruning, and masks that hold
through DeepSpeed's optimizer steps in ZeRO 0 and 2, a resume, and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tlc.compress.prune import is_conv1d, prunable_layers, weight_out_in
from tlc.config import ModelShape, PruneSettings, TrainSettings, load_sweep, parse_prune
from tlc.errors import UserError
from tlc.train.model import build_model
from tlc.train.sparsity import (SparseTraining, gmp_events, gmp_sparsity, grow_masks, init_masks, load_masks,
                                save_masks, shuffle_within_layers)

SHAPE = ModelShape(width=32, depth=2, heads=2, context=32, vocab_size=300)


def _sparsity(masks) -> float:
    return sum(int((~k).sum()) for k in masks.values()) / sum(k.numel() for k in masks.values())


def _batch(seed: int = 0, rows: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, SHAPE.vocab_size, (rows, SHAPE.context + 1), generator=generator)


# -- the schedule ---------------------------------------------------------------------------------

def test_cubic_schedule_rises_from_start_to_end_and_is_fastest_early():
    values = [gmp_sparsity(t, 25, 75, 0.8) for t in range(101)]
    assert values[25] == 0 and values[75] == pytest.approx(0.8) and values[100] == pytest.approx(0.8)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[50] == pytest.approx(0.8 * (1 - 0.5 ** 3))  # Zhu & Gupta eq. 1 halfway
    events = gmp_events(100, PruneSettings("magnitude", 0.8, 0.25, 0.75))
    assert events[-1] == 75 and events[0] > 25 and len(events) <= 17


def test_masks_only_grow_and_reach_the_target_per_layer():
    torch.manual_seed(0)
    masks = {"a": torch.ones(8, 16, dtype=torch.bool)}
    first = grow_masks(masks, {"a": torch.rand(8, 16)}, 0.25)
    second = grow_masks(first, {"a": torch.rand(8, 16)}, 0.5)
    assert int((~first["a"]).sum()) == 32 and int((~second["a"]).sum()) == 64
    assert not (second["a"] & ~first["a"]).any()  # nothing pruned comes back


# -- masks at initialization ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["snip", "synflow", "random", "snip-shuffle", "synflow-shuffle"])
def test_init_methods_reach_the_sparsity_exactly(method):
    model = build_model(SHAPE, seed=0)
    masks = init_masks(model, PruneSettings(method, 0.7), _batch(), seed=0)
    layers = prunable_layers(model)
    assert set(masks) == set(layers)
    assert all(masks[n].shape == weight_out_in(m).shape for n, m in layers.items())
    assert _sparsity(masks) == pytest.approx(0.7, abs=1e-3)


def test_shuffle_keeps_each_layers_count_and_moves_the_positions():
    model = build_model(SHAPE, seed=0)
    snip = init_masks(model, PruneSettings("snip", 0.7), _batch(), seed=0)
    shuffled = shuffle_within_layers(snip, seed=0)
    for name in snip:
        assert int(snip[name].sum()) == int(shuffled[name].sum())
    assert any((snip[n] != shuffled[n]).any() for n in snip)
    # SNIP ranks globally: its layers end up with different sparsities (the shuffle keeps them)
    per_layer = [1 - float(k.float().mean()) for k in snip.values()]
    assert max(per_layer) - min(per_layer) > 0.02


def test_synflow_keeps_query_and_key_weights():
    # with a plain softmax over equal inputs Q and K carry no flow and would be pruned whole
    model = build_model(SHAPE, seed=0)
    masks = synflow_masks_for(model, 0.9)
    for name, keep in masks.items():
        if name.endswith("attn.c_attn"):
            q, k, v = keep.chunk(3, dim=0)  # [out, in]: out = 3 x width
            assert q.any() and k.any() and v.any(), name


def synflow_masks_for(model, sparsity):
    from tlc.train.sparsity import synflow_masks

    return synflow_masks(model, sparsity, rounds=20)


def test_synflow_is_data_free_and_deterministic():
    a = synflow_masks_for(build_model(SHAPE, seed=0), 0.5)
    b = synflow_masks_for(build_model(SHAPE, seed=0), 0.5)
    assert all(torch.equal(a[n], b[n]) for n in a)


# -- masks through the DeepSpeed engine -------------------------------------------------------------

def _engine_steps(prune: PruneSettings, zero_stage: int, run_dir, steps: int = 8):
    from tlc.train.engine import build_engine, init_distributed
    from tlc.train.evaluation import lm_loss

    deepspeed, _, _ = init_distributed()
    model = build_model(SHAPE, seed=0)
    train = TrainSettings(tokens=1, micro_batch=4, grad_accum=2, zero_stage=zero_stage, precision="fp32", lr=1e-2)
    sparse = SparseTraining.before_engine(prune, model, run_dir=run_dir, total_steps=steps, resuming=False,
                                          calibration=_batch(99), seed=0, rank=0)
    engine, optimizer = build_engine(deepspeed, model, train, 8)
    for step in range(steps):
        for micro in range(2):
            loss, _ = lm_loss(engine, _batch(step * 2 + micro))
            engine.backward(loss)
            engine.step()
        sparse.after_step(engine, step + 1)
    return engine, sparse


@pytest.mark.parametrize("zero_stage", [0, 2])
@pytest.mark.parametrize("method", ["snip", "magnitude"])
def test_pruned_weights_stay_exactly_zero_in_weights_master_copy_and_moments(zero_stage, method, tmp_path):
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    prune = parse_prune({"method": method, "sparsity": 0.6, **({"start": 0.25, "end": 0.75} if method == "magnitude" else {})},
                        "train.prune")
    engine, sparse = _engine_steps(prune, zero_stage, tmp_path)
    masks = sparse.masks()
    assert _sparsity(masks) == pytest.approx(0.6, abs=1e-3)
    moved = 0
    for name, module in sparse.layers.items():
        weight = weight_out_in(module).detach()
        pruned = ~masks[name]
        assert (weight[pruned] == 0).all(), name
        moved += int((weight[~pruned] != 0).sum())
        master = safe_get_full_fp32_param(module.weight)
        if zero_stage:
            assert master is not None
        if master is not None:
            assert (master.t() if is_conv1d(module) else master)[pruned].abs().max() == 0
            for key in ("exp_avg", "exp_avg_sq"):
                moment = safe_get_full_optimizer_state(module.weight, key)
                assert (moment.t() if is_conv1d(module) else moment)[pruned].abs().max() == 0
    assert moved > 0  # the kept weights trained


# -- mask files -----------------------------------------------------------------------------------

def test_mask_file_round_trips_and_refuses_another_setting_or_model(tmp_path):
    model = build_model(SHAPE, seed=0)
    prune = PruneSettings("random", 0.5)
    masks = init_masks(model, prune, None, seed=0)
    path = tmp_path / "masks.safetensors"
    save_masks(path, masks, prune, step=0)
    back = load_masks(path, model, prune, step=0)
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    with pytest.raises(UserError, match="train.prune: cannot resume.*random masks at sparsity 0.5, not random at 0.6"):
        load_masks(path, model, PruneSettings("random", 0.6), step=0)
    with pytest.raises(UserError, match="does not match the model"):
        load_masks(path, build_model(dataclasses.replace(SHAPE, width=64), seed=0), prune, step=0)
    with pytest.raises(UserError, match="is missing"):
        load_masks(tmp_path / "nothing.safetensors", model, prune, step=0)
    path.write_bytes(b"torn")
    with pytest.raises(UserError, match="unreadable"):
        load_masks(path, model, prune, step=0)


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ({"method": "snip", "sparsity": 1.0}, r"train.prune.sparsity: must be in \[0, 1\), got 1.0"),
    ({"method": "snip", "sparsity": -0.1}, r"train.prune.sparsity: must be in \[0, 1\)"),
    ({"method": "obd", "sparsity": 0.5}, r"train.prune.method: unknown method 'obd'; valid: snip, synflow"),
    ({"method": "magnitude", "sparsity": 0.5, "start": 0.5, "end": 0.5}, r"0 <= start < end <= 1"),
    ({"method": "magnitude", "sparsity": 0.5, "start": 0.8, "end": 0.3}, r"0 <= start < end <= 1"),
    ({"method": "snip", "sparsity": 0.5, "end": 0.5}, r"prunes at initialization, so start and end must be 0"),
    ({"method": "snip"}, r"train.prune.sparsity: missing"),
    ({"method": "snip", "sparsity": 0.5, "when": 1}, r"train.prune: unknown key 'when'"),
    # iterative magnitude pruning with rewinding (tlc/train/lottery.py)
    ({"method": "imp", "sparsity": 0.8, "rounds": 0}, r"train.prune.rounds: imp needs 1 to 20"),
    ({"method": "imp", "sparsity": 0.8, "rewind": 1.0}, r"train.prune.rewind: must be a fraction"),
    ({"method": "imp", "sparsity": 0.8, "start": 0.2, "end": 0.5}, r"train.prune: imp prunes between trainings"),
    ({"method": "snip", "sparsity": 0.8, "rounds": 3}, r"train.prune: rounds and rewind belong to method imp"),
    ({"method": "imp", "sparsity": 0.8, "round": 3}, r"train.prune: unknown key 'round'"),
])
def test_bad_prune_settings_get_one_line_errors(raw, message):
    with pytest.raises(UserError, match=message) as info:
        parse_prune(raw, "train.prune")
    assert "\n" not in str(info.value)


def test_a_sweep_lists_settings_and_each_becomes_a_run(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("""
name: s
shapes: [{width: 32, depth: 1, heads: 2}]
seeds: [0]
train:
  tokens: 4096
  prune: [none, {method: snip, sparsity: 0.5}, {method: magnitude, sparsity: 0.5}, {method: magnitude, sparsity: 0.5, start: 0.1, end: 0.5}]
""")
    sweep = load_sweep(path)
    ids = [r.run_id for r in sweep.runs()]
    assert ids == ["w32-d1-s0", "w32-d1-s0-snip50", "w32-d1-s0-magnitude50", "w32-d1-s0-magnitude50-t10-50"]
    assert sweep.run("w32-d1-s0-magnitude50").train.prune == PruneSettings("magnitude", 0.5, 0.25, 0.75)
    path.write_text(path.read_text().replace("sparsity: 0.5}, {method: magnitude", "sparsity: 1.5}, {method: magnitude"))
    with pytest.raises(UserError, match=r"s.yaml.train.prune\[1\].sparsity: must be in \[0, 1\)"):
        load_sweep(path)


# -- whole runs: metrics, final weights, resume and its checks --------------------------------------

def _run_config(small_corpus, prune: PruneSettings, tokens: int = 24 * 8 * 32):
    from tlc.config import DataSettings, RunConfig

    train = TrainSettings(tokens=tokens, micro_batch=8, evals=4, precision="fp32", prune=prune)
    return RunConfig(shape=dataclasses.replace(SHAPE, depth=1), train=train, data=DataSettings(source=str(small_corpus)))


def _final_sparsity(run_dir) -> tuple[float, dict]:
    from safetensors.torch import load_file

    weights = load_file(run_dir / "model" / "model.safetensors")
    matrices = {k.removesuffix(".weight"): v for k, v in weights.items()
                if k.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))}
    return sum(int((v == 0).sum()) for v in matrices.values()) / sum(v.numel() for v in matrices.values()), matrices


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_a_sparse_run_ends_exactly_sparse_and_its_resume_checks_the_mask_file(tmp_path, small_corpus, method):
    import shutil

    from tlc.io import read_jsonl
    from tlc.train.loop import train_run

    prune = parse_prune({"method": method, "sparsity": 0.5}, "train.prune")
    cfg = _run_config(small_corpus, prune)
    out = tmp_path / cfg.run_id
    train_run(cfg, out, progress=False)
    rows = read_jsonl(out / "metrics.jsonl")
    sparsity, matrices = _final_sparsity(out)
    assert sparsity == pytest.approx(0.5, abs=1e-3) and rows[-1]["sparsity"] == pytest.approx(sparsity)
    if method == "magnitude":  # dense until 25% of the run, at the target from 75%
        assert rows[0]["sparsity"] == 0 and 0 < rows[-2]["sparsity"] <= 0.5
        mask_file = out / "checkpoint" / f"masks-step{rows[-1]['step']:08d}.safetensors"
        assert [p.name for p in (out / "checkpoint").glob("masks-*")] == [mask_file.name]
    else:
        mask_file = out / "masks.safetensors"
        from safetensors.torch import load_file

        for name, keep in load_file(mask_file).items():
            assert (matrices[name].t()[keep == 0] == 0).all()
    # resume from the last checkpoint: the masks are read back and checked
    shutil.rmtree(out / "model")
    train_run(cfg, out, progress=False)
    assert _final_sparsity(out)[0] == pytest.approx(sparsity)
    shutil.rmtree(out / "model")
    mask_file.unlink()
    with pytest.raises(UserError, match=r"train.prune: cannot resume: the mask file .* is missing") as info:
        train_run(cfg, out, progress=False)
    assert "\n" not in str(info.value)


def test_gradual_pruning_resumes_after_sigkill_as_if_never_stopped(tmp_path, small_corpus):
    import subprocess
    import sys

    from conftest import REPO, sigkill_at_checkpoint
    from tlc.io import read_jsonl
    from tlc.train.loop import train_run

    cfg = _run_config(small_corpus, PruneSettings("magnitude", 0.5, 0.25, 0.75), tokens=96 * 8 * 32)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, evals=24))
    train_run(cfg, tmp_path / "whole", progress=False)

    killed = tmp_path / "killed"
    args = ["train", "--width", "32", "--depth", "1", "--heads", "2", "--context", "32", "--vocab-size", "300",
            "--tokens", str(96 * 8 * 32), "--micro-batch", "8", "--evals", "24", "--precision", "fp32",
            "--data", str(small_corpus), "--prune", "magnitude:0.5", "--out", str(killed), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "tlc", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # inside the pruning ramp (24..72)
    killed_at = sigkill_at_checkpoint(proc, killed / "checkpoint" / "tlc_latest.json", min_step=40, timeout=600)
    assert 24 < killed_at < 72 and not (killed / "model").exists()
    assert (killed / "checkpoint" / f"masks-step{killed_at:08d}.safetensors").exists()

    train_run(cfg, killed, progress=False)
    whole, resumed = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole]
    assert [r["sparsity"] for r in resumed] == [r["sparsity"] for r in whole]
    assert abs(resumed[-1]["val_loss"] - whole[-1]["val_loss"]) < 1e-5
    a, b = _final_sparsity(tmp_path / "whole")[1], _final_sparsity(killed)[1]
    # the same weights pruned, but for near-ties: since the per-document split (issue 29's merge) a resumed run
    # matches to ~1e-6 per evaluation, not bit for bit, and 2 of 23,392 weights flipped in the last check
    flipped = sum(int(((a[n] == 0) != (b[n] == 0)).sum()) for n in a)
    assert flipped <= 0.001 * sum(a[n].numel() for n in a), flipped
