"""A synthetic sweep directory with every stage's files, for report tests (no training needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tlc.io import atomic_write_json

LAW = {"E": 1.8, "A": 60.0, "B": 400.0, "alpha": 0.3, "beta": 0.35}
SHAPES = [(32, 2), (48, 2), (64, 2), (64, 4), (96, 4)]


def write_synthetic_sweep(sweep_dir: Path, with_fit: bool = True, with_compress: bool = True,
                          with_plan: bool = True, run_id_prefix: str = "") -> Path:
    """Runs whose losses follow LAW, compression rows, and (optionally) fit.json and plan.json."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for width, depth in SHAPES:
        n = 12 * depth * width * width
        run_id = f"{run_id_prefix}w{width}-d{depth}-s0"
        run = sweep_dir / run_id
        (run / "model").mkdir(parents=True, exist_ok=True)
        (run / "model" / "config.json").write_text("{}")
        fpt = 6.0 * n + 6.0 * 1024 * width
        atomic_write_json(run / "config.json", {"run_id": run_id, "params": {"non_embedding": n, "total": n + 1024 * width},
                                                "flops_per_token": fpt, "shape": {"width": width, "depth": depth}})
        lines = []
        for step in (1, 3, 10, 30, 100, 300):
            tokens = step * 4096
            loss = LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / tokens ** LAW["beta"]
            lines.append({"step": step, "tokens": tokens, "flops": tokens * fpt, "wall_s": step * 0.01 * depth,
                          "train_loss": loss + 0.02, "val_loss": loss, "val_bpb": loss / math.log(2) / 3.2,
                          "val_acc": max(0.0, 0.6 - 0.1 * loss), "lr": 1e-3})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if with_compress:
            final = lines[-1]["val_loss"]
            rows = [{"variant": "dense", "method": "none", "sparsity": 0.0, "bits": 32, "nonzeros": n, "bytes": 4 * n,
                     "val_loss": final, "loss_by_freq_bucket": [final - 1, final - 0.5, final, final + 0.5, final + 1]}]
            for method, scale in (("magnitude", 1.0), ("block", 1.6), ("gradual", 0.5)):
                for s in (0.5, 0.9):
                    for bits in (32, 8):
                        delta = scale * 0.05 * (s / (1 - s)) ** 0.8 * (1e5 / n) ** 0.3 + (0.01 if bits == 8 else 0)
                        nz = int(n * (1 - s))
                        rows.append({"variant": f"{method}-{s}-{bits}", "method": method, "sparsity": s, "bits": bits,
                                     "nonzeros": nz, "bytes": nz * (bits // 8 + 2), "val_loss": final + delta,
                                     "loss_by_freq_bucket": [final - 1 + delta / 2, final - 0.5 + delta, final + delta,
                                                             final + 0.5 + 2 * delta, final + 1 + 3 * delta]})
            (run / "compress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_fit:
        from tlc.fit.observations import fit_sweep

        atomic_write_json(sweep_dir / "fit.json", fit_sweep(sweep_dir, bootstrap=20, seed=0, all_points=True,
                                                                size="non_embedding"))
    if with_plan:  # written by tlc plan itself, as a user's would be
        import contextlib
        import io

        from tlc.plan import command as tlc_plan

        with contextlib.redirect_stdout(io.StringIO()):
            assert tlc_plan.main(["--runs", str(sweep_dir), "--budget", "1e15", "--max-params", "60k"]) == 0
    return sweep_dir
