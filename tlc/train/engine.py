"""The DeepSpeed side of a run: distributed set-up, the engine, checkpoints and the final weights.

A lone process needs no launcher (it sets the rendezvous variables itself); under ``torchrun`` or
the ``deepspeed`` launcher the launcher's variables are used. Checkpoints are DeepSpeed's own,
tagged by step, with ``tlc_latest.json`` naming the newest complete one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
from pathlib import Path

from tlc.config import TrainSettings
from tlc.io import atomic_replace_dir, atomic_write_json
from tlc.train.data import TokenData


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LONE_ENV = "TLC_LONE_PROCESS"
SHM_COMM_OP = "deepspeed_shm_comm"  # deepspeed.ops.op_builder.cpu.ShareMemCommBuilder.NAME


def init_distributed():
    """Start torch.distributed through DeepSpeed: gloo on CPU, nccl on GPU; a lone process needs no launcher."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # A lone process sets the launcher's variables itself and notes "<pid>:<port>" in LONE_ENV. A child
    # of such a process (a test runner, `tlc demo`) inherits them but must not reuse the parent's port;
    # a launcher (torchrun, deepspeed) sets its own MASTER_PORT, so its workers are left alone.
    marker = os.environ.get(LONE_ENV, "")
    inherited = marker.endswith(f":{os.environ.get('MASTER_PORT')}") and not marker.startswith(f"{os.getpid()}:")
    if "RANK" not in os.environ or inherited:
        port = str(_free_port())
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        os.environ[LONE_ENV] = f"{os.getpid()}:{port}"
    import logging

    import deepspeed
    import deepspeed.ops
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if not torch.cuda.is_available():
        # DeepSpeed compiles its CPU shared-memory all-reduce op when it starts its communication backend
        # (about 50 s of CPU on a fresh machine; BENCHMARKS.md), even for one process. Only its
        # inference_all_reduce (tensor-parallel inference) uses the op; training reduces gradients through
        # torch.distributed (gloo). Its table of compatible ops is the switch DeepSpeed checks before building.
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    # Left to interpreter teardown, the process group's native threads can outlive what they hold and
    # abort a trainer that has finished ("terminate called without an active exception", exit -6).
    atexit.unregister(_destroy_process_group)  # once, however often a process starts distributed
    atexit.register(_destroy_process_group)
    return deepspeed, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for_rank():
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def tensorboard_available() -> bool:
    """Whether DeepSpeed's TensorBoard monitor can run here (the ``tensorboard`` package is installed)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def adamw(model, train: TrainSettings, fused: bool = True):
    """tlc's AdamW for ``model``: weight decay on matrices only (not embeddings, norms or biases), betas (0.9, 0.95).

    ``fused``: torch's one fused kernel per parameter instead of its chain of foreach ops, for CPU and CUDA
    tensors; a demo shape's step 1.01-1.11x faster on one EPYC core (bench/step_speed.py, which times it against
    ``fused=False``; BENCHMARKS.md, "Training speed").
    """
    import torch

    def decays(name, p):
        return p.dim() >= 2 and "wte" not in name and "embed" not in name

    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if decays(n, p)], "weight_decay": train.weight_decay},
         {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}],
        lr=train.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused,
    )


def build_engine(deepspeed, model, train: TrainSettings, global_batch: int, tensorboard_dir: Path | None = None):
    """A DeepSpeed engine around ``model`` with AdamW (decay on matrices only) for these settings.

    With ``tensorboard_dir`` (and tensorboard installed), DeepSpeed's own monitor writes TensorBoard
    event files there: its learning rate per step, and what :func:`monitor_scalars` sends.
    Returns the engine and its optimizer, whose ``param_groups`` take the learning rate.
    """
    optimizer = adamw(model, train)
    ds_config = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
    }
    if tensorboard_dir is not None and tensorboard_available():
        ds_config["tensorboard"] = {"enabled": True, "output_path": str(Path(tensorboard_dir).parent),
                                    "job_name": Path(tensorboard_dir).name}
    engine, engine_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, engine_optimizer


def monitor_scalars(engine, step: int, tokens: int, values: dict[str, float]) -> None:
    """Send ``values`` to DeepSpeed's monitor twice: ``<name>/by_step`` at ``step``, ``<name>/by_tokens`` at
    ``tokens`` (TensorBoard's x axis is the event's step). A no-op without a monitor; rank 0 writes."""
    if not engine.monitor.enabled:
        return
    events = [(f"{name}/by_step", float(v), step) for name, v in values.items()]
    events += [(f"{name}/by_tokens", float(v), tokens) for name, v in values.items()]
    engine.monitor.write_events(events)  # DeepSpeed's TensorBoard monitor flushes on every call


# ----------------------------------------------------------------------------------------------
# Checkpoints and final weights


def save_checkpoint(engine, ckpt_dir: Path, step: int, wall_s: float, rank: int) -> None:
    """A DeepSpeed checkpoint tagged by step; ``tlc_latest.json`` moves to it only once it is complete."""
    import torch.distributed as dist

    tag = f"step{step:08d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "wall_s": wall_s}, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        atomic_write_json(ckpt_dir / "tlc_latest.json", {"tag": tag, "step": step})
        for old in ckpt_dir.iterdir():
            if old.is_dir() and old.name.startswith("step") and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def save_final_model(module, tokens: TokenData, run_dir: Path) -> None:
    """Weights (safetensors, fp32) and tokenizer in a form `transformers` loads; moved into place whole."""
    import torch
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from tlc.train.data import EOT

    hf_logging.disable_progress_bar()

    tmp = run_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
    from tlc.architecture import MASK_TOKEN, PAD_TOKEN, model_objective

    if model_objective(module) == "mlm":  # the encoder's <mask> and <pad> follow the BPE vocabulary
        from tlc.train.masking import encoder_tokenizer

        wrapped = PreTrainedTokenizerFast(tokenizer_object=encoder_tokenizer(tokens.tokenizer, module.config.vocab_size - 2),
                                          eos_token=EOT, bos_token=EOT, mask_token=MASK_TOKEN, pad_token=PAD_TOKEN,
                                          unk_token=None)
    else:
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tokens.tokenizer, eos_token=EOT, bos_token=EOT,
                                          unk_token=None)
    wrapped.save_pretrained(tmp)
    atomic_replace_dir(tmp, run_dir / "model")
