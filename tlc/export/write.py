"""Write one variant of a run as a transformers or compressed-tensors folder or as ONNX models, whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tlc.errors import UserError
from tlc.export.source import Variant
from tlc.io import atomic_replace_dir, atomic_write_json

FORMATS = ("hf", "onnx", "compressed-tensors")
RECORD = "tlc_export.json"
ROW_FIELDS = ("method", "sparsity", "bits", "nonzeros", "bytes", "val_loss", "val_bpb", "val_acc", "int8_path")


def check_target(out: Path, force: bool) -> Path:
    """``--to``: a new folder, an empty one, or (with ``--force``) one to replace."""
    out = Path(out)
    try:
        out.exists()
    except (OSError, ValueError) as error:
        raise UserError(f"--to: {str(out)!r} is not a usable path ({error})") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"--to: {str(out)!r} is a file; give a folder to create")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--to: {str(out)!r} exists and is not empty; give a new folder, or add --force to replace it")
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--to: cannot create {str(out)!r}: {str(existing)!r} is not a writable folder")
    return out


def check_not_in_run(out: Path, run_dir: Path) -> None:
    """``--to`` must not be the run, hold it, or lie in what tlc wrote there (``--force`` would replace it)."""
    out, run_dir = Path(out).resolve(), Path(run_dir).resolve()
    protected = (run_dir / "model", run_dir / "compressed", run_dir / "checkpoint")
    if out == run_dir or out in run_dir.parents or any(out == p or p in out.parents for p in protected):
        raise UserError(f"--to: {str(out)!r} would overwrite the run {run_dir.name} or its files; "
                        "give a folder outside the run's model/, compressed/ and checkpoint/")


def check_format(fmt: str) -> None:
    """``--format``: one of FORMATS, and for onnx the exporter and runtime installed."""
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not a format; valid: {', '.join(FORMATS)}")
    if fmt == "onnx":
        from tlc.export import onnx_available

        if not onnx_available():
            raise UserError("--format onnx: needs the onnx, onnxscript and onnxruntime packages; "
                            "pip install 'tlc[export]'")
    if fmt == "compressed-tensors":
        from tlc.export import compressed_tensors_available

        if not compressed_tensors_available():
            raise UserError("--format compressed-tensors: needs the compressed-tensors package; "
                            "pip install 'tlc[export]'")


def export_variant(variant: Variant, out: Path, fmt: str) -> dict:
    """Write ``variant`` to ``out`` in ``fmt`` (a temporary folder beside it, then a rename); returns the record."""
    out = Path(out).absolute()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = _write(variant, tmp, fmt)
        atomic_write_json(tmp / RECORD, record)
        atomic_replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _write(variant: Variant, tmp: Path, fmt: str) -> dict:
    import torch
    import transformers

    from tlc import __version__

    model_folder = variant.run_dir / "model"
    config = json.loads((variant.run_dir / "config.json").read_text(encoding="utf-8"))
    if fmt == "hf":
        from tlc.export.hf import write_hf

        written = write_hf(variant.folder, model_folder, tmp)
    elif fmt == "compressed-tensors":
        import compressed_tensors

        from tlc.export.to_compressed_tensors import write_compressed_tensors

        written = write_compressed_tensors(variant.folder, model_folder, tmp)
        written["compressed_tensors"] = compressed_tensors.__version__
    else:
        import onnxruntime

        from tlc.compress.store import load_fp32
        from tlc.export.hf import TOKENIZER_FILES
        from tlc.export.to_onnx import write_onnx

        written = write_onnx(load_fp32(variant.folder), tmp, config["shape"]["context"])
        written["onnxruntime"] = onnxruntime.__version__
        for name in TOKENIZER_FILES:
            if (model_folder / name).exists():
                shutil.copyfile(model_folder / name, tmp / name)
    return {
        "run_id": config.get("run_id", variant.run_dir.name),
        "run_dir": str(variant.run_dir),
        "variant": variant.name,
        "format": fmt,
        **written,
        "compress_row": {k: variant.row.get(k) for k in ROW_FIELDS},
        "versions": {"tlc": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
