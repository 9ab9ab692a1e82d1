"""Load an exported model the way a user would, in a process where tlc cannot be imported.

``python export_loader.py INPUTS.npz FORMAT DIR OUT.npz [FORMAT DIR OUT.npz ...]`` with FORMAT
``hf``, ``onnx`` (model.onnx) or ``onnx-int8`` (model.int8.onnx). INPUTS holds ``probe`` int64 [B, T] and ``windows`` int64
[N, T + 1]; OUT gets ``logits`` float32 [B, T, V] of the probe, ``val_loss`` (mean next-token
cross-entropy over the windows, nats) and ``decoded`` (the tokenizer's text of the probe's first row).
"""

from __future__ import annotations

import importlib.abc
import sys


class _NoTlc(importlib.abc.MetaPathFinder):
    """Refuse tlc and its sibling packages: the export must stand on its own."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tlc", "scaling", "cuda_ext"):
            raise ImportError(f"{name} must not be needed to load an export")
        return None


sys.meta_path.insert(0, _NoTlc())

import numpy as np  # noqa: E402


def _log_softmax_loss(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(-1)) + peak[..., 0]
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def load_and_score(inputs: str, fmt: str, folder: str, out: str) -> None:
    data = np.load(inputs, allow_pickle=False)
    probe, windows = data["probe"], data["windows"]
    if fmt == "hf":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu").eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)

        def logits_of(ids: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()
    else:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        name = "model.onnx" if fmt == "onnx" else "model.int8.onnx"
        session = ort.InferenceSession(f"{folder}/{name}", providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")

        def logits_of(ids: np.ndarray) -> np.ndarray:
            return session.run(["logits"], {"input_ids": ids.astype(np.int64)})[0]

    losses = [_log_softmax_loss(logits_of(windows[i : i + 8, :-1]), windows[i : i + 8, 1:])
              for i in range(0, len(windows), 8)]
    decoded = tokenizer.decode(probe[0].tolist())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tlc", "scaling", "cuda_ext"))
    assert not loaded, loaded
    np.savez(out, logits=logits_of(probe), val_loss=np.float64(np.concatenate([x.ravel() for x in losses]).mean()),
             decoded=np.array(decoded))


if __name__ == "__main__":
    inputs, jobs = sys.argv[1], sys.argv[2:]
    for i in range(0, len(jobs), 3):
        load_and_score(inputs, *jobs[i : i + 3])
