"""The demo: the README's first command."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

import aoflite
from aoflite import demo


def test_demo_runs_as_documented(tmp_path):
    """`python3 -m aoflite demo PATH` writes, checks and reports."""
    path = tmp_path / "demo-store"
    out = subprocess.run(
        [sys.executable, "-m", "aoflite", "demo", str(path), "--records", "20000", "--keys", "40"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "all 20,00" in out and "read back and checked" in out
    assert "sealed" in out and "throughput" in out
    # the tiers at work: where each segment lives, before and after
    assert "t2 (bucket)" in out and "after drain_tiers" in out and "hydrating" in out
    assert os.listdir(str(path) + ".tier2")
    with aoflite.open(path, readonly=True) as db:
        assert len(db.keys()) == 40
        assert sum(db.count(k) for k in db.keys()) >= 20000


def test_demo_default_path_is_removed(tmp_path, monkeypatch):
    """Without PATH the demo uses a temporary directory and removes it."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert demo.main(["--records", "3000", "--keys", "5"]) == 0
    assert os.listdir(tmp_path) == []


def test_demo_against_s3(s3_server, tmp_path, monkeypatch):
    """--tier2-url s3://... runs the same demo against an S3 endpoint, with
    the endpoint and credentials from the environment."""
    monkeypatch.setenv("AOFLITE_TIER2_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AOFLITE_TIER2_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("AOFLITE_TIER2_SECRET_KEY", s3_server.secret_key)
    prefix = f"demo-{os.getpid()}"
    buf = io.StringIO()
    demo.run(str(tmp_path / "s"), 30_000, 20, out=buf, tier2_url=f"s3://{s3_server.bucket}/{prefix}")
    assert f"s3://{s3_server.bucket}/{prefix}" in buf.getvalue()
    objects = list(s3_server.client().list_objects(s3_server.bucket, prefix=prefix + "/", recursive=True))
    assert objects


def test_demo_rejects_bad_arguments(capsys):
    """Nonsense sizes get a usage error, not a traceback."""
    with pytest.raises(SystemExit) as e:
        demo.main(["--records", "0"])
    assert e.value.code == 2
    assert "--records" in capsys.readouterr().err


def test_module_entry_requires_a_command():
    """`python -m aoflite` (the aoflite command) without one explains its
    usage, demo among the commands."""
    r = subprocess.run([sys.executable, "-m", "aoflite"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Usage: aoflite" in r.stderr and "\n  demo " in r.stderr


def test_run_reports_rates(tmp_path):
    """run() returns the rates it printed."""
    buf = io.StringIO()
    rates = demo.run(str(tmp_path / "s"), 5000, 10, out=buf)
    assert set(rates) >= {"append", "append_many", "point read (any tier)", "scan_all"}
    assert all(r > 0 for r in rates.values())
