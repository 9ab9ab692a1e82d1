"""A fitted sweep whose plans can be trained for real: synthetic losses (scaling.synthetic), real recipes.

The runs' config.json carry the training settings and data of real tiny runs (context 32, a
300-token vocabulary, a corpus folder), so `tlc plan` writes recipes that `tlc train --plan` and
`tlc validate` can carry out in seconds; the losses, wall times and compression rows are made
up from known laws, so the planner's inputs are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from scaling.forms import ChinchillaParameters
from scaling.synthetic import synthetic_sweep
from tlc.config import ModelShape
from tlc.io import atomic_write_json
from tlc.shapes import flops_per_token, param_counts

SHAPES = [(32, 1), (32, 2), (64, 1), (64, 2), (96, 2), (128, 2)]
TEMPLATE = {"context": 32, "vocab_size": 300, "arch": "gpt2", "ffn_mult": 4}
TRAIN = {"micro_batch": 8, "grad_accum": 1, "min_lr_ratio": 0.1, "warmup_frac": 0.05, "weight_decay": 0.1,
         "grad_clip": 1.0, "zero_stage": 0, "precision": "fp32", "evals": 3, "eval_tokens": 1024,
         "checkpoint_evals": 1}
# Parameters are dearer than data here (B/A small), so at the tiny budgets a test can train the
# compute-optimal model is one of the larger shapes trained on a few tens of thousands of tokens.
TRUTH = ChinchillaParameters(E=2.0, A=60.0, B=30.0, alpha=0.3, beta=0.3)
UNIQUE_TOKENS = 120_000  # the corpus's training tokens as config.json records them
SECONDS_PER_FLOP = 1 / 2e9  # the made-up machine: wall time = FLOPs / 2 GFLOP/s * (fpt / 1e5)^0.1


def wall_seconds(tokens: float, fpt: float) -> float:
    """Training time of the made-up machine (a throughput that falls slowly with model size)."""
    return tokens * fpt * SECONDS_PER_FLOP * (fpt / 1e5) ** 0.1


WSD = {"schedule": "wsd", "cooldowns": [0.25, 0.5, 1.0], "cooldown_frac": 0.25}


# Pruning at init with a random mask, as sparse runs of a sweep report it: dL = c·((1-s)^-gamma - 1)·(N/1e6)^-delta
INIT_RANDOM = {"c": 0.08, "gamma": 1.2, "delta": 0.3}


def write_sparse_twins(run_dir: Path, sparsities: tuple[float, ...]) -> list[Path]:
    """Beside a dense run, runs trained sparse from init (train.prune random) with the same settings: each
    finished point the dense run's loss plus INIT_RANDOM's added loss, with the sparsity the masks hold."""
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    n = config["params"]["non_embedding"]
    out = []
    for sparsity in sparsities:
        twin = run_dir.parent / f"{run_dir.name}-random{round(100 * sparsity)}"
        twin.mkdir()
        prune = {"method": "random", "sparsity": sparsity, "start": 0.0, "end": 0.0}
        atomic_write_json(twin / "config.json", {**config, "run_id": twin.name, "train": {**config["train"], "prune": prune}})
        added = INIT_RANDOM["c"] * ((1 - sparsity) ** -INIT_RANDOM["gamma"] - 1) * (n / 1e6) ** -INIT_RANDOM["delta"]
        (twin / "metrics.jsonl").write_text("".join(
            json.dumps({**r, "val_loss": r["val_loss"] + added, "sparsity": sparsity}) + "\n" for r in rows))
        out.append(twin)
    return out


# The synthetic truth of the loss by target: each part a fixed multiple of the law's loss, so a fit of
# each part must recover these factors at any (N, D) a plan predicts.
REPEAT_FACTOR, NOVEL_FACTOR = 0.8, 1.2


def write_trainable_sweep(runs_dir: Path, corpus: Path, timing: bool = True, wsd: bool = False,
                          sparse: dict[tuple[int, int], tuple[float, ...]] | None = None,
                          objective: str = "clm") -> Path:
    """Six runs of SHAPES with synthetic losses, compress.jsonl (magnitude, int8) and fit.json; with ``wsd``,
    the runs say they trained WSD trunks with cooldown branches (the losses are the same); ``sparse``:
    {(width, depth): sparsities} of runs trained sparse from init beside those shapes (write_sparse_twins);
    ``objective``: the runs' (mlm: RoBERTa-style encoders, so plans made from them train encoders)."""
    from tlc.train.data import load_corpus

    shapes = [ModelShape(w, d, w // 32, **TEMPLATE, objective=objective) for w, d in SHAPES]
    counts = [param_counts(s) for s in shapes]
    fingerprint = load_corpus(str(corpus)).fingerprint  # the runs "trained" on it: plan and validate check it
    sweep = synthetic_sweep(n_runs=len(SHAPES), points_per_run=8, noise=0.002, seed=2, methods=("magnitude",),
                            min_params=counts[0].non_embedding, max_params=counts[-1].non_embedding,
                            tokens_per_param=0.5, truth=TRUTH)
    for shape, pc, run in zip(shapes, counts, sweep.runs):
        run_dir = runs_dir / f"w{shape.width}-d{shape.depth}-s0"
        (run_dir / "model").mkdir(parents=True)
        fpt = flops_per_token(shape)
        config = {
            "run_id": run_dir.name, "shape": {**shape.__dict__},
            "train": {**TRAIN, **(WSD if wsd else {}), "tokens": int(run.tokens[-1]), "flops": None,
                      "lr": 4.2e-3 * (32 / shape.width) ** 0.5},
            "data": {"source": str(corpus), "val_percent": 5.0, "text_field": "text", "fingerprint": fingerprint,
                     "train_tokens_available": UNIQUE_TOKENS},
            "seed": 0, "params": {"total": pc.total, "non_embedding": pc.non_embedding, "embedding": pc.embedding},
            "flops_per_token": fpt, "world_size": 1, "train_tokens": int(run.tokens[-1]),
            "train_flops": float(run.tokens[-1] * fpt),
        }
        atomic_write_json(run_dir / "config.json", config)
        (run_dir / "model" / "config.json").write_text("{}")
        rows = [{"step": i + 1, "tokens": float(t), "flops": float(t * fpt), "val_loss": float(loss),
                 "val_bpb": float(loss) / 2.08, "val_acc": 0.1,
                 # half the targets seen earlier in their window, at REPEAT_FACTOR of the loss; the rest at NOVEL_FACTOR
                 "val_loss_repeat": REPEAT_FACTOR * float(loss), "val_loss_novel": NOVEL_FACTOR * float(loss),
                 "val_repeat_share": 0.5,
                 "final": i >= len(run.tokens) - 4,  # the law's own losses: finished-run points, as branch ends are
                 **({"wall_s": wall_seconds(t, fpt)} if timing else {})}
                for i, (t, loss) in enumerate(zip(run.tokens, run.val_loss))]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines = [{"method": "none", "sparsity": 0.0, "bits": 32, "val_loss": run.final_loss}]
        lines += [{"method": v.method, "sparsity": v.sparsity, "bits": v.bits, "val_loss": v.val_loss,
                   "block": None, "recovery_steps": 0}
                  for v in sweep.variants if v.run_id == run.run_id]
        for line in lines:
            nonzeros = pc.embedding + (1 - line["sparsity"]) * pc.non_embedding
            bitmask = 0.0 if line["sparsity"] == 0 else pc.total / 8
            line.update(nonzeros=nonzeros, bytes=nonzeros * (1 if line["bits"] == 8 else 4) + bitmask,
                        latency_ms_b1=1e-3 * (pc.total / 1e4) ** 0.7, device="cpu")
        (run_dir / "compress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if sparse and (shape.width, shape.depth) in sparse:
            write_sparse_twins(run_dir, sparse[(shape.width, shape.depth)])
    from tlc.fit.observations import fit_sweep

    atomic_write_json(runs_dir / "fit.json", fit_sweep(runs_dir, bootstrap=20, seed=0, size="non_embedding"))  # the law's N
    return runs_dir
