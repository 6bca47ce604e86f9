"""The documentation matches the code: every python example in README.md and
docs/ runs, and every shell command shown is one that a test or CI runs."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Each shell command the docs show, and where it is exercised.
EXERCISED = {
    "python3 -m pip install -e .": "tools/test.sh runs it first (CI: .ci/run)",
    "python3 -m aoflite demo": "tests/test_demo.py",
    "tools/test.sh": "CI: .ci/run calls it and nothing else",
    "tools/fuzz.sh": "tests/test_docs.py::test_fuzz_script_profiles",
    "tools/fuzz.sh --long": "tests/test_docs.py::test_fuzz_script_profiles",
    "python tools/bench.py": "tests/test_docs.py::test_bench_runs",
    "python tools/bench.py --json": "tests/test_docs.py::test_bench_runs",
    "python tools/bench.py --only feed": "tests/test_docs.py::test_bench_feed_probes_run",
    "python tools/gen_cdef.py": "tests/test_native.py (--check)",
}


def blocks(lang: str):
    for doc in DOCS:
        for found in BLOCK.finditer(doc.read_text()):
            if found.group(1) == lang:
                yield pytest.param(found.group(2), id=f"{doc.name}:{doc.read_text()[: found.start()].count(chr(10)) + 1}")


@pytest.mark.parametrize("code", list(blocks("python")))
def test_python_examples_run(code, tmp_path, monkeypatch):
    """Every python block in the docs runs as written."""
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def shell_commands():
    for lang in ("sh", "console", "bash"):
        for param in blocks(lang):
            for line in param.values[0].splitlines():
                line = line.split("  #")[0].strip().removeprefix("$ ")
                if line and not line.startswith("#"):
                    yield from (part.strip() for part in line.split("&&"))


def test_every_shell_command_is_exercised():
    """A command shown in the docs is one that a test or CI runs."""
    shown = set(shell_commands())
    assert shown, "the docs show no command at all: the README's set-up commands are missing"
    unknown = sorted(c for c in shown if c not in EXERCISED and c.split(" PATH")[0] not in EXERCISED)
    assert not unknown, f"documented commands no test exercises: {unknown}"


def test_readme_states_two_setup_commands():
    """README: one command installs and runs the demo, one runs every test."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("##", 1)[0]
    sh = BLOCK.search(setup)
    assert sh and sh.group(1) == "sh"
    lines = [l for l in sh.group(2).splitlines() if l.strip()]
    assert len(lines) == 2
    assert "aoflite demo" in lines[0] and lines[1].startswith("tools/test.sh")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec tools/test.sh" in ci and ci.count("tools/") == 1


def test_bench_runs(tmp_path):
    """`python tools/bench.py` (here a tiny run) measures aoflite beside its
    peers and reports every target ratio; a smoke run, not a timed test."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--records", "2000", "--repeats", "1",
         "--only", "aoflite,sqlite,fsync", "--dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    report = json.loads(out)
    errors = [r for r in report["results"] if r["error"]]
    assert not errors, errors
    cases = {r["case"] for r in report["results"]}
    assert {"aoflite.append", "aoflite.append_many", "sqlite.executemany", "fsync.commit"} <= cases
    ratios = {(t["group"], t["label"]): t["ratio"] for t in report["targets"]}
    assert len(ratios) == 10 and all(r is not None and r > 0 for r in ratios.values()), ratios


def test_bench_feed_probes_run(tmp_path):
    """`python tools/bench.py --only feed` (here a tiny run) measures the
    live feed with a follower in another process and reports every
    reading; a smoke run, not a timed test."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--repeats", "1", "--only", "feed",
         "--feed-seconds", "1", "--feed-appends", "2000", "--dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    report = json.loads(out)
    assert [p["error"] for p in report["probes"]] == [None, None, None]
    assert [p["probe"] for p in report["probes"]] == ["feed.latency", "feed.idle", "feed.writer"]
    readings = [r for p in report["probes"] for r in p["readings"]]
    assert all(r["value"] is not None and r["value"] >= 0 for r in readings), readings
    assert sum(r["target"] is not None for r in readings) == 4
    assert not report["results"]


@pytest.mark.parametrize("args, profile", [([], "ci"), (["--long"], "long")])
def test_fuzz_script_profiles(args, profile):
    """`tools/fuzz.sh [--long]` installs, picks its profile and hands the
    rest to pytest (here only collecting: tools/test.sh runs the suite)."""
    import os
    import subprocess

    env = dict(os.environ, AOFLITE_LIBFUZZER_SECONDS="0")
    env.pop("AOFLITE_FUZZ_PROFILE", None)
    r = subprocess.run(
        [str(ROOT / "tools" / "fuzz.sh"), *args, "--collect-only", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"aoflite fuzz profile: {profile}" in r.stdout
    assert "test_powerloss.py" in r.stdout and "test_failpoints.py" in r.stdout
