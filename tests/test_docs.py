"""The documentation matches the code: every python example in README.md and
docs/ runs, and every shell command shown is one that a test or CI runs."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Each shell command the docs show, and where it is exercised.
EXERCISED = {
    "python3 -m pip install -e . --config-settings editable_mode=compat": (
        "tools/test.sh runs it first, with the test extra (CI: .ci/run); "
        "tests/test_docs.py::test_scripts_install_as_the_readme_does"
    ),
    "python3 -m aoflite demo": "tests/test_demo.py",
    "tools/test.sh": "CI: .ci/run calls it and nothing else",
    "tools/fuzz.sh": "tests/test_docs.py::test_fuzz_script_profiles",
    "tools/fuzz.sh --long": "tests/test_docs.py::test_fuzz_script_profiles",
    "python tools/bench.py": "tests/test_docs.py::test_bench_runs",
    "python tools/bench.py --json": "tests/test_docs.py::test_bench_runs",
    "python tools/bench.py --only feed": "tests/test_docs.py::test_bench_feed_probes_run",
    "python tools/gen_cdef.py": "tests/test_native.py (--check)",
    # the aoflite command (docs/cli.md, operations.md, runbook.md): each one
    # shown also runs as written in test_documented_aoflite_commands_run
    "aoflite --help": "tests/test_docs.py::test_documented_aoflite_commands_run",
    "aoflite info": "tests/test_cli.py::test_info",
    "aoflite keys": "tests/test_cli.py::test_keys",
    "aoflite cat": "tests/test_cli.py::test_cat_formats",
    "aoflite tail": "tests/test_cli.py::test_tail_every_key_marks_batches, test_tail_follow_sees_new_records",
    "aoflite ledger": "tests/test_cli.py::test_ledger",
    "aoflite export": "tests/test_cli.py::test_export",
    "aoflite backup": "tests/test_cli.py::test_backup",
    "aoflite cursors": "tests/test_cli.py::test_cursors",
    "aoflite segments list": "tests/test_cli.py::test_segments_list, test_segments_list_shows_real_tiers",
    "aoflite segments delete": "tests/test_cli.py::test_segments_delete_never_the_last_copy",
    "aoflite hydrate": "tests/test_cli.py::test_hydrate_brings_segments_back",
    "aoflite tier2 check": "tests/test_cli.py::test_tier2_check, test_tier2_check_retention_and_repair",
    "aoflite top": "tests/test_cli.py::test_top_once, test_top_with_the_writers_metrics",
    "aoflite restore TIER2_URL DEST": "tests/test_cli.py::test_restore_and_drill",
    "aoflite restore TIER2_URL DEST --as-of-lsn 100": "tests/test_cli.py::test_restore_and_drill",
    "aoflite drill TIER2_URL --store": "tests/test_cli.py::test_restore_and_drill",
    "aoflite seal": "tests/test_cli.py::test_seal_and_flush",
    "aoflite flush": "tests/test_cli.py::test_seal_and_flush",
    "aoflite verify": "tests/test_cli.py::test_verify_and_corruption",
    "aoflite manifest check": "tests/test_cli.py::test_manifest_check, test_manifest_check_against_tier2_and_repair",
    "aoflite capacity": "tests/test_cli.py::test_capacity, test_capacity_uses_the_tier_budgets",
    "aoflite config show": "tests/test_cli.py::test_config_show_masks_secrets",
    "aoflite health": "tests/test_cli.py::test_health, test_golden_json",
    "aoflite dump": "tests/test_cli.py::test_dump_table_then_summary_line, test_golden_json",
    "aoflite metrics": "tests/test_cli.py::test_metrics_once, test_metrics_serve (--serve)",
    "aoflite demo": "tests/test_cli.py::test_demo",
}


def blocks(lang: str):
    for doc in DOCS:
        for found in BLOCK.finditer(doc.read_text()):
            if found.group(1) == lang:
                yield pytest.param(found.group(2), id=f"{doc.name}:{doc.read_text()[: found.start()].count(chr(10)) + 1}")


@pytest.mark.parametrize("code", list(blocks("python")))
def test_python_examples_run(code, tmp_path):
    """Every python block in the docs runs as written, each as a script of
    its own in a fresh interpreter and an empty working directory, as a
    user would paste it; so an example may start a second process (a
    multiprocessing child re-imports the script as its main module), and
    nothing one example leaves (threads, failpoints, files) reaches the
    next. Its temporary files go under tmp_path."""
    script, work, temp = tmp_path / "example.py", tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOFLITE_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), TMPDIR=str(temp))
    r = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


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


def _readme_install() -> str:
    readme = (ROOT / "README.md").read_text()
    setup = BLOCK.search(readme.split("## Set-up", 1)[1])
    assert setup
    return setup.group(2).splitlines()[0].split("&&")[0].strip()


def test_scripts_install_as_the_readme_does():
    """tools/test.sh (what CI runs) and tools/fuzz.sh install the package
    the way the README tells a new user to, the test extra aside, so the
    tests check what that user gets."""
    install = _readme_install()
    assert install.startswith("python3 -m pip install -e . ")
    options = install.removeprefix("python3 -m pip install -e . ")
    assert "editable_mode=compat" in options
    for script in ("test.sh", "fuzz.sh"):
        lines = [l for l in (ROOT / "tools" / script).read_text().splitlines() if "pip install" in l]
        assert len(lines) == 1, (script, lines)
        assert "-e '.[test]'" in lines[0] and lines[0].endswith(" " + options), (script, lines[0])


def test_readme_install_lets_mypy_find_the_package(tmp_path):
    """After the README's install, mypy --strict run outside the checkout
    (no PYTHONPATH, no MYPYPATH) finds aoflite and its types and passes on
    tests/data/typed_example.py. Skipped where this interpreter's aoflite
    is not an install of this checkout (tools/test.sh makes one)."""
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e .[test]")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    found = subprocess.run(
        [sys.executable, "-c", "import aoflite; print(aoflite.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    if not found or pathlib.Path(found).resolve().parent != ROOT / "aoflite":
        pytest.skip(f"aoflite here is not installed from {ROOT} (found: {found or 'none'}): run tools/test.sh")
    shutil.copy(ROOT / "tests" / "data" / "typed_example.py", tmp_path / "typed_example.py")
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "typed_example.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_bench_runs(tmp_path):
    """`python tools/bench.py` (here a tiny run) measures aoflite beside its
    peers and reports every target ratio; a smoke run, not a timed test."""
    import json

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
    env = dict(os.environ, AOFLITE_LIBFUZZER_SECONDS="0")
    env.pop("AOFLITE_FUZZ_PROFILE", None)
    r = subprocess.run(
        [str(ROOT / "tools" / "fuzz.sh"), *args, "--collect-only", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"aoflite fuzz profile: {profile}" in r.stdout
    assert "test_powerloss.py" in r.stdout and "test_failpoints.py" in r.stdout


def test_documented_aoflite_commands_run(tmp_path):
    """Each `aoflite` command the docs show runs as written against a small
    store with a file:// Tier 2 (PATH, KEY, DEST and TIER2_URL filled in;
    -f with a short idle timeout), except the ones that run until stopped
    or take minutes: --serve (tests/test_cli.py::test_metrics_serve), top
    without --once (test_top_once) and the bare demo
    (tests/test_cli.py::test_demo)."""
    import shlex

    from click.testing import CliRunner
    from test_cli import make_tiered_store

    from aoflite import cli

    store = str(tmp_path / "store")
    url = make_tiered_store(store, str(tmp_path / "bucket"))
    shown = sorted(c for c in set(shell_commands()) if c.startswith("aoflite "))
    assert len(shown) > 20
    ran = skipped = 0
    for n, command in enumerate(shown):
        forever = "--serve" in command or command == "aoflite demo" or (
            command.startswith("aoflite top ") and "--once" not in command
        )
        if forever:
            skipped += 1
            continue
        args = [
            {"PATH": store if "demo" not in command else str(tmp_path / f"demo{n}"), "KEY": "k1",
             "DEST": str(tmp_path / f"copy{n}"), "TIER2_URL": url}.get(a, a)
            for a in shlex.split(command)[1:]
        ]
        if "-f" in args:
            args[args.index("--idle-timeout") + 1] = "0.2"
        r = CliRunner().invoke(cli.cli, args, catch_exceptions=False)
        assert r.exit_code == 0, (command, r.stderr)
        ran += 1
    assert ran == len(shown) - skipped and skipped <= 6
