"""Export: a compressed variant in the formats people deploy with.

``tlc export`` (:mod:`tlc.export.command`) writes a variant as a transformers folder
(:mod:`~tlc.export.hf`; 8-bit through bitsandbytes' format), as a compressed-tensors folder (packed
int8 and int4 codes, :mod:`~tlc.export.to_compressed_tensors`) or as ONNX models, fp32 and ONNX Runtime
int8 (:mod:`~tlc.export.to_onnx`). :mod:`~tlc.export.source` finds a run's saved
variants, :mod:`~tlc.export.write` writes the folder atomically.
"""


def onnx_available() -> bool:
    """Whether the ONNX exporter's packages and ONNX Runtime are installed (``pip install 'tlc[export]'``).

    Here rather than in :mod:`~tlc.export.to_onnx` so that flag checks answer without importing torch.
    """
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def compressed_tensors_available() -> bool:
    """Whether the compressed-tensors package is installed (``pip install 'tlc[export]'``)."""
    import importlib.util

    return importlib.util.find_spec("compressed_tensors") is not None
