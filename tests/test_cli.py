"""The aoflite command: every command through click's runner, the console
script in real processes, read-only commands beside a live writer, exit
codes, and golden JSON for dump, segments list and health."""

from __future__ import annotations

import configparser
import contextlib
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
from aoflite import admin, cli, errors, layout

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


def make_tiered_store(path: str, bucket: str) -> str:
    """make_store's store with a file:// Tier 2 at bucket (no budgets:
    every copy stays), drained: segment 1 in all three tiers. Returns the
    Tier 2 URL."""
    make_store(path)
    url = f"file://{bucket}"
    os.makedirs(bucket, exist_ok=True)
    with aoflite.open(path, tier2_url=url) as db:
        db.drain_tiers(timeout=60)
    return url


@pytest.fixture
def tiered(tmp_path):
    """(store path, Tier 2 URL, bucket directory) of make_tiered_store."""
    path, bucket = str(tmp_path / "store"), str(tmp_path / "bucket")
    return path, make_tiered_store(path, bucket), bucket


def backend_of(url: str):
    from aoflite.tiers.base import open_backend

    return open_backend(url)


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
    assert r.stdout.splitlines()[0].split()[:5] == ["SEGMENT", "STATE", "T0", "T1", "T2"]
    assert r.stdout.splitlines()[1].split()[:8] == ["1", "sealed", "12047", "-", "-", "1", "202", "202"]
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
    assert json.loads(r.stdout) == [
        {"segment": 9, "kind": "unknown_file", "path": layout.segment_path(store, 9), "problem": "file not in the manifest"}
    ]
    # an empty file is no segment: the writable open --repair needs discards it
    r = run("manifest", "check", store, "--repair")
    assert r.exit_code == 0 and "fixed when the store opened for writing" in r.stdout
    assert not os.path.exists(layout.segment_path(store, 9))


def test_capacity(store, tmp_path):
    r = run("capacity", store)
    assert r.exit_code == 0 and "BUDGET" in r.stdout
    (tmp_path / "c.toml").write_text("[tier0]\nmax_bytes = 100000000\n")
    facts = json.loads(run("--config", str(tmp_path / "c.toml"), "capacity", store, "--json").stdout)
    assert facts["sealed_segments"] == 1 and facts["bytes_per_day"] > 0
    assert facts["budgets"]["t0"]["budget_bytes"] == 100_000_000 and facts["budgets"]["t0"]["full_in_s"] > 0
    assert facts["budgets"]["t1"]["full_in_s"] is None


# ------------------------------------------------------------------ tiers


def only_in_tier2(path: str, segment: int) -> None:
    """Delete segment's local copies through the command, leaving Tier 2's."""
    for tier in ("0", "1"):
        r = run("segments", "delete", path, str(segment), "--tier", tier)
        assert r.exit_code == 0, r.stderr


def test_segments_list_shows_real_tiers(tiered):
    path, url, bucket = tiered
    rows = json.loads(run("segments", "list", path, "--json").stdout)
    assert set(rows[0]["tiers"]) == {"t0", "t1", "t2"} and rows[0]["tiers"]["t0"] == 12047
    assert rows[1]["tiers"] == {"t0": 150}
    assert [r["segment"] for r in json.loads(run("segments", "list", path, "--tier", "2", "--json").stdout)] == [1]
    only_in_tier2(path, 1)
    assert [r["segment"] for r in json.loads(run("segments", "list", path, "--tier", "0", "--json").stdout)] == [2]
    assert json.loads(run("segments", "list", path, "--tier", "1", "--json").stdout) == []
    line = run("segments", "list", path).stdout.splitlines()[1].split()
    assert line[:4] == ["1", "sealed", "-", "-"] and int(line[4]) == rows[0]["tiers"]["t2"]


def test_dump_per_tier_queues_and_backlog(tiered):
    path, url, bucket = tiered
    only_in_tier2(path, 1)
    r = run("dump", path)
    lines = r.stdout.splitlines()
    assert [l.split()[:2] for l in lines[1:4]] == [["t0", "1"], ["t1", "0"], ["t2", "1"]]
    assert "active segment: 2 (1 records, 150 bytes)" in r.stdout
    assert "queues: activation=-, compression=0, upload=0, hydration=0" in r.stdout
    assert f"backlog (Tier 2 {url}): records=0, bytes=0, seconds=0.0" in r.stdout
    facts = json.loads(lines[-1])
    assert facts["queues"]["activation"] is None and facts["tier2_url"] == url
    assert facts == json.loads(run("dump", path, "--json").stdout) | {"disk_bytes": facts["disk_bytes"]}
    # a sealed segment Tier 2 lacks is the backlog
    with aoflite.open(path) as db:
        db.append("k1", b"more")
        db.seal()
        db.manifest.record_tier(3, "UploadFailed", reason="test")
        facts = admin.dump(db)
        assert facts["queues"]["activation"] == 0


def test_dump_backlog_counts_what_tier2_lacks(tmp_path):
    """A store whose Tier 2 went away: the sealed segments not uploaded are
    the backlog, worked out from the manifest by a read-only handle."""
    path, bucket = str(tmp_path / "store"), tmp_path / "bucket"
    make_store(path)
    with open(os.path.join(path, "aoflite.toml"), "w") as f:
        f.write(f'[tier2]\nurl = "file://{bucket}"\n')  # no such directory: nothing uploads
    facts = json.loads(run("dump", path, "--json").stdout)
    assert facts["backlog"]["tier2_records"] == 202 and facts["backlog"]["tier2_bytes"] == 12047
    assert facts["backlog"]["tier2_seconds"] > 0


def test_hydrate_brings_segments_back(tiered):
    path, url, bucket = tiered
    only_in_tier2(path, 1)
    assert not os.path.exists(layout.segment_path(path, 1))
    r = run("hydrate", path, "--segment", "1")
    assert r.exit_code == 0, r.stderr
    assert "segment 1: fetched from t2 (12047 bytes)" in r.stdout and "hydrated 1 segments (12047 bytes); 0 already local" in r.stdout
    assert "hydrating" in r.stderr  # the progress bar
    assert os.path.getsize(layout.segment_path(path, 1)) == 12047
    rows = json.loads(run("hydrate", path, "--key", "k1", "--from", "0", "--to", "60", "--json").stdout)
    assert rows == [{"segment": 1, "source": "t0", "bytes": 12047}]
    # from the Tier 1 copy the Tier 2 fetch left behind
    assert run("segments", "delete", path, "1", "--tier", "0").exit_code == 0
    r = run("hydrate", path, "--key", "a")
    assert "segment 1: fetched from t1" in r.stdout
    assert run("hydrate", path).exit_code == 1
    assert run("hydrate", path, "--segment", "1", "--key", "a").exit_code == 1
    assert run("hydrate", path, "--segment", "1", "--from", "3").exit_code == 1
    assert run("hydrate", path, "--segment", "99").exit_code == 2
    assert run("hydrate", path, "--key", "nope").exit_code == 2


def test_segments_delete_never_the_last_copy(tiered):
    path, url, bucket = tiered
    obj = os.path.join(bucket, "segments", "00000000000000000001.zst")
    r = run("segments", "delete", path, "1", "--tier", "2")
    assert r.exit_code == 1 and "without --force" in r.stderr and os.path.exists(obj)
    r = run("segments", "delete", path, "1", "--tier", "2", "--force", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"segment": 1, "tier": "t2", "bytes": os.path.getsize(
        layout.tier1_path(path, 1)), "remaining": ["t0", "t1"]}
    assert not os.path.exists(obj)
    event = json.loads(run("ledger", path, "--json").stdout)[-1]
    assert (event["type"], event["segment"], event["object"]) == ("Tier2Deleted", 1, "segments/00000000000000000001.zst")
    # (the writable open may let the pipeline upload it again before the delete: a copy either way)
    r = run("segments", "delete", path, "1", "--tier", "1")
    assert r.exit_code == 0 and r.stdout.startswith("deleted segment 1's Tier 1 copy (")
    event = json.loads(run("ledger", path, "--json").stdout)[-1]
    assert (event["type"], event["tier"], event["by"]) == ("LocalEvicted", "t1", "cli")
    # a store without tiers: Tier 0 holds the only copy
    store = make_plain(path)
    for force in ([], ["--force"]):
        r = run("segments", "delete", store, "1", "--tier", "0", *force)
        assert r.exit_code == 1 and "it is the only one" in r.stderr and "--force does not override this" in r.stderr
        assert r.stderr.count("\n") == 1
    assert os.path.exists(layout.segment_path(store, 1))
    assert run("segments", "delete", store, "1", "--tier", "1").exit_code == 2  # no such copy
    assert run("segments", "delete", store, "1", "--tier", "2", "--force").exit_code == 1  # no Tier 2 at all
    assert run("segments", "delete", store, "2", "--tier", "0").exit_code == 1  # the active segment
    assert run("segments", "delete", store, "9", "--tier", "0").exit_code == 2
    with aoflite.open(store, readonly=True) as db:
        assert db.manifest.segment(1).tiers == ["t0"] and db.count("k1") == 51
    with aoflite.open(path):
        r = run("segments", "delete", path, "1", "--tier", "0")
        assert r.exit_code == 7 and "another writable handle holds the store" in r.stderr


def test_tier2_check(tiered, monkeypatch):
    path, url, bucket = tiered
    r = run("tier2", "check", path)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{url}: reachable, credentials valid; 1 objects, 1 segments checked, 0 deletions queued",
        "objects, manifest and retention agree",
    ]
    backend = backend_of(url)
    backend.put("segments/00000000000000000042.zst", layout.tier1_path(path, 1), records=1)  # an orphan
    backend.put("segments/00000000000000000002.zst", layout.tier1_path(path, 1), records=1)  # the active one's
    os.remove(os.path.join(bucket, "segments", "00000000000000000001.zst"))
    r = run("tier2", "check", path, "--json")
    assert r.exit_code == 5
    got = {(p["check"], p["kind"], p["segment"]) for p in json.loads(r.stdout)["problems"]}
    assert got == {("objects", "t2_missing", 1), ("orphans", "t2_orphan", 42), ("orphans", "t2_unrecorded", 2)}
    assert "in the manifest's Tier 2, object missing" in run("tier2", "check", path).stdout
    # credentials refused: exit 3, one line
    from aoflite.tiers.local import LocalBackend

    def refused(self, prefix=""):
        raise errors.Tier2Error("listing segments/: InvalidAccessKeyId (check the access key and secret key)", "auth", False)

    monkeypatch.setattr(LocalBackend, "list", refused)
    r = run("tier2", "check", path)
    assert r.exit_code == 3 and r.stderr == "aoflite: error: listing segments/: InvalidAccessKeyId (check the access key and secret key)\n"
    assert run("tier2", "check", make_plain(path)).exit_code == 1


def make_plain(path: str) -> str:
    plain = path + "-plain"
    make_store(plain)
    return plain


def test_tier2_check_retention_and_repair(tiered):
    """A segment retired by retention whose object was not deleted yet is a
    retention problem; manifest check --repair deletes the object."""
    from aoflite.manifest import Manifest

    path, url, bucket = tiered
    with aoflite.open(path) as db:
        db.append("k1", b"more")
        db.seal()
        db.drain_tiers(timeout=60)
    m = Manifest(layout.manifest_dir(path))
    try:
        m.retire_segment(1, reason="max_segments", object_name="segments/00000000000000000001.zst", overrun={})
    finally:
        m.close()
    r = run("tier2", "check", path, "--json")
    assert r.exit_code == 5
    facts = json.loads(r.stdout)
    assert facts["queued_deletes"] == 1
    assert [(p["check"], p["kind"], p["segment"]) for p in facts["problems"]] == [("retention", "t2_delete_pending", 1)]
    problems = json.loads(run("manifest", "check", path, "--json").stdout)
    assert {p["kind"] for p in problems} == {"unknown_file", "unknown_t1_file", "t2_delete_pending"}
    r = run("manifest", "check", path, "--repair")
    assert r.exit_code == 0, r.stdout
    assert not os.path.exists(os.path.join(bucket, "segments", "00000000000000000001.zst"))
    assert not os.path.exists(layout.segment_path(path, 1)) and not os.path.exists(layout.tier1_path(path, 1))
    assert run("tier2", "check", path).exit_code == 0
    assert run("manifest", "check", path).stdout == "manifest, local files and Tier 2 agree\n"


def test_manifest_check_against_tier2_and_repair(tiered, tmp_path):
    path, url, bucket = tiered
    assert run("manifest", "check", path).stdout == "manifest, local files and Tier 2 agree\n"
    os.remove(os.path.join(bucket, "segments", "00000000000000000001.zst"))
    os.remove(layout.tier1_path(path, 1))
    r = run("manifest", "check", path, "--json")
    assert r.exit_code == 5
    assert {(p["kind"], p["segment"]) for p in json.loads(r.stdout)} == {("t2_missing", 1), ("t1_missing", 1)}
    r = run("manifest", "check", path, "--repair", "--json")
    assert r.exit_code == 0
    repairs = {p["kind"]: p["repair"] for p in json.loads(r.stdout)}
    assert repairs["t2_missing"].startswith("re-marked: not in Tier 2 (copies in t0")
    assert repairs["t1_missing"].startswith("re-marked: no Tier 1 copy (copies in t0")
    assert run("manifest", "check", path).exit_code == 0
    # the writer uploads it again
    with aoflite.open(path) as db:
        db.drain_tiers(timeout=60)
        assert "t2" in db.manifest.segment(1).tiers
    assert run("tier2", "check", path).exit_code == 0
    # an object the manifest lost track of, identical to the segment's: re-marked
    with aoflite.open(path) as db:
        admin.quiet_pipeline(db)  # else it uploads the segment again at once
        db.manifest.record_tier(1, "UploadFailed", remove=("t2",), reason="test")
        problems = admin.tier2_compare(db, backend_of(url))
        assert [p["kind"] for p in problems] == ["t2_unrecorded"]
        done = admin.repair(db, problems)
        assert done[0]["repair"] == "re-marked: in Tier 2 (the object matches the segment)"
        assert "t2" in db.manifest.segment(1).tiers
    # the only copy replaced by other bytes: left alone, exit 5, nothing deleted
    only_in_tier2(path, 1)
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk" * 100)
    backend_of(url).put("segments/00000000000000000001.zst", junk, records=1)
    r = run("manifest", "check", path, "--repair")
    assert r.exit_code == 5 and "left alone: no other copy of the segment exists" in r.stdout
    assert "object is 400 bytes with SHA-256" in r.stdout
    assert os.path.getsize(os.path.join(bucket, "segments", "00000000000000000001.zst")) == 400


def test_top_once(store):
    r = run("top", store, "--once", "--interval", "0.1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"aoflite top {store}") and "cursor lag: billing=200 records" in r.stdout
    assert "queues:  activation=-, compression=0, upload=0, hydration=0" in r.stdout


def test_top_with_the_writers_metrics(store):
    """Beside a writer that serves its metrics, top shows the append and
    flush rates, flush latency and backpressure that only it knows."""
    with aoflite.open(store) as db, db.serve_metrics(0) as server, appending(db):
        r = run("top", store, "--once", "--json", "--interval", "0.5",
                "--metrics-url", f"http://127.0.0.1:{server.port}/metrics")
    assert r.exit_code == 0, r.stderr
    frame = json.loads(r.stdout)
    assert frame["append_records_per_s"] > 0 and frame["append_bytes_per_s"] > 0
    assert frame["flushes_per_s"] > 0 and frame["flush_latency_ms"] > 0
    assert frame["backpressure"] == {k: 0 for k in errors.BackpressureError.KINDS}
    assert frame["queues"]["activation"] == 0 and frame["cursor_lag"]["billing"] > 200


def test_restore_and_drill(tiered, tmp_path):
    path, url, bucket = tiered
    dest = str(tmp_path / "restored")
    r = run("restore", url, dest)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"restored {url} to {dest}: every record up to LSN 202\n"
    with aoflite.open(dest, readonly=True) as db:
        assert db.count("k1") == 50 and [x.value for x in db.scan("b")] == [b"\xff\x00"]
    r = run("restore", url, str(tmp_path / "r2"), "--as-of-lsn", "100")
    assert r.exit_code == 0 and "up to LSN 100" in r.stdout
    assert run("restore", url, str(tmp_path / "r3"), "--as-of-lsn", "1", "--as-of-time-ms", "1").exit_code == 1
    r = run("drill", url, "--store", path, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["segments"] == 1 and report["records"] == 202 and report["last_lsn"] == 202
    assert report["differences"] == [] and report["trails"]["records"] == 1 and report["trails"]["segments"] == 0
    r = run("drill", url, "--store", path)
    assert "every one verified" in r.stdout and "the bucket trails the store by 1 records" in r.stdout
    assert run("drill", url).exit_code == 0


def test_restore_and_drill_call_the_restore_contract(tiered, tmp_path, monkeypatch):
    """The commands' side of aoflite.restore(tier2_url, path, as_of_lsn=None,
    as_of_time_ms=None, **settings) -> last LSN, with a stand-in that
    copies the live store (a backup) in its place: the arguments passed,
    the verification and the comparison with the live manifest."""
    path, url, bucket = tiered
    calls = []

    def stand_in(tier2_url, dest, as_of_lsn=None, as_of_time_ms=None, **settings):
        calls.append((tier2_url, dest, as_of_lsn, as_of_time_ms, settings))
        with aoflite.open(path, readonly=True) as live:
            return min(live.backup(dest), 203)  # as if the bucket held what the store had at first

    monkeypatch.setattr(aoflite, "restore", stand_in, raising=False)
    dest = str(tmp_path / "r")
    r = run("restore", url, dest, "--as-of-time-ms", "5", env={"AOFLITE_TIER2_ACCESS_KEY": "AKID"})
    assert r.exit_code == 0 and r.stdout == f"restored {url} to {dest}: every record up to LSN 203\n"
    assert calls[-1] == (url, dest, None, 5, {"tier2_access_key": "AKID"})
    r = run("drill", url, "--store", path, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["segments"], report["records"], report["first_lsn"], report["last_lsn"]) == (1, 202, 1, 203)
    assert report["differences"] == [] and report["trails"] == {"records": 0, "segments": 0, "seconds": 0.0}
    assert report["scratch"] is None and not os.path.exists(calls[-1][1])  # the scratch directory is gone
    with aoflite.open(path) as db:
        db.append("k1", b"after the drill")
    r = run("drill", url, "--store", path, "--scratch", str(tmp_path / "kept"))
    assert "the bucket trails the store by 1 records (0 segments" in r.stdout
    assert os.path.exists(tmp_path / "kept")


def test_capacity_uses_the_tier_budgets(tiered, tmp_path):
    path, url, bucket = tiered
    (tmp_path / "c.toml").write_text("[tier0]\nmax_bytes = 20000\n[tier1]\nmax_bytes = 1000\n")
    r = run("--config", str(tmp_path / "c.toml"), "capacity", path, "--json")
    facts = json.loads(r.stdout)
    t0, t1 = facts["budgets"]["t0"], facts["budgets"]["t1"]
    assert t0["used_bytes"] == 12047 and t0["budget_bytes"] == 20000 and t0["full_in_s"] > 0
    assert t0["then"] == "evicts the least recently used segments held in a lower tier"
    assert 0 < facts["tier1_ratio"] < 1
    assert t1["full_in_s"] == 0.0 and t1["then"] == "evicts segments Tier 2 holds"
    assert t1["growth_bytes_per_day"] == pytest.approx(facts["bytes_per_day"] * facts["tier1_ratio"])
    r = run("--config", str(tmp_path / "c.toml"), "capacity", path)
    assert "GROWTH/DAY" in r.stdout and "now" in r.stdout and "Tier 1 keeps" in r.stdout


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


def refused_then_close(writer: subprocess.Popen, argv: list[str]) -> None:
    """argv, a command that needs the writer's lock, exits 7 with one line
    while writer holds the store; then the writer closes cleanly."""
    r = subprocess.run(argv, capture_output=True, text=True, env=script_env())
    assert r.returncode == 7 and r.stderr.count("\n") == 1
    writer.stdin.write("\n")
    writer.stdin.flush()
    assert writer.stdout.readline() == "closed\n"
    assert writer.wait(timeout=30) == 0


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
        refused_then_close(writer, [*script, "seal", store])
    finally:
        writer.kill()
    with aoflite.open(store, readonly=True) as db:
        assert [r.value for r in db.scan("live")] == [b"from the writer", b"after the readers"]


@contextlib.contextmanager
def appending(db):
    """A thread appending and committing small records to db until the
    block ends."""
    stop = threading.Event()

    def write():
        while not stop.is_set():
            db.append("busy", b"x" * 100)
            db.commit()
            stop.wait(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


TIERED_WRITER = textwrap.dedent(
    """
    import sys, aoflite
    sys.path.insert(0, sys.argv[3])
    from test_cli import appending
    with aoflite.open(sys.argv[1], tier2_url=sys.argv[2], segment_bytes=64 << 20) as db:  # no roll meanwhile
        db.drain_tiers(timeout=60)
        with appending(db):
            print("ready", flush=True)
            sys.stdin.readline()
    print("closed", flush=True)
    """
)


def test_tier_commands_beside_a_live_writer(tiered, tmp_path):
    """While another process appends to a store with a Tier 2, the read-only
    tier commands work through the console script and see its appends."""
    path, url, bucket = tiered
    writer = subprocess.Popen(
        [sys.executable, "-c", TIERED_WRITER, path, url, str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=script_env(),
    )
    try:
        assert writer.stdout.readline() == "ready\n"
        script = console_script(tmp_path)
        for args in (["dump"], ["segments", "list", "--tier", "2"], ["tier2", "check"], ["manifest", "check"],
                     ["capacity"], ["hydrate", "--segment", "1"], ["top", "--once", "--interval", "0.3"]):
            r = subprocess.run([*script, *args, path], capture_output=True, text=True, env=script_env(), timeout=60)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            if args[0] == "top":
                rate = float(r.stdout.splitlines()[1].split()[1].replace(",", ""))
                assert rate > 0, r.stdout  # the writer's appends
            if args[0] == "tier2":
                assert "objects, manifest and retention agree" in r.stdout
        refused_then_close(writer, [*script, "segments", "delete", path, "1", "--tier", "1"])
    finally:
        writer.kill()


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
