"""The public API is typed: aoflite passes ``mypy --strict``, and so does a
program using every public call, checked against the package the way a
user's type checker sees an installed one.

That second check does not use the interpreter's own install of aoflite:
an editable install made with setuptools' default mode is an import hook,
which type checkers cannot follow (mypy reports the package as missing),
and it may point at another checkout. Instead the package is laid out as
a wheel installs it (aoflite/ with its py.typed marker and the _native
stub) in a directory on the interpreter's path, and mypy runs from a
directory outside the repository with MYPYPATH unset. mypy accepts a
package found on that path only through its py.typed marker, so a lost
marker fails the test as surely as a type error does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "data" / "typed_example.py"

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e .[test]")


def _mypy(*args: str, cwd: Path, cache: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _installed_layout(site: Path) -> None:
    """aoflite/ as a wheel installs it: sources, stub and marker."""
    shutil.copytree(
        ROOT / "aoflite",
        site / "aoflite",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.o"),
    )
    assert (site / "aoflite" / "py.typed").is_file()
    assert (site / "aoflite" / "_native.pyi").is_file()


def test_package_passes_strict(tmp_path: Path) -> None:
    got = _mypy("aoflite", cwd=ROOT, cache=tmp_path / "cache")
    assert got.returncode == 0, got.stdout + got.stderr


def test_example_program_passes_strict_against_installed_layout(tmp_path: Path) -> None:
    site, work = tmp_path / "site", tmp_path / "work"
    _installed_layout(site)
    work.mkdir()
    # a copy, so nothing of the repository is next to the checked file
    example = work / EXAMPLE.name
    shutil.copy(EXAMPLE, example)
    got = _mypy(example.name, cwd=work, cache=tmp_path / "cache", pythonpath=site)
    assert got.returncode == 0, got.stdout + got.stderr


def test_example_program_runs(tmp_path: Path) -> None:
    # every call the example type-checks is a real call that works
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    got = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert got.returncode == 0, got.stdout + got.stderr
