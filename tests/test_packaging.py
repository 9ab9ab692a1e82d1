"""tlc as a package: the wheel carries the sweep files and the kernel sources, and an installed tlc
finds its packaged sweep from a folder outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

# what a checkout holds that a wheel must not be built from (a user's venv, runs, earlier builds)
NOT_SOURCES = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
               "test-artifacts", ".whl", ".gl")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of this checkout (so the build leaves nothing in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "tlc-src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(tmp / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (built,) = (tmp / "dist").glob("tlc-*.whl")
    return built


def test_wheel_carries_sweeps_and_kernel_sources(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for sweep in sorted((REPO / "sweeps").glob("*.yaml")):
            assert f"tlc/sweeps/{sweep.name}" in names
            assert zf.read(f"tlc/sweeps/{sweep.name}") == sweep.read_bytes()  # the same file, not a stale copy
        # every kernel source, whatever its suffix (a missing one fails the build on the user's machine)
        for source in sorted((REPO / "cuda_ext" / "csrc").rglob("*")):
            if source.is_file():
                assert source.relative_to(REPO).as_posix() in names, source.name
        for table in sorted((REPO / "tlc" / "data" / "published").iterdir()):  # tlc fit --published reads these
            assert f"tlc/data/published/{table.name}" in names, table.name
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "tlc = tlc.cli:main" in zf.read(entry_points).decode()
    assert not [n for n in names if n.startswith(("tests/", "bench/", "sweeps/"))]
    assert {"tlc/cli.py", "tlc/demo.py", "scaling/__init__.py", "cuda_ext/__init__.py"} <= names


def test_installed_demo_finds_its_packaged_sweep_outside_the_checkout(wheel, tmp_path):
    from tlc.config import load_sweep

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:  # a pure-Python wheel installs by unpacking it
        zf.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # PYTHONPATH puts the unpacked wheel ahead of any editable install of this checkout
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "2000"}
    proc = subprocess.run([sys.executable, "-m", "tlc", "demo", "--help"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    packaged = site / "tlc" / "sweeps" / "tiny.yaml"
    assert f"the packaged tiny sweep, {packaged}" in proc.stdout
    assert load_sweep(packaged).name == "tiny"
    assert not (elsewhere / "runs").exists()  # --help trains nothing
