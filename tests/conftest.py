"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

import aoflite


@pytest.fixture
def store_path(tmp_path):
    """A path where a new store can be created."""
    return os.path.join(tmp_path, "store")


@pytest.fixture
def db(store_path):
    """A writable store with small segments, closed after the test."""
    handle = aoflite.open(store_path, segment_bytes=1 << 20)
    yield handle
    handle.close()


@pytest.fixture
def bucket(tmp_path):
    """An empty directory to use as a file:// Tier 2 bucket."""
    d = tmp_path / "bucket"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def s3_server():
    """An S3 server for the session (tests/s3server.py): a moto server on a
    free loopback port, or the real one named by AOFLITE_TEST_S3_ENDPOINT."""
    from s3server import s3_server as start_s3_server

    with start_s3_server() as server:
        yield server
