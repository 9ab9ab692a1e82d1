"""``tlc compress RUNS_DIR``: prune and 8-bit quantize every trained model of a sweep, evaluate and
measure every variant for real, and write one line per variant to ``<run>/compress.jsonl``.

Each variant is saved under ``<run>/compressed/<variant-id>/`` (safetensors; sparse and int8
weights stored as such, see tlc.compress.store) with its per-position validation losses and
predictions (``eval.npz``). Resumable: a variant whose line is in compress.jsonl and whose
artifact exists is skipped. Where a shape was trained with several seeds, a final pass replaces
each row's disagreement with Hooker et al.'s compression-identified exemplars (CIE).

compress.jsonl row (one per variant):
  run_id, variant, method ("none" | METHODS), sparsity (achieved, prunable weights),
  target_sparsity, block (block size or null), bits (32 | 8), int8_path, nonzeros (all
  parameters), bytes (model.safetensors), dense_bytes, latency_ms_b1, latency_ms_b32 (ms per
  token, median of repeats, forward pass over a fixed prompt), latency_kind, latency_note,
  latency_ms_b1_ort_int8, latency_ms_b32_ort_int8 (8-bit variants with --ort-latency: the same
  prompt on ONNX Runtime's int8 model of the variant, tlc.export.to_onnx; else null),
  prompt_tokens, device, val_loss, val_bpb, val_acc, loss_by_freq_bucket (5, rarest first),
  freq_bucket_tokens, freq_buckets ("equal_train_token_mass"), disagreement {kind: "cie" |
  "disagreement_not_cie", seeds, count, fraction, loss, dense_loss}, dense_val_loss,
  recovery_steps, wall_s, artifact; group_size (gptq, rtn: inputs per scale) and calibration
  {split: "train", sequences, tokens} for the calibrated methods (wanda, sparsegpt, gptq), else null.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from tlc.compress.variants import (
    CALIBRATED,
    QUANTIZERS,
    RECOVERING,
    CompressSettings,
    VariantSpec,
    variant_specs,
)
from tlc.errors import UserError
from tlc.io import append_jsonl, is_complete, list_runs, read_jsonl, rewrite_jsonl

ROWS = "compress.jsonl"
FREQ_BUCKETS = "equal_train_token_mass"


def find_runs(runs_dir: Path) -> list[Path]:
    """Complete runs under RUNS_DIR (or RUNS_DIR itself when it is one run), in name order."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"RUNS_DIR: {str(runs_dir)!r} is not a folder; give a sweep's folder such as runs/tiny")
    if is_complete(runs_dir):
        return [runs_dir]
    runs = [p for p in list_runs(runs_dir) if is_complete(p)]
    if not runs:
        raise UserError(f"RUNS_DIR: no trained runs under {str(runs_dir)!r} (a run has config.json and model/); "
                        "train them first with tlc sweep or tlc train")
    return runs


@dataclasses.dataclass
class RunContext:
    """What every variant of one run is evaluated against, loaded once."""

    run_dir: Path
    config: dict
    tokens: object  # tlc.train.data.TokenData
    offsets: np.ndarray  # validation windows of the training run's evaluations
    buckets: np.ndarray  # frequency bucket of each vocabulary id
    calibration: object  # (windows, context) int64 tensor of training text
    dense: object  # the trained model, fp32
    device: object
    int8_path: str | None
    calibration_set: object = None  # (--calibration-sequences, context) training windows for CALIBRATED methods


def load_run(run_dir: Path, settings: CompressSettings, checkpoint: Path | None = None) -> RunContext:
    """Read a run's config, data and model (``checkpoint``/model/, default the run's own); check the
    data is the one it was trained on."""
    import torch

    from tlc.architecture import auto_model_class
    from tlc.compress.evaluate import frequency_buckets
    from tlc.train.data import load_corpus, load_tokens, train_offsets, val_offsets, windows

    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    data, shape, train = config["data"], config["shape"], config["train"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dense = auto_model_class(shape.get("objective", "clm")).from_pretrained(str((checkpoint or run_dir) / "model"), use_safetensors=True,
                                                                attn_implementation="sdpa").float().to(device).eval()
    if "block" in settings.methods:
        from tlc.compress.prune import check_block_size

        check_block_size(dense, settings.block_size)  # before the slower data loading
    corpus = load_corpus(data["source"], data["val_percent"], data["text_field"])
    if data.get("fingerprint") and corpus.fingerprint != data["fingerprint"]:
        raise UserError(f"RUNS_DIR: the data of {run_dir.name} ({data['source']!r}) changed since training "
                        "(fingerprint differs); evaluate on the same data or retrain")
    tokens = load_tokens(corpus, shape["vocab_size"])
    context = shape["context"]
    offsets = train_offsets(len(tokens.train), context, settings.calibration_windows, config.get("seed", 0) + 104729, 0)
    calibration = torch.from_numpy(windows(tokens.train, offsets, context)[:, :-1]).to(device)
    calibration_set = None
    if any(m in CALIBRATED for m in settings.methods):  # a separate draw: structured keeps its 16 windows
        picked = train_offsets(len(tokens.train), context, settings.calibration_sequences,
                               config.get("seed", 0) + 7919, 0)
        calibration_set = torch.from_numpy(windows(tokens.train, picked, context)[:, :-1]).to(device)
    int8_path = None
    if settings.int8:
        from tlc.compress.quantize import choose_int8_path

        int8_path, _ = choose_int8_path(device, shape["width"])
    return RunContext(checkpoint or run_dir, config, tokens, val_offsets(len(tokens.val), context, train["eval_tokens"]),
                      frequency_buckets(tokens.train, shape["vocab_size"]), calibration, dense, device, int8_path,
                      calibration_set)


def _save_eval(folder: Path, token_loss: np.ndarray, predictions: np.ndarray) -> None:
    tmp = folder / f".eval.{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, token_loss=token_loss, predictions=predictions)
    os.replace(tmp, folder / "eval.npz")


def load_eval(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(per-position loss, predictions) saved with a variant."""
    with np.load(Path(folder) / "eval.npz", allow_pickle=False) as f:
        return f["token_loss"], f["predictions"]


def make_variant(ctx: RunContext, spec: VariantSpec, settings: CompressSettings, fp32_models: dict,
                 dense_eval: tuple | None) -> dict:
    """Build, save, evaluate and time one variant; returns its compress.jsonl row."""
    from tlc.compress.evaluate import disagreement, evaluate_positions, latency_ms_per_token
    from tlc.compress.store import is_saved, load_fp32, save_variant
    from tlc.compress.variants import (block_sparse_model, block_storage_note, build_pruned, latency_kind,
                                       sparse_kind)
    from tlc.train.evaluation import eval_batch_size

    started = time.perf_counter()
    shape, train = ctx.config["shape"], ctx.config["train"]
    base = spec.base
    base_folder = ctx.run_dir / "compressed" / base.id
    quantized = None
    if spec.method in QUANTIZERS:
        import copy

        from tlc.compress.calibrated import Grid, quantize_weights

        model32, achieved = copy.deepcopy(ctx.dense), 0.0
        quantized = quantize_weights(model32, Grid(spec.bits, spec.group or 0),
                                     ctx.calibration_set if spec.method == "gptq" else None, spec.method)
    elif base.id in fp32_models:
        model32, achieved = fp32_models[base.id]
    elif spec.bits == 8 and is_saved(base_folder):
        model32 = load_fp32(base_folder).to(ctx.device)
        achieved = _row_value(ctx.run_dir, base.id, "sparsity")
    else:
        from tlc.config import TrainSettings

        recovery = {"tokens": ctx.tokens, "context": shape["context"], "train": TrainSettings(**{**train, "prune": None}),
                    "steps": settings.recovery_steps, "seed": ctx.config.get("seed", 0)}
        calibration = ctx.calibration_set if base.method in CALIBRATED else ctx.calibration
        model32, achieved = build_pruned(base, ctx.dense, calibration, recovery)
        model32 = model32.to(ctx.device).eval()
    if spec.bits == 32 and quantized is None:
        fp32_models.clear()  # keep only the latest base for its 8-bit twin
        fp32_models[base.id] = (model32, achieved)

    folder = ctx.run_dir / "compressed" / spec.id
    manifest = {"run_id": ctx.config["run_id"], "variant": spec.id, "method": spec.method,
                "target_sparsity": spec.sparsity, "block": spec.block}
    stored_bits = 32 if quantized is not None else spec.bits  # weight-only codes: see save_variant(weight_only=)
    saved = save_variant(folder, model32, sparse_kind(spec), spec.block or 32, stored_bits,
                         ctx.int8_path if stored_bits == 8 else None, manifest, weight_only=quantized)
    runtime = saved.get("model", model32)

    metrics, token_loss, predictions = evaluate_positions(runtime, ctx.tokens, ctx.offsets, shape["context"],
                                                          eval_batch_size(train["micro_batch"], shape["context"]),
                                                          ctx.device, ctx.buckets)
    _save_eval(folder, token_loss, predictions)

    vocab = shape["vocab_size"]
    prompt = min(settings.prompt_tokens, shape["context"])
    timed = {1: runtime, 32: runtime}  # batch size -> the model timed at it
    kind, note = latency_kind(spec, ctx.int8_path), None
    if spec.method == "block" and spec.bits == 32:
        # Each batch size gets the conversion a deployment at that batch would run: cuda_ext keeps a
        # layer's blocks only below the crossover measured here for calls of batch × prompt tokens.
        converted = {batch: block_sparse_model(model32, spec.block, ctx.calibration[:2], tokens=batch * prompt)
                     for batch in timed}
        failed = next((why for model, why in converted.values() if model is None), None)
        if failed:
            note = failed
        else:
            timed = {batch: model for batch, (model, _) in converted.items()}
            kind = "cuda_ext_bsr"
            note = "; ".join(f"b{batch}: {block_storage_note(model)}" for batch, model in timed.items())
    b1 = latency_ms_per_token(timed[1], vocab, ctx.device, 1, prompt, settings.latency_repeats)
    b32 = latency_ms_per_token(timed[32], vocab, ctx.device, 32, prompt, settings.latency_repeats)
    ort = {"latency_ms_b1_ort_int8": None, "latency_ms_b32_ort_int8": None}
    if settings.ort_latency and stored_bits == 8:
        from tlc.compress.store import load_fp32
        from tlc.export.to_onnx import ort_int8_latency

        ort = ort_int8_latency(load_fp32(folder), shape["context"], vocab, prompt, settings.latency_repeats,
                               source=str(ctx.run_dir))

    if dense_eval is None:  # this is the dense model itself
        dense_eval = (token_loss, predictions)
    row = {
        "run_id": ctx.config["run_id"],
        "variant": spec.id,
        "method": spec.method,
        "sparsity": round(float(achieved), 6),
        "target_sparsity": spec.sparsity,
        "block": spec.block,
        "bits": spec.bits,
        "int8_path": ctx.int8_path if stored_bits == 8 else None,
        "group_size": spec.group if spec.method in QUANTIZERS else None,
        "calibration": ({"split": "train", "sequences": int(ctx.calibration_set.shape[0]),
                         "tokens": int(ctx.calibration_set.numel())} if spec.method in CALIBRATED else None),
        "nonzeros": saved["nonzeros"],
        "bytes": saved["bytes"],
        "latency_ms_b1": b1,
        "latency_ms_b32": b32,
        "latency_kind": kind,
        "latency_note": note,
        **ort,
        "prompt_tokens": prompt,
        "device": _device_name(ctx.device),
        **metrics,
        "freq_buckets": FREQ_BUCKETS,
        "disagreement": disagreement(predictions, token_loss, dense_eval[1], dense_eval[0]),
        "recovery_steps": settings.recovery_steps if spec.method in RECOVERING else 0,
        "wall_s": round(time.perf_counter() - started, 3),
        "artifact": str(folder.relative_to(ctx.run_dir)),
    }
    return row


def _row_value(run_dir: Path, variant: str, field: str):
    for row in read_jsonl(run_dir / ROWS):
        if row.get("variant") == variant:
            return row[field]
    raise UserError(f"{run_dir / ROWS}: no row for {variant}; delete {run_dir / 'compressed' / variant} and rerun")


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def planned_variants(compression: dict) -> tuple[CompressSettings, list[VariantSpec]]:
    """Settings and variants for a plan's compression {method, sparsity, block, recovery_steps, int8}:
    the dense baseline, the pruned model, and its 8-bit twin when the plan says int8; or, for a weight-only
    quantizer {method gptq|rtn, bits, group_size, calibration}, the dense baseline and its codes."""
    method, sparsity, int8 = compression["method"], float(compression["sparsity"]), bool(compression["int8"])
    if method in QUANTIZERS:
        calibration = compression.get("calibration") or {}
        bits, group = int(compression["bits"]), int(compression.get("group_size") or 0)
        settings = CompressSettings(methods=(method,), sparsities=(0.0,), int8=False, quant_bits=(bits,),
                                    group_size=group, calibration_sequences=int(calibration.get("sequences") or 128))
        return settings, [VariantSpec("none", 0.0, 32), VariantSpec(method, 0.0, bits, group=group)]
    block = int(compression.get("block") or 32) if method == "block" else None
    calibration = compression.get("calibration") or {}
    settings = CompressSettings(methods=(method,) if method != "none" else (), sparsities=(sparsity,), int8=int8,
                                recovery_steps=int(compression.get("recovery_steps") or 0), block_size=block or 32,
                                calibration_sequences=int(calibration.get("sequences") or 128))
    base = VariantSpec(method, sparsity if method != "none" else 0.0, 32, block)
    specs = [VariantSpec("none", 0.0, 32)]
    specs += [base] if method != "none" else []
    specs += [VariantSpec(base.method, base.sparsity, 8, block)] if int8 else []
    return settings, specs


def branch_checkpoints(run_dir: Path) -> list[Path]:
    """The saved cooldown-branch models of a run (``<run>/branches/<tokens>/``), by tokens."""
    root = Path(run_dir) / "branches"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.isdigit() and is_complete(p)), key=lambda p: int(p.name))


def earlier_branches(run_dir: Path) -> list[Path]:
    """The cooldown-branch models of a run except the one that is the run's own finished model (the branch
    at the run's final tokens: its weights are <run>/model/ too, compressed with the run; tlc fit counts it once)."""
    finals = [row["tokens"] for row in read_jsonl(Path(run_dir) / "metrics.jsonl") if row.get("final")]
    return [b for b in branch_checkpoints(run_dir) if not finals or int(b.name) != max(finals)]


def finished_model(run_dir: Path) -> Path | None:
    """Where a run's finished model is, as ``compress_run``'s ``checkpoint``: the last cooldown branch of a
    WSD run (a planned run's one branch ends at its planned tokens), None for the run's own model."""
    branches = branch_checkpoints(run_dir)
    return branches[-1] if branches else None


def missing_variants(run_dir: Path, settings: CompressSettings, specs: list[VariantSpec] | None = None,
                     checkpoint: Path | None = None) -> tuple[dict, list[VariantSpec]]:
    """A run's (or branch's) finished rows by variant, and the variants still to make (``specs``, default
    every variant ``settings`` asks for). Reads compress.jsonl and the saved artifacts only: no model."""
    from tlc.compress.store import is_saved

    home = Path(checkpoint) if checkpoint is not None else Path(run_dir)
    rows = {r["variant"]: r for r in read_jsonl(home / ROWS) if is_saved(home / "compressed" / str(r.get("variant")))}
    return rows, [s for s in (variant_specs(settings) if specs is None else specs) if s.id not in rows]


def compress_run(run_dir: Path, settings: CompressSettings, log=print,
                 specs: list[VariantSpec] | None = None, checkpoint: Path | None = None) -> list[dict]:
    """Make every missing variant of one run (``specs``, default every variant ``settings`` asks for);
    returns all of the run's rows. ``checkpoint`` is a cooldown branch's folder: its model is
    compressed instead, into its own compressed/ and compress.jsonl, each row carrying its tokens."""
    run_dir = Path(run_dir)
    home = Path(checkpoint) if checkpoint is not None else run_dir
    label = run_dir.name if checkpoint is None else f"{run_dir.name}@{home.name}"
    path = home / ROWS
    rows, todo = missing_variants(run_dir, settings, specs, checkpoint)
    if _objective(run_dir) == "mlm" and any(s.method == "structured" for s in todo):
        # removing BERT heads would need per-layer head counts that its config cannot hold
        log(f"{label}: structured pruning is not available for mlm encoders; its variants are skipped")
        todo = [s for s in todo if s.method != "structured"]
    if not todo:
        log(f"{label}: all {len(rows)} variants done")
        return list(rows.values())
    ctx = load_run(run_dir, settings, checkpoint)
    fp32_models: dict = {}
    dense_spec = VariantSpec("none", 0.0, 32)
    dense_eval = load_eval(home / "compressed" / "dense") if "dense" in rows else None
    if dense_spec.id not in rows:
        todo = [dense_spec] + [s for s in todo if s.id != dense_spec.id]
    for spec in todo:
        row = make_variant(ctx, spec, settings, fp32_models, dense_eval)
        if spec.id == "dense":
            dense_eval = load_eval(home / "compressed" / "dense")
        row["dense_val_loss"] = rows["dense"]["val_loss"] if "dense" in rows else row["val_loss"]
        if checkpoint is not None:
            row["tokens"] = int(home.name)  # a branch's D: the compression models' D/N term is fitted to it
        append_jsonl(path, row)
        rows[spec.id] = row
        added = row["val_loss"] - row["dense_val_loss"]
        log(f"{label} {spec.id:<22} loss {row['val_loss']:.4f} ({added:+.4f})  "
            f"nonzeros {row['nonzeros']:>9}  bytes {row['bytes']:>9}  b1 {row['latency_ms_b1']:.4f} ms/tok "
            f"[{row['latency_kind']}]" + (f"  ort int8 {row['latency_ms_b1_ort_int8']:.4f}"
                                          if row.get("latency_ms_b1_ort_int8") is not None else "")
            + f"  {row['wall_s']:.1f}s")
    return list(rows.values())


def _objective(run_dir: Path) -> str:
    """The run's training objective (clm or mlm), from its config.json."""
    config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    return config["shape"].get("objective", "clm")


def add_cie(run_dirs: list[Path]) -> int:
    """Where a shape has several seeds, set each variant's disagreement to its CIE (Hooker et al. 2020);
    returns how many rows changed. Rows keep their one-seed figure as ``disagreement_vs_own_dense``."""
    from tlc.compress.evaluate import compression_identified_exemplars

    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        key = json.dumps([config["shape"], config["train"], config["data"].get("fingerprint")], sort_keys=True)
        groups.setdefault(key, []).append(run_dir)
    changed = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        rows = {m: {r["variant"]: r for r in read_jsonl(m / ROWS)} for m in members}
        shared = set.intersection(*(set(r) for r in rows.values()))
        if "dense" not in shared:
            continue
        # a variant whose rows already hold the CIE of this many seeds is done (run again, or the next pass)
        todo = sorted(v for v in shared if any(rows[m][v]["disagreement"].get("kind") != "cie"
                                               or rows[m][v]["disagreement"].get("seeds") != len(members)
                                               for m in members))
        if not todo:
            continue
        dense = [load_eval(m / "compressed" / "dense") for m in members]
        dense_loss = np.mean([d[0] for d in dense], axis=0)
        for variant in todo:
            evals = [load_eval(m / "compressed" / variant) for m in members]
            cie = compression_identified_exemplars([e[1] for e in evals], [d[1] for d in dense],
                                                   np.mean([e[0] for e in evals], axis=0), dense_loss)
            for m in members:
                row = rows[m][variant]
                if row["disagreement"].get("kind") != "cie":
                    row["disagreement_vs_own_dense"] = row["disagreement"]
                row["disagreement"] = cie
                changed += 1
        for m in members:
            rewrite_jsonl(m / ROWS, list(rows[m].values()))
    return changed
