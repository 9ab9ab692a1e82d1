"""Where a demo trainer's time goes: each shape of a sweep, one thread, by thread CPU time.

For every shape of the sweep (default: the demo's ``sweeps/tiny.yaml``), the training step as
``tlc train`` runs it (DeepSpeed engine, the run's micro-batch, AdamW, gradient clipping) is timed
in parts: the forward and backward alone, the engine's optimizer step, and the whole step with data
and bookkeeping; then one evaluation over the run's validation windows. Each is thread CPU time per
call (median of rounds that alternate between the parts), so a loaded machine inflates none of them
much. FLOP/s are the analytic training FLOPs (``tlc.shapes.flops_per_token``) over the whole step's
CPU time, and are judged against this core's FMA peak given with ``--fma-peak`` (GFLOP/s of
``bench/fma_peak.c``: ``gcc -O2 -mavx512f bench/fma_peak.c -o /tmp/fma && /tmp/fma``).

    OMP_NUM_THREADS=1 python bench/train_speed.py --fma-peak 117
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def thread_s() -> float:
    return time.thread_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "tiny.yaml")
    parser.add_argument("--fma-peak", type=float, default=None, help="GFLOP/s of bench/fma_peak.c on this core")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per part and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=None, help="override the sweep's micro-batch")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="override the sweep's precision")
    parser.add_argument("--shapes", default=None, help="comma-separated widths to time (default: all)")
    args = parser.parse_args()

    import dataclasses

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from tlc.config import load_sweep
    from tlc.shapes import flops_per_token
    from tlc.train.data import load_corpus, load_tokens, train_offsets, val_offsets, windows
    from tlc.train.engine import build_engine, init_distributed
    from tlc.train.evaluation import evaluate, lm_loss
    from tlc.train.model import build_model

    sweep = load_sweep(args.sweep)
    deepspeed, _, _ = init_distributed()
    corpus = load_corpus(sweep.data.source, sweep.data.val_percent, sweep.data.text_field)
    seen = set()
    print(f"# {args.sweep.name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), thread CPU time, "
          f"median of {args.rounds} rounds x {args.steps} steps; load average {os.getloadavg()[0]:.1f}")
    print("| shape | micro-batch | tokens/step | fwd+bwd ms | optimizer step ms | whole step ms | tokens/CPU-s "
          "| GFLOP/s | of FMA peak | evaluation ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in sweep.runs():
        shape = run.shape
        if shape.width in seen or (args.shapes and str(shape.width) not in args.shapes.split(",")):
            continue
        seen.add(shape.width)
        train = run.train if args.micro_batch is None else dataclasses.replace(run.train, micro_batch=args.micro_batch)
        if args.precision is not None:
            train = dataclasses.replace(train, precision=args.precision)
        tokens = load_tokens(corpus, shape.vocab_size)
        model = build_model(shape, eot_id=tokens.eot_id, seed=0)
        engine, optimizer = build_engine(deepspeed, model, train, train.micro_batch * train.grad_accum)
        engine.train()
        mb, ctx = train.micro_batch, shape.context
        fpt = flops_per_token(shape)

        def batch(step):
            offsets = train_offsets(len(tokens.train), ctx, mb, 0, step)
            return torch.from_numpy(windows(tokens.train, offsets, ctx))

        fixed = batch(0)

        def fwd_bwd():
            loss, _ = lm_loss(engine, fixed)
            engine.backward(loss)
            return loss

        def opt_step():
            engine.step()

        def whole(step):
            for group in optimizer.param_groups:
                group["lr"] = 1e-3
            loss, _ = lm_loss(engine, batch(step))
            engine.backward(loss)
            engine.step()
            return loss.detach().double().item()

        for s in range(5):  # warm-up
            whole(s)
        parts = {"fwd_bwd": [], "opt": [], "whole": []}
        for r in range(args.rounds):
            t0 = thread_s()
            for _ in range(args.steps):
                fwd_bwd()
                engine.optimizer.zero_grad()
            parts["fwd_bwd"].append((thread_s() - t0) / args.steps)
            t0 = thread_s()
            for _ in range(args.steps):
                fwd_bwd()
                opt_step()
            parts["opt"].append((thread_s() - t0) / args.steps - parts["fwd_bwd"][-1])
            t0 = thread_s()
            for s in range(args.steps):
                whole(1000 + r * args.steps + s)
            parts["whole"].append((thread_s() - t0) / args.steps)
        med = {k: statistics.median(v) for k, v in parts.items()}
        val = val_offsets(len(tokens.val), ctx, train.eval_tokens)
        t0 = thread_s()
        evaluate(engine.module, tokens, val, ctx, train.micro_batch, torch.device("cpu"))
        eval_s = thread_s() - t0
        tps = mb * ctx / med["whole"]
        gflops = tps * fpt / 1e9
        peak = f"{gflops / args.fma_peak:.1%}" if args.fma_peak else "-"
        print(f"| w{shape.width}-d{shape.depth} {train.precision} | {mb} | {mb * ctx} | {med['fwd_bwd'] * 1e3:.2f} | {med['opt'] * 1e3:.2f} "
              f"| {med['whole'] * 1e3:.2f} | {tps:,.0f} | {gflops:.1f} | {peak} | {eval_s * 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
