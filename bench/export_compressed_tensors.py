"""``tlc export --format compressed-tensors`` on each kind of variant of one compressed run, side by side.

    .venv/bin/python bench/export_compressed_tensors.py RUN [VARIANT ...]

For each variant (default: dense, none-int8, magnitude-s50, magnitude-s50-int8, 2of4-s50, rtn-w4g32,
gptq-w4g32, gptq-w8g32, those the run has): export seconds; bytes of the export's model.safetensors and of
tlc's (compress.jsonl "bytes"), and their ratio; the bytes of the quantized matrices alone (packed codes
and scales) against tlc's encoding of the same matrices (codes, scales and, when pruned, bitmask and values);
export seconds are in-process (the first export of a process also pays its imports); load seconds in transformers
(``from_pretrained`` and a first forward, which decompresses); and the largest |logit difference| against
tlc's forward pass over the variant's stored weights.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlc.cli import main as tlc_main  # noqa: E402
from tlc.compress.store import load_fp32  # noqa: E402

DEFAULT = ["dense", "none-int8", "magnitude-s50", "magnitude-s50-int8", "2of4-s50", "rtn-w4g32", "gptq-w4g32",
           "gptq-w8g32"]

TLC_ENCODED = (".q", ".q4", ".scale", ".values", ".bitmask", ".bsr_values", ".crow", ".col")  # tlc.compress.store


def _tensor_bytes(path: Path, keep) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        total = 0
        for key in f.keys():
            if keep(key):
                t = f.get_slice(key)
                n = 1
                for d in t.get_shape():
                    n *= d
                total += n * {"F32": 4, "F16": 2, "I32": 4, "I64": 8, "I8": 1, "U8": 1}[t.get_dtype()]
    return total


def main(run: Path, names: list[str]) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = {r["variant"]: r for r in map(json.loads, (run / "compress.jsonl").read_text().splitlines())}
    shape = json.loads((run / "config.json").read_text())["shape"]
    probe = torch.randint(0, shape["vocab_size"], (4, shape["context"]), generator=torch.Generator().manual_seed(0))
    print("| variant | export s | export bytes | tlc bytes | ratio | quantized matrices: export / tlc | "
          "load s | max abs logit diff |\n|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in names if n in rows]:
            out = Path(tmp) / name
            start = time.perf_counter()
            assert tlc_main(["export", str(run), "--variant", name, "--to", str(out), "--format",
                             "compressed-tensors"]) == 0
            export_s = time.perf_counter() - start
            exported = (out / "model.safetensors").stat().st_size
            packed = _tensor_bytes(out / "model.safetensors", lambda k: k.endswith(("weight_packed", "weight_scale")))
            stored = _tensor_bytes(run / "compressed" / name / "model.safetensors",
                                   lambda k: k.endswith(TLC_ENCODED) and ".wte." not in k and ".wpe." not in k
                                   and "embed" not in k)
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
            with torch.inference_mode():
                got = model(input_ids=probe).logits
                load_s = time.perf_counter() - start
                expected = load_fp32(run / "compressed" / name)(input_ids=probe).logits
            quantized = f"{packed} / {stored}" if packed else "none (fp32)"
            print(f"| {name} | {export_s:.2f} | {exported} | {rows[name]['bytes']} | "
                  f"{exported / rows[name]['bytes']:.2f}x | {quantized} | {load_s:.2f} | "
                  f"{float((got - expected).abs().max()):.1e} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:] or DEFAULT)
