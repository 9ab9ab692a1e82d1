"""Start ``python -m tlc`` commands as forks of a process that has imported torch, DeepSpeed and transformers once.

A tiny run's trainer spends most of its CPU time importing: of the 6.7 CPU-seconds a 64-step w32-d2
run took here, about 6 were imports (torch, transformers' GPT-2, DeepSpeed). A sweep starts one
trainer per run, so a sweep of many small runs paid that once a run. A fork server imports once; each
command is then ``fork()`` of it: a process of its own (its own pid, exit code, run-directory lock,
signals), with the command's argv, environment, working directory and standard streams, that skips
the imports.

Used only where forking is safe and gives the same process a fresh start would: one command at a
time per server, on a torch build without CUDA (CUDA must not be initialised before a fork, and a
GPU run's start-up is not what it costs), and only for requests whose environment, working directory
and interpreter equal the server's (what the server imported was imported under them). Everything
else, and any server that fails to start, falls back to a fresh ``subprocess.Popen``.

Protocol: one SOCK_SEQPACKET socket pair between a client and its server. A request is one message,
JSON ``{"argv": [...], "env": {...}}`` (``env``: the command's values of RUN_TIME_ONLY) with three file
descriptors attached (the command's stdin, stdout, stderr); the server answers ``{"pid": N}`` once
forked and ``{"pid": N, "returncode": R}`` when it has ended (R negative for a signal, as subprocess
reports it). The server exits when its client closes the socket, and dies with the process that
started it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

SERVER_ENV = "TLC_FORKSERVER_PID"  # set in each forked command: the pid of the server it was forked from
DISABLE_ENV = "TLC_FORKSERVER"  # "0" starts every command as a fresh process
# Variables that change while a process runs and that no import reads: a server serves requests that differ
# in them (each command still gets exactly its own environment). Libraries set the last two in-process and read
# them only when called: torch's inductor its cache folder on first use, DeepSpeed's import (setdefault "1") the
# switch torch.cuda.is_available() reads. Without them here a process that had compiled something or imported
# DeepSpeed started a second server for its next command (5 servers instead of 2-3 per pytest worker).
RUN_TIME_ONLY = frozenset({"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "PYTORCH_NVML_BASED_CUDA_CHECK"})
# What `tlc train` imports before its first step (the rest of tlc imports in milliseconds)
PRELOAD = ("torch", "numpy", "tokenizers", "deepspeed", "deepspeed.ops", "transformers",
           "transformers.models.gpt2.modeling_gpt2", "transformers.models.bert.modeling_bert",
           "tlc.train.loop", "tlc.train.engine", "tlc.train.command", "tlc.cli")


def usable(env: dict[str, str] | None = None) -> bool:
    """Whether commands with environment ``env`` (default this process's) may be forked here: Linux (macOS has
    no SOCK_SEQPACKET pairs, and forking after its system frameworks load is unsafe), the switch not off, and
    torch without CUDA."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux") or env.get(DISABLE_ENV, "1") == "0" or not hasattr(socket, "send_fds"):
        return False
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


class ForkedProcess:
    """The part of ``subprocess.Popen`` that tlc uses, for a command forked by a server."""

    def __init__(self, server: ForkServer, pid: int):
        self._server, self.pid, self.returncode = server, pid, None

    def poll(self) -> int | None:
        return self._wait(0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self._wait(timeout) is None:
            raise subprocess.TimeoutExpired(["tlc"], timeout)
        return self.returncode

    def _wait(self, timeout: float | None) -> int | None:
        self.returncode = self._server.returncode(timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # ended meanwhile

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """A server process for one environment, working directory and interpreter; one command at a time."""

    def __init__(self, env: dict[str, str], cwd: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "tlc.forkserver", str(theirs.fileno())],
                                          pass_fds=[theirs.fileno()], env=env, cwd=cwd,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.busy = False

    def _receive(self, timeout: float | None) -> dict | None:
        if not select.select([self._sock], [], [], timeout)[0]:
            return None
        message = self._sock.recv(65536)
        if not message:
            raise OSError("the fork server ended")
        return json.loads(message)

    def start(self, argv: list[str], env: dict[str, str], stdin: int, stdout: int, stderr: int) -> ForkedProcess:
        """Fork the command (the caller has set ``busy``); OSError if the server is gone."""
        request = {"argv": list(argv), "env": {k: v for k, v in env.items() if k in RUN_TIME_ONLY}}
        socket.send_fds(self._sock, [json.dumps(request).encode()], [stdin, stdout, stderr])
        return ForkedProcess(self, self._receive(None)["pid"])

    def returncode(self, timeout: float | None) -> int | None:
        """The running command's exit code once it has ended, None if it has not within ``timeout``. A command
        whose server died under it died with it: -SIGKILL, and the server is not used again."""
        try:
            reply = self._receive(timeout)
        except OSError:
            self.busy = True
            return -signal.SIGKILL
        if reply is None:
            return None
        self.busy = False
        return reply["returncode"]

    def close(self) -> None:
        self._sock.close()  # the server exits when it reads the end of the socket
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_servers: dict[tuple, ForkServer] = {}
_servers_lock = threading.Lock()


def shutdown() -> None:
    """End this process's servers (their commands' CPU time then counts as this process's children's)."""
    with _servers_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


atexit.register(shutdown)


def popen(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None, stdin=None, stdout=None,
          stderr=None):
    """Start ``python -m tlc ARGV`` like ``subprocess.Popen``: forked from a server when :func:`usable`, else fresh.

    ``stdin``, ``stdout`` and ``stderr`` are None (this process's descriptors 0, 1 and 2, as Popen inherits them)
    or file descriptors. Returns a ``ForkedProcess`` or a ``subprocess.Popen``; both have pid, poll, wait,
    send_signal, kill and returncode.
    """
    env = dict(os.environ if env is None else env)
    cwd = os.getcwd() if cwd is None else str(cwd)
    fds = [default if fd is None else fd for default, fd in enumerate((stdin, stdout, stderr))]
    if usable(env):
        key = (sys.executable, cwd, tuple(sorted((k, v) for k, v in env.items() if k not in RUN_TIME_ONLY)))
        with _servers_lock:
            server = _servers.get(key)
            if server is None:
                if len(_servers) >= 2:  # environments change between tests: keep the last two servers
                    _servers.pop(next(iter(_servers))).close()
                try:
                    server = _servers[key] = ForkServer(env, cwd)
                except OSError:  # no socket pair or no process: fresh processes for this key
                    server = _servers[key] = _Broken()
            if server.busy:
                server = None  # a second command at once (threads of one process) starts fresh
            else:
                server.busy = True
        if server is not None:
            try:
                return server.start(argv, env, *fds)
            except OSError:  # the server could not start or has died: fresh processes for this key from now on
                with _servers_lock:
                    _servers[key] = _Broken()
                server.close()
    return subprocess.Popen([sys.executable, "-m", "tlc", *argv], env=env, cwd=cwd, stdin=fds[0], stdout=fds[1],
                            stderr=fds[2])


class _Broken:
    """Stands for a server that failed: always busy, so every command of its key starts fresh."""

    busy = True

    def close(self) -> None:
        pass


# ---- the server side ----

def _serve(sock: socket.socket) -> None:
    chosen = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cpu"  # what the trainer sets before it imports DeepSpeed here (no warning)
    for name in PRELOAD:
        __import__(name)
    if chosen is None:  # the commands get the server's environment as it was
        del os.environ["DS_ACCELERATOR"]
    else:
        os.environ["DS_ACCELERATOR"] = chosen
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 65536, 3)
        except ConnectionResetError:
            return
        if not message:
            return
        request = json.loads(message)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            _run_command(request["argv"], request["env"], fds)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        sock.send(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())


def _run_command(argv: list[str], run_time_env: dict[str, str], fds: list[int]) -> None:
    """In the fork: become ``python -m tlc ARGV`` on the given streams, run it and exit with its code."""
    code = 1
    try:
        _die_with_parent()  # with the server, which dies with its client
        _set_name(f"tlc {argv[0] if argv else ''}")
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        if os.isatty(1):  # a fresh interpreter line-buffers stdout on a terminal (the server's was /dev/null)
            sys.stdout.reconfigure(line_buffering=True)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for name in RUN_TIME_ONLY:
            os.environ.pop(name, None)
        os.environ.update(run_time_env, **{SERVER_ENV: str(os.getppid())})
        import random

        import numpy

        random.seed()  # a fresh interpreter's random state, not the server's copy
        numpy.random.seed()
        sys.argv = [os.path.join(os.path.dirname(__file__), "__main__.py"), *argv]
        from tlc.cli import main

        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001 - reported as the interpreter would report it
        import traceback

        traceback.print_exc()
    finally:
        if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
            print(code, file=sys.stderr)
            code = 1
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code or 0)


def _set_name(name: str) -> None:
    """The name ``top`` and ``ps -o comm`` show (its command line stays the server's: Linux keeps argv in place)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)


if __name__ == "__main__":
    _die_with_parent()
    _serve(socket.socket(fileno=int(sys.argv[1])))
