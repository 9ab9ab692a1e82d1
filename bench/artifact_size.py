"""Predicted artifact bytes (tlc/artifact.py, from the shape alone) against what `tlc compress`'s store writes.

Builds GPT-2 and Llama shapes, prunes them (magnitude, block), saves each variant in 32 and 8
bits with the real store, and prints measured bytes, predicted bytes and their ratio side by
side. The prediction is an upper bound: every ratio must be >= 1.

    .venv/bin/python bench/artifact_size.py
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlc.artifact import artifact_size  # noqa: E402
from tlc.compress.prune import PATTERNS, apply_masks  # noqa: E402
from tlc.compress.store import save_variant  # noqa: E402
from tlc.config import ModelShape  # noqa: E402
from tlc.train.model import build_model  # noqa: E402

SHAPES = [ModelShape(64, 2, 2, 64, 512, "gpt2"), ModelShape(128, 4, 4, 128, 1024, "gpt2"),
          ModelShape(128, 2, 4, 128, 1024, "llama")]
CASES = [("none", 0.0, "dense"), ("magnitude", 0.5, "bitmask"), ("magnitude", 0.9, "bitmask"), ("block", 0.5, "bsr")]


def main() -> None:
    print(f"{'shape':<18}{'variant':<18}{'bits':>5}{'measured':>11}{'predicted':>11}{'ratio':>9}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            model = build_model(shape, eot_id=0, seed=0)
            for method, sparsity, kind in CASES:
                pruned = copy.deepcopy(model)
                if method != "none":
                    apply_masks(pruned, PATTERNS[method](pruned, sparsity, None, block_size=32))
                for bits in (32, 8):
                    folder = Path(tmp) / f"{shape.arch}{shape.width}{method}{sparsity}{bits}"
                    saved = save_variant(folder, pruned, kind, 32, bits, "torch_dynamic" if bits == 8 else None, {})
                    predicted = artifact_size(shape, method, sparsity, bits == 8, 32).bytes
                    ratio = predicted / saved["bytes"]
                    worst = max(worst, ratio)
                    name = f"{shape.arch} w{shape.width} d{shape.depth}"
                    print(f"{name:<18}{method + f' {sparsity:g}':<18}{bits:>5}{saved['bytes']:>11}{predicted:>11}"
                          f"{ratio:>9.5f}")
    print(f"largest predicted/measured: {worst:.5f} (>= 1 everywhere: the prediction is an upper bound)")


if __name__ == "__main__":
    main()
