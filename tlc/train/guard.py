"""Guards around a run directory: one trainer at a time, no orphaned trainers, no code from checkpoints.

* :func:`lock_run_dir` holds an exclusive ``flock`` on ``<run>/.lock`` for the life of the
  training process; a second trainer of the same run fails at once with a message naming
  the holder. The kernel drops the lock when the holder dies, however it dies.
* :func:`exit_with_worker` makes a training process started by a sweep worker die with that
  worker (``PR_SET_PDEATHSIG`` on Linux, else a watcher thread), so that a SIGKILLed worker
  leaves no trainer behind to race the worker that takes its run over.
* :func:`load_checkpoints_safely` makes DeepSpeed read checkpoint files with
  ``torch.load(weights_only=True)``: its own engine unpickles them with ``weights_only=False``,
  which runs whatever code a planted file carries.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from tlc.errors import UserError
from tlc.forkserver import SERVER_ENV

WORKER_PID_ENV = "TLC_WORKER_PID"  # set by `tlc sweep` for the training processes it starts
CHECKPOINT_TAG = re.compile(r"^step\d{8}$")  # the only tags tlc writes; anything else is refused

_held_locks: dict[str, int] = {}  # run directory -> open file descriptor holding its flock


def lock_run_dir(run_dir: Path) -> None:
    """Take ``run_dir/.lock`` for this process, or raise UserError naming the process that holds it."""
    import fcntl

    key = str(Path(run_dir).resolve())
    if key in _held_locks:
        return
    path = Path(run_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise UserError(
            f"--out: {str(run_dir)!r} is being trained by another process (pid {holder}); "
            "wait for it to finish or stop it, then run this command again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks[key] = fd  # kept open until the process exits; closing it would release the lock


def held_by_another(run_dir: Path) -> bool:
    """Whether a live process (not this one) holds ``run_dir/.lock``, i.e. is training that run now."""
    import fcntl

    path = Path(run_dir) / ".lock"
    if str(Path(run_dir).resolve()) in _held_locks or not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def exit_with_worker() -> None:
    """End this process when the sweep worker named by ``TLC_WORKER_PID`` dies (no-op without it)."""
    value = os.environ.get(WORKER_PID_ENV)
    if not value:
        return
    try:
        worker = int(value)
    except ValueError:
        raise UserError(f"{WORKER_PID_ENV}: expected a process id, got {value!r}; unset it outside tlc sweep") from None
    if os.environ.get(SERVER_ENV) == str(os.getppid()) and os.getppid() != 1:
        return  # forked by the worker's fork server, which dies with the worker and takes this process along
    if sys.platform.startswith("linux") and os.getppid() == worker:
        import ctypes

        PR_SET_PDEATHSIG = 1  # prctl(2): signal this process gets when its parent thread dies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != worker:  # the worker died before prctl took effect
            os._exit(137)
        return
    # under torchrun the worker is a grandparent: watch it instead
    threading.Thread(target=_watch, args=(worker,), daemon=True, name="tlc-exit-with-worker").start()


def _watch(worker: int, every_s: float = 1.0) -> None:
    while True:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            os._exit(137)
        except PermissionError:
            pass  # alive, owned by another user
        time.sleep(every_s)


def _deepspeed_safe_globals() -> list:
    """The few plain-data DeepSpeed classes that ZeRO and bf16 optimizer checkpoints hold."""
    safe = []
    for module, name in (("deepspeed.utils.tensor_fragment", "fragment_address"),
                         ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum")):
        try:
            safe.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass  # another DeepSpeed version: its checkpoints may not need it
    return safe


def load_checkpoints_safely(engine) -> None:
    """Route every checkpoint read of this DeepSpeed engine through ``torch.load(weights_only=True)``."""
    import pickle

    import torch

    allowed = _deepspeed_safe_globals()

    def load(path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            raise UserError(
                f"--out: checkpoint file {path!r} cannot be loaded as plain tensors ({reason}); it was not "
                "unpickled. Remove the run's checkpoint/ folder to restart the run from scratch"
            ) from None

    engine.checkpoint_engine.load = load


def checkpoint_tag(latest_path: Path) -> tuple[str, int]:
    """The (tag, step) that ``checkpoint/tlc_latest.json`` names, checked so it cannot point elsewhere."""
    import json

    try:
        state = json.loads(Path(latest_path).read_text(encoding="utf-8"))
        tag, step = state["tag"], int(state["step"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"--out: {str(latest_path)!r} is unreadable ({type(e).__name__}: {e}); "
                        "remove the run's checkpoint/ folder to restart the run") from None
    if not isinstance(tag, str) or not CHECKPOINT_TAG.match(tag):
        raise UserError(f"--out: {str(latest_path)!r} names checkpoint {tag!r}; expected a tag like step00000012")
    return tag, step
