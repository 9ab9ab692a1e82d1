"""A variant as ONNX: torch's exporter (``torch.export``-based) for fp32, ONNX Runtime's dynamic
quantization for int8, and the ONNX Runtime session and timing that ``tlc compress`` and
``bench/export.py`` share.

The graph takes ``input_ids`` int64 [batch, sequence] (both dynamic, sequence up to the context)
and returns ``logits`` float32 [batch, sequence, vocab]; no cache, no attention mask (tlc's
models are scored on full windows). The fp32 graph holds the variant's weights as tlc evaluates
them: shrunk heads and FFNs keep their smaller shapes, pruned zeros stay (ONNX Runtime's CPU
kernels are dense), 8-bit variants' weights dequantized. ``model.int8.onnx`` is
``onnxruntime.quantization.quantize_dynamic`` of it: int8 weights per output channel (for an
8-bit variant those are exactly tlc's int8 values, since the dequantized rows have tlc's absmax),
activations quantized per tensor at run time.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

FP32 = "model.onnx"
INT8 = "model.int8.onnx"


class _LogitsOnly(torch.nn.Module):
    """input_ids -> logits, the only output ONNX Runtime users need from a causal LM."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)


def export_fp32(model: torch.nn.Module, path: Path, context: int) -> None:
    """``model`` (a transformers causal LM) to an ONNX file at ``path`` with dynamic batch and sequence."""
    wrapped = _LogitsOnly(model).eval()
    example = torch.zeros(2, min(8, context), dtype=torch.long)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=context)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter logs every torchvision op it cannot register
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapped, (example,), input_names=["input_ids"], output_names=["logits"],
                                        dynamic_shapes={"input_ids": {0: batch, 1: sequence}}, dynamo=True,
                                        verbose=False)
        program.save(str(path))
    finally:
        quiet.setLevel(level)


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights per output channel, activations per tensor at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it warns on the root logger that pre-processing is recommended
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def write_onnx(model: torch.nn.Module, out: Path, context: int) -> dict:
    """``model.onnx`` and ``model.int8.onnx`` of ``model`` in the (new, empty) folder ``out``."""
    export_fp32(model, out / FP32, context)
    quantize_int8(out / FP32, out / INT8)
    return {"files": [FP32, INT8], "needs": ["onnxruntime"]}


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session, on as many threads as torch uses here (a like-for-like comparison)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(sess, input_ids: np.ndarray) -> np.ndarray:
    """Logits float32 [B, T, V] for int64 ``input_ids`` [B, T]."""
    return sess.run(["logits"], {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64)})[0]


def ort_latency_ms_per_token(sess, vocab_size: int, batch: int, prompt_tokens: int = 32,
                             repeats: int = 7, warmup: int = 2) -> float:
    """Median forward time per token (ms) of a fixed prompt, as tlc.compress.evaluate.latency_ms_per_token times torch."""
    import statistics

    g = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, vocab_size, (batch, prompt_tokens), generator=g).numpy()
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        ort_logits(sess, prompt)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / (batch * prompt_tokens)


# Graphs exported in this process, by the trained model they came from and its architecture: every 8-bit variant of
# one run has the graph of its dense model with other values in the weight matrices (tlc.compress times each)
_graphs: dict[tuple, bytes] = {}


def _reused_graph(model: torch.nn.Module, key: tuple, path: Path, context: int) -> bool:
    """Write ``key``'s graph to ``path`` with ``model``'s values in its named initializers (the weight matrices; the
    exporter folds biases and norms into constants, which pruning and tlc's int8 leave as they were) and keep it
    if its logits are ``model``'s (as a fresh export's are: within 1e-4); False if there is no such graph or it
    differs."""
    import onnx
    from onnx import numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = _graphs.get(key)
    if graph is None:
        return False
    proto = onnx.load_model_from_string(graph)
    values = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    for initializer in proto.graph.initializer:
        if initializer.name in values:
            array = values[initializer.name].detach().float().cpu().numpy()
            dtype = tensor_dtype_to_np_dtype(initializer.data_type)  # the graph's, without decoding its values
            initializer.CopyFrom(numpy_helper.from_array(array.astype(dtype), initializer.name))
    onnx.save(proto, str(path))
    probe = torch.randint(0, model.config.vocab_size, (2, min(8, context)), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = _LogitsOnly(model).eval()(probe).float().numpy()
    return bool(np.allclose(ort_logits(session(path, threads=1), probe.numpy()), expected, rtol=1e-4, atol=1e-4))


def ort_int8_latency(model: torch.nn.Module, context: int, vocab_size: int, prompt_tokens: int,
                     repeats: int, source: str | None = None) -> dict[str, float]:
    """ms per token at batch 1 and 32 of ``model`` (fp32) exported and quantized by ONNX Runtime, timed there.

    ``source`` names the trained model ``model`` was made from (its checkpoint folder): the first variant of a
    source is exported (seconds: torch.export), later ones of the same architecture reuse that graph with their
    own weights, checked against their logits (`_reused_graph`)."""
    import json
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tlc-ort-"))
    key = None if source is None else (source, json.dumps(model.config.to_dict(), sort_keys=True, default=str), context)
    try:
        if key is None or not _reused_graph(model, key, folder / FP32, context):
            export_fp32(model, folder / FP32, context)
            if key is not None:
                _graphs.clear()  # one graph at a time: compress_run makes a source's variants one after another
                _graphs[key] = (folder / FP32).read_bytes()
        quantize_int8(folder / FP32, folder / INT8)
        sess = session(folder / INT8)
        return {f"latency_ms_b{b}_ort_int8": ort_latency_ms_per_token(sess, vocab_size, b, prompt_tokens, repeats)
                for b in (1, 32)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
