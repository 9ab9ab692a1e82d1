"""When to prune, at equal training compute: at initialization, during training, or after.

Trains every run of ``sweeps/when_to_prune.yaml`` (dense, pruned at init by SNIP, SynFlow, random
and the layer-wise shuffles of SNIP and SynFlow, and gradual magnitude pruning during training),
then the "after" arm: for each shape a dense run shortened by the tokens of compress's recovery
fine-tune, pruned by tlc compress's gradual method at each sparsity. Every arm spends the same
training FLOPs (sparse runs counted dense: they run on dense kernels). Prints final validation
loss side by side with each arm's gap to the dense run, and writes ``<runs>/when_to_prune.json``
(atomically) for ``tlc report``. Resumable: finished runs and variants are skipped.

    python bench/when_to_prune.py                         # the sweep file as it is
    python bench/when_to_prune.py --runs runs/when_to_prune
"""

from __future__ import annotations

import argparse
import json
import dataclasses
import os
import platform
import time
from pathlib import Path

from tlc.compress.pipeline import compress_run
from tlc.compress.variants import CompressSettings
from tlc.config import RunConfig, load_sweep
from tlc.io import atomic_write_json
from tlc.shapes import flops_per_token
from tlc.train.loop import train_run

REPO = Path(__file__).resolve().parents[1]
RECOVERY_STEPS = 40  # compress's gradual fine-tune, in steps of micro_batch sequences


def timing(cfg: RunConfig) -> str:
    if cfg.train.prune is None:
        return "dense"
    return "init" if cfg.train.prune.at_init else "during"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "when_to_prune.yaml")
    parser.add_argument("--runs", type=Path, default=None, help="default runs/<sweep name>")
    parser.add_argument("--arms", default="sweep,after",
                        help="what to train: the sweep's runs, the after arm, or both (two processes can split them); "
                             "the table covers every finished arm")
    args = parser.parse_args()
    arms = set(args.arms.split(","))
    sweep = load_sweep(args.sweep)
    runs_dir = args.runs or Path("runs") / sweep.name
    started = time.perf_counter()
    load_before = os.getloadavg()
    rows = []
    for cfg in sweep.runs():
        if "sweep" not in arms and not (runs_dir / cfg.run_id / "model").exists():
            continue
        last = train_run(cfg, runs_dir / cfg.run_id, progress=False)
        config = json.loads((runs_dir / cfg.run_id / "config.json").read_text())
        prune = cfg.train.prune
        rows.append({"run_id": cfg.run_id, "shape": cfg.shape.run_id(cfg.seed), "timing": timing(cfg),
                     "method": prune.method if prune else "none", "sparsity": prune.sparsity if prune else 0.0,
                     "train_flops": config["train_flops"], "val_loss": last["val_loss"],
                     "achieved_sparsity": last.get("sparsity", 0.0)})
        print(f"{cfg.run_id:<32} {rows[-1]['timing']:<7} val_loss {last['val_loss']:.4f}", flush=True)

    # -- after training: a dense run shortened by the fine-tune's tokens, then compress's gradual method --
    sparsities = sorted({c.train.prune.sparsity for c in sweep.runs() if c.train.prune is not None})
    dense_runs = [c for c in sweep.runs() if c.train.prune is None]
    for cfg in dense_runs if "after" in arms else []:
        recovery_tokens = RECOVERY_STEPS * cfg.train.micro_batch * cfg.shape.context
        short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tokens=cfg.train.tokens - recovery_tokens))
        short_dir = runs_dir / "after" / f"{cfg.run_id}-after"  # not a direct subfolder: never a sweep run
        train_run(short, short_dir, progress=False)
        config = json.loads((short_dir / "config.json").read_text())
        fine_tune_flops = recovery_tokens * flops_per_token(cfg.shape)
        variants = compress_run(short_dir, CompressSettings(methods=("gradual",), sparsities=tuple(sparsities),
                                                            int8=False, recovery_steps=RECOVERY_STEPS,
                                                            latency_repeats=1), log=lambda line: None)
        for v in variants:
            if v["method"] != "gradual":
                continue
            rows.append({"run_id": short_dir.name, "shape": cfg.shape.run_id(cfg.seed), "timing": "after",
                         "method": "gradual", "sparsity": v["target_sparsity"],
                         "train_flops": config["train_flops"] + fine_tune_flops, "val_loss": v["val_loss"],
                         "achieved_sparsity": v["sparsity"]})
            print(f"{short_dir.name + '-gradual' + str(round(100 * v['target_sparsity'])):<32} after   "
                  f"val_loss {v['val_loss']:.4f}", flush=True)
    wall = time.perf_counter() - started

    # -- the table: each arm's loss and its gap to the dense run of the same shape ------------------------
    dense = {r["shape"]: r["val_loss"] for r in rows if r["timing"] == "dense"}
    if not rows or any(r["shape"] not in dense for r in rows):
        print("the dense runs are not trained yet; no table")
        return
    print(f"\n{'shape':<10} {'sparsity':>8} {'timing':<7} {'method':<16} {'val_loss':>8} {'vs dense':>9} {'FLOPs':>10}")
    for r in sorted(rows, key=lambda r: (r["shape"], r["sparsity"], r["val_loss"])):
        print(f"{r['shape']:<10} {r['sparsity']:>8.2f} {r['timing']:<7} {r['method']:<16} {r['val_loss']:>8.4f} "
              f"{r['val_loss'] - dense[r['shape']]:>+9.4f} {r['train_flops']:>10.3g}")
    print(f"\nwall {wall:.0f} s; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {cpu_model()}")
    atomic_write_json(runs_dir / "when_to_prune.json", {
        "sweep": sweep.name, "rows": rows, "recovery_steps": RECOVERY_STEPS, "wall_s": round(wall, 1),
        "machine": cpu_model(), "flops_note": "sparse runs counted dense (they run on dense kernels)",
    })


if __name__ == "__main__":
    main()
