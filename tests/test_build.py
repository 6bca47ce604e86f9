"""The native engine builds warning-free, and the binding stays thin."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "native").glob("*.c"))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_without_warnings(source, tmp_path):
    """Each C file compiles with -Wall -Wextra -Werror."""
    r = subprocess.run(
        ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-c", str(source), "-o", str(tmp_path / "x.o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_only_segment_module_touches_the_binding():
    """Exactly one Python module imports the cffi lib."""
    users = [
        p.name
        for p in (ROOT / "aoflite").glob("*.py")
        if re.search(r"^from \._native import|^import aoflite\._native", p.read_text(), re.M)
    ]
    assert users == ["segment.py"]


def test_one_public_header():
    """The C API is one header; every exported function is declared there."""
    header = (ROOT / "native" / "aoflite.h").read_text()
    defined = set()
    for src in SOURCES:
        defined |= set(re.findall(r"^(?:int|int64_t|uint32_t|uint64_t|void|const char \*)\s*\*?(aof_\w+)\(", src.read_text(), re.M))
    exported = {name for name in defined if f"{name}(" in header}
    internal = (ROOT / "native" / "aof_internal.h").read_text()
    stray = sorted(n for n in defined - exported if f"{n}(" not in internal)
    assert not stray, f"non-static functions declared in no header: {stray}"
