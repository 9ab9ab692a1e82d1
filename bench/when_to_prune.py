"""When to prune, and whether the methods agree: at initialization, during training, after, or by lottery tickets.

Trains every run of ``sweeps/when_to_prune.yaml`` (dense; pruned at init by SNIP, SynFlow, GraSP, random
and the layer-wise shuffles of SNIP, SynFlow and GraSP; gradual magnitude pruning during training; and
iterative magnitude pruning with rewinding, IMP, rewound to step k and to initialization), then the
"after" arm: for each shape and seed a dense run shortened by the tokens of compress's recovery
fine-tune, pruned by tlc compress's gradual method at each sparsity. Every arm but IMP spends the same
training FLOPs (sparse runs counted dense: they run on dense kernels); IMP spends 1 + R·(1 − rewind)
trainings, and the table shows them. Then compares every pair of masks of the same shape, seed and
sparsity (Jaccard per layer and overall, against the random reference density/(2 − density)), with
"after: magnitude" the one-shot global magnitude mask of the dense run's final weights. Prints each
arm's gap to the dense run of its seed, averaged over seeds with the seeds' range, and writes
``<runs>/when_to_prune.json`` (atomically) for ``tlc report``. Resumable: finished runs are skipped.

    python bench/when_to_prune.py                         # the sweep file as it is
    python bench/when_to_prune.py --seeds 0 & python bench/when_to_prune.py --seeds 1   # two processes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import time
from pathlib import Path

import torch

from cuda_ext.crossover import cpu_model
from tlc.compress.overlap import masks_from_weights, overlap_pairs
from tlc.compress.pipeline import compress_run
from tlc.compress.prune import prunable_layers, weight_out_in
from tlc.compress.variants import CompressSettings
from tlc.config import RunConfig, SweepConfig, load_sweep
from tlc.io import atomic_write_json, is_complete
from tlc.shapes import flops_per_token
from tlc.train.loop import train_run
from tlc.train.lottery import LOTTERY_FILE, ROUNDS_DIR, imp_masks, round_weights
from tlc.train.model import build_model

REPO = Path(__file__).resolve().parents[1]
RECOVERY_STEPS = 40  # compress's gradual fine-tune, in steps of micro_batch sequences


def arm(cfg: RunConfig) -> tuple[str, str]:
    """(timing, method label) of a sweep run: imp is labelled by its rewind point, e.g. imp-k5."""
    prune = cfg.train.prune
    if prune is None:
        return "dense", "none"
    if prune.method == "imp":
        return "lottery", f"imp-k{100 * prune.rewind:g}"
    return ("init" if prune.at_init else "during"), prune.method


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _share_round_zero(runs_dir: Path, cfg: RunConfig, runs: list[RunConfig]) -> None:
    """IMP rewound to 0 trains the same dense round 0 as IMP rewound to k (same seed, data, schedule): copy it."""
    prune = cfg.train.prune
    target = runs_dir / cfg.run_id / ROUNDS_DIR / "r0"
    if prune is None or prune.method != "imp" or prune.rewind != 0 or is_complete(target):
        return
    for other in runs:
        p = other.train.prune
        if (p is not None and p.method == "imp" and p.rewind > 0 and other.shape == cfg.shape and other.seed == cfg.seed
                and (p.sparsity, p.rounds) == (prune.sparsity, prune.rounds)
                and is_complete(runs_dir / other.run_id / ROUNDS_DIR / "r0")):
            tmp = target.with_name(".r0.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(runs_dir / other.run_id / ROUNDS_DIR / "r0", tmp, ignore=shutil.ignore_patterns(".lock"))
            tmp.rename(target)
            return


def _final_masks(run_dir: Path, cfg: RunConfig) -> dict[str, torch.Tensor]:
    layers = prunable_layers(build_model(cfg.shape, seed=cfg.seed))
    return masks_from_weights(round_weights(run_dir, layers))


def run_study(sweep: SweepConfig, runs_dir: Path, arms: set[str], seeds: set[int] | None = None,
              recovery_steps: int = RECOVERY_STEPS, log=print) -> dict:
    """Train what ``arms`` names (sweep, after) for ``seeds`` (default all) and compare every finished arm."""
    runs = [c for c in sweep.runs() if seeds is None or c.seed in seeds]
    rows, masks, imp_rounds = [], {}, []
    for cfg in runs:
        run_dir = runs_dir / cfg.run_id
        if "sweep" not in arms and not is_complete(run_dir):
            continue
        _share_round_zero(runs_dir, cfg, runs)
        last = train_run(cfg, run_dir, progress=False)
        config = json.loads((run_dir / "config.json").read_text())
        timing, label = arm(cfg)
        prune = cfg.train.prune
        group = (cfg.shape.run_id(0).rsplit("-", 1)[0], prune.sparsity if prune else 0.0, cfg.seed)
        rows.append({"run_id": cfg.run_id, "shape": group[0], "seed": cfg.seed, "timing": timing, "method": label,
                     "sparsity": group[1], "train_flops": config["train_flops"], "val_loss": last["val_loss"],
                     "achieved_sparsity": last.get("sparsity", 0.0)})
        if prune is not None:
            masks.setdefault(group, {})[f"{timing}: {label}"] = _final_masks(run_dir, cfg)
        if prune is not None and prune.method == "imp":
            lottery = json.loads((run_dir / LOTTERY_FILE).read_text())
            imp_rounds.append({"run_id": cfg.run_id, "shape": group[0], "seed": cfg.seed, "method": label,
                               "rewind_step": lottery["rewind_step"], "rounds": lottery["rounds"]})
        log(f"{cfg.run_id:<34} {timing:<8} val_loss {last['val_loss']:.4f}")

    # -- after training: one-shot global magnitude (mask only), and a dense run shortened by the fine-tune's
    # tokens then compress's gradual method -------------------------------------------------------------
    sparsities = sorted({c.train.prune.sparsity for c in runs if c.train.prune is not None})
    for cfg in [c for c in runs if c.train.prune is None]:
        dense_dir = runs_dir / cfg.run_id
        if not is_complete(dense_dir):
            continue
        layers = prunable_layers(build_model(cfg.shape, seed=cfg.seed))
        weights = round_weights(dense_dir, layers)
        ones = {name: torch.ones_like(weight_out_in(m), dtype=torch.bool) for name, m in layers.items()}
        for s in sparsities:
            group = (cfg.shape.run_id(0).rsplit("-", 1)[0], s, cfg.seed)
            masks.setdefault(group, {})["after: magnitude"] = imp_masks(weights, ones, s)
        if "after" not in arms:
            continue
        recovery_tokens = recovery_steps * cfg.train.micro_batch * cfg.shape.context
        short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tokens=cfg.train.tokens - recovery_tokens))
        short_dir = runs_dir / "after" / f"{cfg.run_id}-after"  # not a direct subfolder: never a sweep run
        train_run(short, short_dir, progress=False)
        config = json.loads((short_dir / "config.json").read_text())
        fine_tune_flops = recovery_tokens * flops_per_token(cfg.shape)
        variants = compress_run(short_dir, CompressSettings(methods=("gradual",), sparsities=tuple(sparsities),
                                                            int8=False, recovery_steps=recovery_steps,
                                                            latency_repeats=1), log=lambda line: None)
        for v in (v for v in variants if v["method"] == "gradual"):
            rows.append({"run_id": short_dir.name, "shape": cfg.shape.run_id(0).rsplit("-", 1)[0], "seed": cfg.seed,
                         "timing": "after", "method": "gradual", "sparsity": v["target_sparsity"],
                         "train_flops": config["train_flops"] + fine_tune_flops, "val_loss": v["val_loss"],
                         "achieved_sparsity": v["sparsity"]})
            log(f"{short_dir.name + '-gradual' + str(round(100 * v['target_sparsity'])):<34} after    "
                f"val_loss {v['val_loss']:.4f}")

    overlap = []
    for (shape, sparsity, seed), by_arm in sorted(masks.items()):
        overlap.extend({"shape": shape, "sparsity": sparsity, "seed": seed, **pair} for pair in overlap_pairs(by_arm))
    return {"sweep": sweep.name, "rows": rows, "imp_rounds": imp_rounds, "overlap": overlap,
            "summary": summarize(rows), "overlap_mean": mean_overlap(overlap), "recovery_steps": recovery_steps,
            "flops_note": "sparse runs counted dense (they run on dense kernels); imp counts every round"}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "seeds": len(values)}


def summarize(rows: list[dict]) -> list[dict]:
    """Each arm's gap to the dense run of its own seed, over seeds: mean, min, max; and its FLOPs per dense run."""
    dense = {(r["shape"], r["seed"]): r for r in rows if r["timing"] == "dense"}
    arms: dict[tuple, list[dict]] = {}
    for r in rows:
        if (r["shape"], r["seed"]) in dense:
            arms.setdefault((r["shape"], r["sparsity"], r["timing"], r["method"]), []).append(r)
    out = []
    for (shape, sparsity, timing, method), group in sorted(arms.items()):
        gaps = [r["val_loss"] - dense[(r["shape"], r["seed"])]["val_loss"] for r in group]
        flops = [r["train_flops"] / dense[(r["shape"], r["seed"])]["train_flops"] for r in group]
        out.append({"shape": shape, "sparsity": sparsity, "timing": timing, "method": method,
                    "val_loss": _spread([r["val_loss"] for r in group]), "gap": _spread(gaps),
                    "flops_per_dense_run": statistics.fmean(flops)})
    return out


def mean_overlap(overlap: list[dict]) -> list[dict]:
    """Each pair's overall Jaccard index over seeds (mean, min, max), with the references' means."""
    pairs: dict[tuple, list[dict]] = {}
    for o in overlap:
        pairs.setdefault((o["shape"], o["sparsity"], o["a"], o["b"]), []).append(o)
    return [{"shape": k[0], "sparsity": k[1], "a": k[2], "b": k[3], "jaccard": _spread([o["jaccard"] for o in g]),
             "random_reference": statistics.fmean(o["random_reference"] for o in g),
             "layerwise_reference": statistics.fmean(o["layerwise_reference"] for o in g)}
            for k, g in sorted(pairs.items())]


def print_tables(result: dict, log=print) -> None:
    log(f"\n{'shape':<8} {'sparsity':>8} {'timing':<8} {'method':<16} {'val_loss':>8} {'gap to dense (seeds min..max)':>32}"
        f" {'FLOPs/dense':>11}")
    for s in sorted(result["summary"], key=lambda s: (s["shape"], s["sparsity"], s["gap"]["mean"])):
        g = s["gap"]
        log(f"{s['shape']:<8} {s['sparsity']:>8.2f} {s['timing']:<8} {s['method']:<16} {s['val_loss']['mean']:>8.4f} "
            f"{g['mean']:>+10.4f} ({g['min']:+.4f}..{g['max']:+.4f}, {g['seeds']} seeds) {s['flops_per_dense_run']:>11.2f}")
    for imp in result["imp_rounds"]:
        losses = ", ".join(f"r{r['round']} {r['sparsity']:.2f}: {r['val_loss']:.4f}" for r in imp["rounds"])
        log(f"{imp['shape']}-s{imp['seed']} {imp['method']} (rewind step {imp['rewind_step']}): {losses}")
    log(f"\n{'mask A':<24} {'mask B':<24} {'Jaccard (seeds min..max)':>28} {'random':>7} {'layer-wise':>10}")
    for o in sorted(result["overlap_mean"], key=lambda o: -o["jaccard"]["mean"]):
        j = o["jaccard"]
        log(f"{o['a']:<24} {o['b']:<24} {j['mean']:>10.3f} ({j['min']:.3f}..{j['max']:.3f}) "
            f"{o['random_reference']:>12.3f} {o['layerwise_reference']:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "when_to_prune.yaml")
    parser.add_argument("--runs", type=Path, default=None, help="default runs/<sweep name>")
    parser.add_argument("--arms", default="sweep,after",
                        help="what to train: the sweep's runs, the after arm, or both (two processes can split them); "
                             "the table covers every finished arm")
    parser.add_argument("--seeds", default=None, help="train only these seeds (comma-separated), e.g. one per process")
    args = parser.parse_args()
    sweep = load_sweep(args.sweep)
    seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    runs_dir = args.runs or Path("runs") / sweep.name
    started, cpu_before, load_before = time.perf_counter(), cpu_seconds(), os.getloadavg()
    result = run_study(sweep, runs_dir, set(args.arms.split(",")), seeds)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    if not result["summary"]:
        print("the dense runs are not trained yet; no table")
        return
    print_tables(result)
    print(f"\nwall {wall:.0f} s, CPU {cpu:.0f} s (user+sys, this process and its children); load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {cpu_model()}")
    result.update(wall_s=round(wall, 1), cpu_s=round(cpu, 1), machine=cpu_model())
    if seeds is None:  # a process that trained a share of the seeds leaves the file to the one that covers all
        atomic_write_json(runs_dir / "when_to_prune.json", result)


if __name__ == "__main__":
    main()
