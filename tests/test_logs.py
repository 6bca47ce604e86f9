"""Structured logs: one event name per line, fields as JSON, no credentials."""

from __future__ import annotations

import io
import json
import logging

import pytest

from aoflite.logs import EVENTS, JsonFormatter, configure, log_event


@pytest.fixture
def logged():
    stream = io.StringIO()
    handler = configure(logging.DEBUG, json_lines=True, stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logging.getLogger("aoflite").removeHandler(handler)
    logging.getLogger("aoflite").setLevel(logging.NOTSET)


def test_json_lines(logged):
    log = logging.getLogger("aoflite.tiers")
    log_event(log, "upload_retry", level=logging.WARNING, segment=12, tier="t2", attempt=3, error=TimeoutError("slow"))
    log_event(log, "hydration_done", segment=4, key="k", tier="t1", seconds=0.25, ignored=None)
    log.info("plain %s", "message")
    first, second, third = logged()
    assert first["event"] == "upload_retry" and first["level"] == "warning" and first["logger"] == "aoflite.tiers"
    assert (first["segment"], first["tier"], first["attempt"], first["error"]) == (12, "t2", 3, "TimeoutError: slow")
    assert first["time"].endswith("Z")
    assert second == {**second, "event": "hydration_done", "key": "k", "seconds": 0.25} and "ignored" not in second
    assert third["message"] == "plain message" and "event" not in third


def test_no_credentials(logged):
    log = logging.getLogger("aoflite")
    log_event(log, "tier2_fetch_failed", secret_key="s3cr3t", access_key="AKID", segment=1,
              error="GET https://AKID:s3cr3t@host/bucket failed")
    line = logged()[0]
    text = json.dumps(line)
    assert "s3cr3t" not in text and "AKID" not in text
    assert line["secret_key"] == "***" and line["error"] == "GET https://***@host/bucket failed"


def test_plain_text_names_the_event_first():
    record = []

    class Keep(logging.Handler):
        def emit(self, r):
            record.append(self.format(r))

    log = logging.getLogger("aoflite.test_plain")
    handler = Keep()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log_event(log, "segment_sealed", segment=3, bytes=1024)
    finally:
        log.removeHandler(handler)
    assert record == ["segment_sealed segment=3 bytes=1024"]
    assert JsonFormatter  # the JSON shape is tested above


def test_event_names():
    assert {"tier2_fetch_failed", "upload_retry", "flush_failed", "hydration_done", "segment_sealed"} <= EVENTS
    with pytest.raises(ValueError):
        log_event(logging.getLogger("aoflite"), "Not An Event")
