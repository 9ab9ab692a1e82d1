"""A private PostgreSQL server for the test session: loopback only, trust auth, a free port, a temp folder.

``postgres_url()`` is the pytest fixture body: it finds the server binaries (installing Debian's
``postgresql`` package with apt-get when running as root on a machine without them), runs
``initdb`` and ``pg_ctl`` — as the ``postgres`` user when the tests run as root, since the server
refuses root — creates a database, yields its URL, and stops the server and removes its files.
Anything missing skips the PostgreSQL tests with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DB_USER, DB_NAME = "tlc", "tlc"


def _server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, newest version first, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _install_with_apt() -> str | None:
    """Install Debian's PostgreSQL server; return why it could not be done, or None."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL server binaries not found and cannot install them (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return f"'{' '.join(cmd)}' failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One initdb'd cluster in a private folder, started on 127.0.0.1:port."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        self.root = Path(tempfile.mkdtemp(prefix="tlc-pg-"))  # not under pytest's 0700 root-only folders
        self.data = self.root / "data"
        self.port = _free_port()
        if self.as_postgres:
            shutil.chown(self.root, user="postgres")

    def _run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
        return proc

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DB_NAME)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # never started, or already gone
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def postgres_url():
    """Generator for a session fixture: yield a database URL on a fresh private server, then stop it."""
    try:
        import psycopg2  # noqa: F401  (SQLAlchemy's default PostgreSQL driver)
    except ImportError:
        pytest.skip("psycopg2 is not installed: pip install 'tlc[postgres]' (psycopg2-binary) to run PostgreSQL tests")
    bin_dir = _server_bin()
    if bin_dir is None:
        reason = _install_with_apt()
        bin_dir = _server_bin()
        if bin_dir is None:
            pytest.skip(reason or "PostgreSQL server binaries still missing after apt-get install postgresql")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except BaseException:
        print(server.log_tail())  # binaries present but the server will not start: a real failure, not a skip
        server.stop()
        raise
    deadline = time.time() + 30
    while True:  # pg_ctl -w returns once the server accepts connections; check through the driver anyway
        try:
            import psycopg2

            psycopg2.connect(server.url).close()
            break
        except psycopg2.OperationalError:
            if time.time() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
    try:
        yield server.url
    finally:
        server.stop()
