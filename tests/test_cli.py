"""The aoflite command: every command through click's runner, the console
script in real processes, read-only commands beside a live writer, exit
codes, and golden JSON for dump, segments list and health."""

from __future__ import annotations

import configparser
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest
from click.testing import CliRunner

import aoflite
from aoflite import cli, errors, layout

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
T0 = 1_700_000_000_000


def make_store(path: str) -> None:
    """200 records over four keys, a two-key transaction (one value not
    text), a sealed segment, one live record and a cursor: the same bytes
    every time."""
    with aoflite.open(path, segment_bytes=1 << 20) as db:
        for i in range(200):
            db.append(f"k{i % 4}", b"value-%d" % i, timestamp_ms=T0 + i)
        with db.transaction():
            db.append("a", b"x", timestamp_ms=T0 + 500)
            db.append("b", b"\xff\x00", timestamp_ms=T0 + 500)
        db.seal()
        db.append("k1", b"live", timestamp_ms=T0 + 600)
        db.cursor("billing").save(3)


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    make_store(path)
    return path


def run(*args: str, env: dict[str, str] | None = None):
    """The command through click's runner; stdout and stderr apart."""
    return CliRunner().invoke(cli.cli, list(args), env=env, catch_exceptions=False)


def console_script(tmp_path: pathlib.Path) -> list[str]:
    """The aoflite console script as pip writes it from setup.cfg's entry
    point, run against this checkout."""
    entry = configparser.ConfigParser()
    entry.read(ROOT / "setup.cfg")
    scripts = dict(
        line.split("=", 1) for line in entry["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    module, func = scripts["aoflite "].strip().split(":")
    script = tmp_path / "aoflite"
    script.write_text(
        f"#!{sys.executable}\nimport re, sys\nfrom {module} import {func}\n"
        f"if __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({func}())\n"
    )
    script.chmod(0o755)
    return [str(script)]


def script_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


# ------------------------------------------------------------------ commands


def test_info(store):
    r = run("info", store)
    assert r.exit_code == 0, r.stderr
    assert "format version:   1" in r.stdout and "LSN range:        1 .. 203" in r.stdout
    assert "keys:             6" in r.stdout and "billing@3 (lag 200)" in r.stdout
    facts = json.loads(run("info", store, "--json").stdout)
    assert facts["segments"] == {"sealed": 1, "active": 1}
    assert facts["lsn"] == {"first": 1, "last": 203}
    assert facts["time_ms"] == {"first": T0, "last": T0 + 600}
    assert facts["settings"] == {"segment_bytes": 1 << 20, "max_record_bytes": 16 << 20}
    assert facts["lock_holder_pid"] is None
    with aoflite.open(store):
        assert json.loads(run("info", store, "--json").stdout)["lock_holder_pid"] == os.getpid()


def test_keys(store):
    r = run("keys", store)
    assert r.stdout.splitlines()[:3] == ["KEY  RECORDS", "a    1", "b    1"]
    assert {row["key"]: row["records"] for row in json.loads(run("keys", store, "--json").stdout)}["k1"] == 51


@pytest.mark.parametrize(
    "fmt, first",
    [("raw", b"value-5"), ("hex", b"value-5".hex().encode()), ("base64", b"dmFsdWUtNQ==")],
)
def test_cat_formats(store, fmt, first):
    r = run("cat", store, "k1", "--from", "1", "--to", "2", "--format", fmt)
    assert r.exit_code == 0
    assert r.stdout_bytes.splitlines()[0] == first
    assert len(r.stdout_bytes.splitlines()) == 2  # --to is inclusive


def test_cat_json_and_missing_key(store):
    rows = [json.loads(line) for line in run("cat", store, "k1", "--format", "json").stdout.splitlines()]
    assert [r["offset"] for r in rows] == list(range(51)) and rows[-1]["value"] == "bGl2ZQ=="
    r = run("cat", store, "nope")
    assert r.exit_code == 2 and r.stderr == f"aoflite: error: {store}: no key 'nope' in the store\n"


def test_tail_every_key_marks_batches(store):
    r = run("tail", store, "-n", "4")
    lines = r.stdout_bytes.splitlines()
    assert lines[0] == b"200 k3@49 value-199" and lines[1] == b"201 a@0 x"
    assert lines[2] == b"202 b@0 \xff\x00" and lines[3] == b"-- batch end (2 records)"
    assert lines[4] == b"203 k1@50 live"
    assert run("tail", store, "k0", "-n", "2").stdout.splitlines() == ["value-192", "value-196"]


def test_tail_follow_sees_new_records(store, tmp_path):
    """tail -f in another process follows the writer's new records, batch
    by batch (appended until the follower has shown one, however slowly it
    started)."""
    proc = subprocess.Popen(
        [*console_script(tmp_path), "tail", store, "-f", "-n", "0", "--idle-timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=script_env(),
    )
    shown = threading.Event()
    try:
        with aoflite.open(store) as db:

            def write():
                deadline = time.monotonic() + 60
                while not shown.is_set() and time.monotonic() < deadline:
                    db.append_many("new", [b"n1", b"n2"])
                    db.commit()
                    time.sleep(0.2)

            writer = threading.Thread(target=write)
            writer.start()
            first = proc.stdout.readline()
            shown.set()
            writer.join()
        # read on through the same buffer: readline() may have taken more
        # than one line from the pipe, which communicate() would not see
        out = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        shown.set()
        proc.kill()
    lines = [first, *out.splitlines(keepends=True)]
    assert len(lines) % 3 == 0 and lines
    for i in range(0, len(lines), 3):
        lsn, where, value = lines[i].split()
        assert re.fullmatch(rb"new@\d+", where) and value == b"n1" and int(lsn) > 203
        assert lines[i + 1].split()[0] == b"%d" % (int(lsn) + 1) and lines[i + 1].split()[2] == b"n2"
        assert lines[i + 2] == b"-- batch end (2 records)\n"


def test_ledger(store):
    r = run("ledger", store, "--since", "2")
    assert r.stdout.splitlines()[0].split() == ["SEQ", "TIME", "TYPE", "FIELDS"]
    events = json.loads(run("ledger", store, "--json").stdout)
    assert [e["type"] for e in events] == ["StoreCreated", "SegmentOpened", "SealSegment", "SegmentOpened"]
    assert [e["seq"] for e in json.loads(run("ledger", store, "--since", "3", "--json").stdout)] == [3, 4]


def test_export(store):
    rows = [json.loads(line) for line in run("export", store, "--from-lsn", "200", "--to-lsn", "202", "--jsonl").stdout.splitlines()]
    assert [r["lsn"] for r in rows] == [200, 201, 202]
    assert rows[1] == {"lsn": 201, "key": "a", "offset": 0, "timestamp_ms": T0 + 500, "batch_end": False, "value": "eA=="}
    text = [json.loads(line) for line in run("export", store, "--from-lsn", "201", "--text").stdout.splitlines()]
    assert text[0]["value"] == "x" and text[1]["value_base64"] == "/wA=" and text[2]["value"] == "live"


def test_backup(store, tmp_path):
    dest = str(tmp_path / "copy")
    r = run("backup", store, dest)
    assert r.exit_code == 0 and "up to LSN 203" in r.stdout
    with aoflite.open(dest, readonly=True) as copy:
        assert copy.count("k1") == 51


def test_cursors(store):
    assert run("cursors", store).stdout.splitlines()[1].split()[:3] == ["billing", "3", "200"]
    assert json.loads(run("cursors", store, "--json").stdout)[0]["lag_records"] == 200


def test_segments_list(store):
    r = run("segments", "list", store)
    assert r.stdout.splitlines()[1].split()[:6] == ["1", "sealed", "t0", "1", "202", "202"]
    rows = json.loads(run("segments", "list", store, "--json").stdout)
    assert [(s["segment"], s["state"]) for s in rows] == [(1, "sealed"), (2, "active")]
    assert [s["segment"] for s in json.loads(run("segments", "list", store, "--key", "a", "--json").stdout)] == [1]
    assert [s["segment"] for s in json.loads(run("segments", "list", store, "--key", "k1", "--json").stdout)] == [1, 2]
    assert json.loads(run("segments", "list", store, "--tier", "1", "--json").stdout) == []
    assert run("segments", "list", store, "--key", "nope").exit_code == 2
    assert run("segments", "list", store, "--tier", "3").exit_code == 1


def test_seal_and_flush(store):
    assert run("flush", store).stdout == "durable up to LSN 203\n"
    assert run("seal", store).stdout == "sealed segment 2\n"
    assert run("seal", store).stdout == "nothing to seal: the active segment is empty\n"
    with aoflite.open(store):
        r = run("seal", store, "--timeout", "0.1")
        assert r.exit_code == 7 and "another writable handle holds the store" in r.stderr
        assert run("flush", store).exit_code == 7


def test_verify_and_corruption(store):
    r = run("verify", store)
    assert r.exit_code == 0 and r.stdout == "1 sealed segments verified\n"
    seg = layout.segment_path(store, 1)
    with open(seg, "r+b") as f:
        f.seek(300)
        byte = f.read(1)
        f.seek(300)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = run("verify", store)
    assert r.exit_code == 5
    error = r.stderr.splitlines()[-1]  # after the progress bar's
    assert error.startswith("aoflite: error: verifying a segment: ") and error.endswith(
        f"(file {seg}, first bad record at byte 284)"
    )
    assert "Traceback" not in r.stderr
    r = run("--debug", "verify", store)
    assert r.exit_code == 5 and "Traceback" in r.stderr


def test_config_show_masks_secrets(store, tmp_path):
    with open(os.path.join(store, "aoflite.toml"), "w") as f:
        f.write('[tier2]\nurl = "s3://bucket/p"\naccess_key = "AKIDFILE"\nsecret_key = "file-secret"\n'
                '[health]\nhydration_p99_ms = 500\n')
    env = {"AOFLITE_TIER2_SECRET_KEY": "env-secret", "AOFLITE_TIER2_ENDPOINT": "https://user:pw@s3.example"}
    r = run("config", "show", store, env=env)
    assert r.exit_code == 0
    assert "file-secret" not in r.output and "env-secret" not in r.output and "AKIDFILE" not in r.output
    assert "pw@" not in r.output and 'endpoint = "https://***@s3.example"' in r.stdout
    assert 'secret_key = "***"' in r.stdout and "hydration_p99_ms = 500" in r.stdout
    shown = json.loads(run("config", "show", store, "--json", env=env).stdout)
    assert shown["source"] == os.path.join(store, "aoflite.toml") and shown["settings"]["tier2"]["access_key"] == "***"
    assert json.loads(run("config", "show", "--json").stdout)["source"] is None


def test_bad_config_is_refused_naming_file_key_and_reason(store, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[tier1]\nlevel = 99\n')
    r = run("--config", str(bad), "info", store)
    assert r.exit_code == 1
    assert r.stderr == f"aoflite: error: {bad}: setting level=99 is out of range [-7, 22] (in [tier1])\n"
    bad.write_text('[tier2]\nsecret_key = 12345\n')
    r = run("info", store, env={"AOFLITE_CONFIG": str(bad)})
    assert r.exit_code == 1 and "secret_key" in r.stderr and "12345" not in r.stderr
    bad.write_text('[tier2]\nendpoitn = "x"\n')
    r = run("--config", str(bad), "keys", store)
    assert r.exit_code == 1 and str(bad) in r.stderr and "'endpoitn'" in r.stderr and "[tier2]" in r.stderr
    r = run("--config", str(tmp_path / "none.toml"), "keys", store)
    assert r.exit_code == 1 and "no such configuration file" in r.stderr


def test_health(store):
    r = run("health", store)
    assert r.exit_code == 0 and r.stdout.startswith(f"{store}: healthy")
    os.remove(layout.segment_path(store, 1))
    r = run("health", store)
    assert r.exit_code == 6 and "UNHEALTHY: tiers manifest" in r.stdout
    assert "mitigation: run aoflite manifest check PATH" in r.stdout


def test_metrics_once(store):
    r = run("metrics", store)
    assert r.exit_code == 0
    assert f'aoflite_appended_records_total{{store="{store}"}} 203.0' in r.stdout
    assert f'aoflite_segments{{store="{store}",tier="t0"}} 2.0' in r.stdout


def test_metrics_serve(store, tmp_path):
    """metrics --serve in a real process, stopped by SIGTERM."""
    proc = subprocess.Popen(
        [*console_script(tmp_path), "metrics", store, "--serve", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(),
    )
    try:
        line = proc.stderr.readline()
        port = int(re.search(r":(\d+)/metrics", line).group(1))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "aoflite_appended_records_total" in body and "aoflite_hydration_latency_seconds_bucket" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert run("metrics", store, "--serve", "nonsense").exit_code == 1


def test_dump_table_then_summary_line(store):
    lines = run("dump", store).stdout.splitlines()
    assert lines[0].split() == ["TIER", "SEGMENTS", "BYTES"] and lines[1].split()[:2] == ["t0", "2"]
    assert json.loads(lines[-1])["active_segment"] == 2


def test_manifest_check(store):
    r = run("manifest", "check", store)
    assert r.exit_code == 0 and r.stdout == "manifest and local files agree\n"
    open(layout.segment_path(store, 9), "wb").close()
    r = run("manifest", "check", store, "--json")
    assert r.exit_code == 5
    assert json.loads(r.stdout) == [{"segment": 9, "path": layout.segment_path(store, 9), "problem": "file not in the manifest"}]


def test_capacity(store, tmp_path):
    r = run("capacity", store)
    assert r.exit_code == 0 and "BUDGET" in r.stdout
    (tmp_path / "c.toml").write_text("[tier0]\nmax_bytes = 100000000\n")
    facts = json.loads(run("--config", str(tmp_path / "c.toml"), "capacity", store, "--json").stdout)
    assert facts["sealed_segments"] == 1 and facts["bytes_per_day"] > 0
    assert facts["budgets"]["t0"]["budget_bytes"] == 100_000_000 and facts["budgets"]["t0"]["full_in_s"] > 0
    assert facts["budgets"]["t1"]["full_in_s"] is None


def test_demo(tmp_path):
    """aoflite demo runs the demo with its own arguments (a real process:
    the demo prints to the stdout it found at import)."""
    r = subprocess.run([*console_script(tmp_path), "demo", str(tmp_path / "d"), "--records", "2000", "--keys", "5"],
                       capture_output=True, text=True, env=script_env(), timeout=120)
    assert r.returncode == 0 and "read back and checked" in r.stdout, r.stderr
    with aoflite.open(tmp_path / "d", readonly=True) as db:
        assert len(db.keys()) == 5
    assert run("demo", "--records", "0").exit_code == 1


def test_usage_errors_exit_1(store):
    assert run("nosuchcommand").exit_code == 1
    assert run("cat", store).exit_code == 1
    assert run("info", os.path.join(store, "missing")).exit_code == 2


def test_exit_codes_for_errors():
    assert cli.exit_code(errors.Tier2Error("no", "auth", False)) == 3
    assert cli.exit_code(errors.Tier2Error("no", "network", True)) == 4
    assert cli.exit_code(errors.Tier2NotFound("gone")) == 2
    assert cli.exit_code(errors.StorageError(5, "EIO")) == 4
    assert cli.exit_code(errors.CorruptionError("bad")) == 5
    assert cli.exit_code(errors.LockedError("held")) == 7
    assert cli.exit_code(RuntimeError("bug")) == 70


# ------------------------------------------------------- real processes


WRITER = textwrap.dedent(
    """
    import sys, aoflite
    db = aoflite.open(sys.argv[1])
    db.append("live", b"from the writer")
    db.commit()
    print("ready", flush=True)
    sys.stdin.readline()
    db.append("live", b"after the readers")
    db.close()
    print("closed", flush=True)
    """
)


def test_read_only_commands_beside_a_live_writer(store, tmp_path):
    """With another process holding the store for writing, the read-only
    commands work through the console script, report the writer's pid and
    never take its lock; the writer goes on appending."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, store], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=script_env(),
    )
    try:
        assert writer.stdout.readline() == "ready\n"
        script = console_script(tmp_path)
        for args in (["keys"], ["cat", "", "live"], ["tail"], ["ledger"], ["export"], ["cursors"],
                     ["segments", "list"], ["verify"], ["health"], ["dump"], ["metrics"], ["manifest", "check"],
                     ["capacity"], ["config", "show"]):
            argv = [args[0], store, *args[2:]] if args[1:2] == [""] else [*args, store]
            r = subprocess.run([*script, *argv], capture_output=True, env=script_env(), timeout=60)
            assert r.returncode == 0, (argv, r.stderr)
        r = subprocess.run([*script, "info", store, "--json"], capture_output=True, text=True, env=script_env())
        assert json.loads(r.stdout)["lock_holder_pid"] == writer.pid
        r = subprocess.run([*script, "backup", store, str(tmp_path / "b")], capture_output=True, text=True, env=script_env())
        assert r.returncode == 0 and "LSN 204" in r.stdout
        r = subprocess.run([*script, "seal", store], capture_output=True, text=True, env=script_env())
        assert r.returncode == 7 and r.stderr.count("\n") == 1
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "closed\n"
        assert writer.wait(timeout=30) == 0
    finally:
        writer.kill()
    with aoflite.open(store, readonly=True) as db:
        assert [r.value for r in db.scan("live")] == [b"from the writer", b"after the readers"]


def test_python_m_aoflite_is_the_same_program(store):
    r = subprocess.run([sys.executable, "-m", "aoflite", "keys", store, "--json"], capture_output=True, text=True,
                       env=script_env(), cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout)[0] == {"key": "a", "records": 1}
    r = subprocess.run([sys.executable, "-m", "aoflite", "--help"], capture_output=True, text=True, env=script_env())
    assert "Usage: aoflite" in r.stdout


# ---------------------------------------------------------------- golden


def normalize(obj, store):
    """Volatile fields (paths, times, sizes on disk) as placeholders."""
    if isinstance(obj, dict):
        return {
            k: ("<ms>" if v and k.endswith("_ms") else "<bytes>" if k == "disk_bytes" else normalize(v, store))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [normalize(v, store) for v in obj]
    if isinstance(obj, str):
        return obj.replace(store, "<store>")
    return obj


@pytest.mark.parametrize(
    "name, args",
    [("dump", ["dump", "{store}", "--json"]),
     ("segments-list", ["segments", "list", "{store}", "--json"]),
     ("health", ["health", "{store}", "--json"])],
)
def test_golden_json(store, name, args):
    r = run(*(a.format(store=store) for a in args))
    assert r.exit_code == 0, r.stderr
    got = normalize(json.loads(r.stdout), store)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("AOFLITE_UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text()), f"{name} --json changed; rerun with AOFLITE_UPDATE_GOLDEN=1 if meant"
