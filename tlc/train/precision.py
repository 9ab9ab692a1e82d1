"""The training precision a run uses when it asks for ``auto`` (the default): chosen by the hardware.

- CUDA: bf16 from compute capability 8.0 (Ampere) on, which has bf16 tensor cores; fp32 below.
- CPU: fp32, unless a short measured training step is faster in bf16. A CPU without AVX512_BF16
  or AMX emulates bf16 (width 64 × depth 2 trained 6.8× slower in bf16 than in fp32 on such a CPU,
  as issue 15 reports); with native bf16 it went either way: 1.7× slower on an AVX-512 Xeon
  (BENCHMARKS.md, "Training"), 1.8× faster for the probe step on an AVX512_BF16 EPYC with one
  thread (BENCHMARKS.md, "Precision default"). The measurement is made once per machine and
  cached in ``$TLC_CACHE/precision.json``, as the int8 path is
  (:func:`tlc.compress.quantize.choose_int8_path`).

A run that resumes keeps the precision its ``config.json`` records. Every process of a
multi-process run uses rank 0's choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
# the step that decides on CPU: one forward and backward of this GPT-2 shape on 4 × 128 tokens
PROBE_SHAPE = {"width": 128, "depth": 2, "heads": 4, "context": 128, "vocab_size": 1024}
PROBE_BATCH = 4
CACHE_FILE = "precision.json"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, and why (one line, for the run's log)."""

    precision: str  # "fp32" or "bf16"
    reason: str


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        line = ""
    return set(line.partition(":")[2].split())


def cpu_key() -> str:
    """What the cached CPU choice depends on: machine, processor and its features, torch, threads."""
    import torch

    flags = hashlib.sha256(" ".join(sorted(_cpu_flags())).encode()).hexdigest()[:12]
    return "|".join([platform.node(), platform.processor() or platform.machine(), f"flags={flags}",
                     torch.__version__, f"threads={torch.get_num_threads()}"])


def native_bf16_cpu() -> bool:
    """True where the CPU has bf16 arithmetic (AVX512_BF16 or AMX); elsewhere torch emulates it."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def probe_step_seconds(rounds: int = 3) -> dict[str, float]:
    """Best seconds of one forward and backward of :data:`PROBE_SHAPE` in fp32 and in bf16, on CPU.

    The two alternate and the best of ``rounds`` counts, so that other work on the machine slows both
    alike and a preempted step does not decide.
    """
    import torch

    from tlc.config import ModelShape
    from tlc.train.evaluation import lm_loss
    from tlc.train.model import build_model

    shape = ModelShape(**PROBE_SHAPE)
    models = {"fp32": build_model(shape, seed=0), "bf16": build_model(shape, seed=0).to(torch.bfloat16)}
    batch = torch.randint(0, shape.vocab_size, (PROBE_BATCH, shape.context + 1),
                          generator=torch.Generator().manual_seed(0))
    best = {name: float("inf") for name in models}
    for i in range(1 + rounds):  # the first round (allocator, kernel selection) is not timed
        for name, model in models.items():
            start = time.perf_counter()
            loss, _ = lm_loss(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def choose_cpu_precision(cache_dir: Path) -> PrecisionChoice:
    """fp32 unless the measured bf16 step is faster; measured once per machine, then read from the cache."""
    from tlc.io import atomic_write_json

    cache = Path(cache_dir) / CACHE_FILE
    key = cpu_key()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    record = known.get(key) if isinstance(known, dict) else None
    if not (isinstance(record, dict) and record.get("precision") in ("fp32", "bf16")
            and isinstance(record.get("seconds"), dict)):
        seconds = probe_step_seconds()
        record = {"precision": "bf16" if seconds["bf16"] < seconds["fp32"] else "fp32", "seconds": seconds}
        known = {**(known if isinstance(known, dict) else {}), key: record}
        atomic_write_json(cache, known)
        how = "measured now"
    else:
        how = f"measured earlier, cached in {cache}"
    s = record["seconds"]
    native = "native bf16" if native_bf16_cpu() else "no AVX512_BF16 or AMX: bf16 is emulated"
    return PrecisionChoice(record["precision"], f"CPU ({native}); a training step took {1e3 * s['fp32']:.0f} ms in "
                                                f"fp32 and {1e3 * s['bf16']:.0f} ms in bf16 ({how})")


def choose_precision(requested: str, cache_dir: Path, recorded: str | None = None) -> PrecisionChoice:
    """Resolve ``requested`` ("auto", "fp32" or "bf16") for this process's device.

    ``recorded`` is the precision an existing run directory's config.json holds: a resumed run keeps it.
    """
    import torch

    if requested != AUTO:
        return PrecisionChoice(requested, "set by --precision (train.precision in a sweep file)")
    if recorded in ("fp32", "bf16"):
        return PrecisionChoice(recorded, "auto: the run resumes in the precision it started with (config.json)")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if (major, minor) >= (8, 0):
            return PrecisionChoice("bf16", f"auto: {name}, compute capability {major}.{minor} has bf16 tensor cores")
        return PrecisionChoice("fp32", f"auto: {name}, compute capability {major}.{minor} is below 8.0 (no bf16)")
    choice = choose_cpu_precision(cache_dir)
    return PrecisionChoice(choice.precision, f"auto: {choice.reason}")


def recorded_precision(run_dir: Path) -> str | None:
    """The precision an existing run's config.json records (None for a new run or an unreadable file)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))["train"]["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose_for_run(requested: str, cache_dir: Path, run_dir: Path, rank: int, world: int, device) -> PrecisionChoice:
    """Rank 0 chooses (measuring at most once per machine) and every other process takes its choice.

    ``device`` is this process's (:func:`tlc.train.engine.device_for_rank`): under NCCL the broadcast
    travels as a tensor on it; left to torch it would go through ``torch.cuda.current_device()``, GPU 0
    on every rank unless the caller had set the device first.
    """
    choice = choose_precision(requested, cache_dir, recorded_precision(run_dir)) if rank == 0 else None
    if world > 1:
        import torch.distributed as dist

        shared = [choice]
        dist.broadcast_object_list(shared, src=0, device=device)
        choice = shared[0]
    return choice
