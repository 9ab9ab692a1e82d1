"""How much each trained model copies from its context, beside its validation loss.

The planner's law is smooth in N and D; a model that learns a new skill partway through
training leaves it behind. The skill measured here is in-context copying, the job of the
"induction heads" that Olsson et al. 2022 ("In-context Learning and Induction Heads") saw form
abruptly in models of two layers and more: each model reads sequences of uniformly random tokens
written twice (64 tokens, then the same 64 again), and the copy gain is its mean loss on the
first copy minus its mean loss on the second. A model that cannot look back scores about 0
(random tokens are unpredictable the first time); one that copies perfectly gains several nats.

For every model a runs folder holds (each run's final model, every cooldown branch end and
every `tlc validate` run), it prints the run, parameters, tokens, final validation loss and
copy gain, in order of tokens per run. It then splits each model's validation loss by target
token: those that already occurred earlier in the window (what copying can predict) and those
that did not, on --val-windows fixed windows of the run's own validation split. Run it on a sweep
beside its validations to see whether losses that fell faster than the plan predicted came with
a jump in copying, and on which tokens the loss fell.

    .venv/bin/python bench/copying.py RUNS_DIR [--sequences 64] [--length 64] [--val-windows 512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tlc.io import list_runs, read_jsonl
from tlc.train.data import load_corpus, load_tokens, val_offsets
from tlc.train.evaluation import evaluate

FIRST_TOKEN = 10  # leave out the low ids (byte-level specials and the end-of-text token)


def models(runs_dir: Path) -> list[tuple[str, int, int, Path, float, dict]]:
    """(run, parameters, tokens, model folder, final validation loss, run config) of every finished-run
    point under ``runs_dir`` whose model was kept: a cosine run's end and each cooldown branch's end."""
    found = []
    for run in list_runs(runs_dir) + list_runs(runs_dir / "validation"):
        config = json.loads((run / "config.json").read_text())
        rows = read_jsonl(run / "metrics.jsonl")
        # by tokens, so that a point logged twice (a resumed run) counts once; runs from before points were
        # marked final have their last evaluation as the one
        finished = {row["tokens"]: row for row in [r for r in rows if r.get("final")] or rows[-1:]}
        for tokens, row in sorted(finished.items()):
            branch = run / "branches" / str(tokens) / "model"
            model = branch if branch.is_dir() else run / "model"
            if model.is_dir():
                found.append((str(run.relative_to(runs_dir)), config["params"]["total"], tokens, model,
                              row["val_loss"], config))
    return found


def copy_gain(model, sequences: int, length: int) -> float:
    """Mean loss on the first copy of random token sequences minus the mean loss on the second copy."""
    vocab = model.config.vocab_size
    if 2 * length > model.config.n_positions:
        raise SystemExit(f"--length {length}: two copies need {2 * length} positions; the model has "
                         f"{model.config.n_positions}")
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(FIRST_TOKEN, vocab, (sequences, length), generator=generator)
    tokens = torch.cat([first, first], dim=1)
    with torch.no_grad():
        logits = model(tokens).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="none")
    loss = loss.view(sequences, -1)
    # position t predicts token t + 1: the first copy's predictions are 0..length-2, the second's length..
    return float(loss[:, : length - 1].mean() - loss[:, length:].mean())


def validation_data(config: dict, cache: dict):
    """The run's tokenized corpus (tlc.train.data.TokenData), loaded once per corpus and vocabulary."""
    data, shape = config["data"], config["shape"]
    key = (data["source"], data["val_percent"], data["text_field"], shape["vocab_size"])
    if key not in cache:
        corpus = load_corpus(data["source"], data["val_percent"], data["text_field"])
        if corpus.fingerprint != data["fingerprint"]:
            raise SystemExit(f"{data['source']}: the corpus changed since the run trained on it")
        cache[key] = load_tokens(corpus, shape["vocab_size"])
    return cache[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--sequences", type=int, default=64, help="random sequences per model (default 64)")
    parser.add_argument("--length", type=int, default=64, help="tokens per copy (default 64; two copies must fit "
                        "the model's context)")
    parser.add_argument("--val-windows", type=int, default=512, help="validation windows for the split by "
                        "repetition (default 512)")
    args = parser.parse_args()
    if not args.runs_dir.is_dir():
        raise SystemExit(f"RUNS_DIR: {args.runs_dir} is not a folder")
    if args.sequences < 1 or args.length < 2 or args.val_windows < 1:
        raise SystemExit("--sequences and --val-windows must be at least 1, --length at least 2")
    torch.set_num_threads(os.cpu_count() or 1)
    found = models(args.runs_dir)
    if not found:
        raise SystemExit(f"RUNS_DIR: no trained models under {args.runs_dir}")
    print(f"# {args.runs_dir}: {len(found)} models; {args.sequences} random sequences of {args.length} tokens, "
          "written twice", flush=True)
    print("| run | parameters | tokens | val loss | copy gain (nats) | loss on targets seen earlier in the window "
          "| on new targets |\n| --- | --- | --- | --- | --- | --- | --- |")
    cache: dict = {}
    for name, params, tokens, model_dir, loss, config in sorted(found, key=lambda m: (m[0], m[2])):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
        gain = copy_gain(model, args.sequences, args.length)
        data, context = validation_data(config, cache), config["shape"]["context"]
        offsets = val_offsets(len(data.val), context, args.val_windows * context)
        split = evaluate(model, data, offsets, context, 64, "cpu")
        repeat, share, novel = split["val_loss_repeat"], split["val_repeat_share"], split["val_loss_novel"]
        print(f"| {name} | {params:,} | {tokens / 1e6:.2f}M | {loss:.3f} | {gain:+.3f} | {repeat:.3f} ({share:.0%} of "
              f"targets) | {novel:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
