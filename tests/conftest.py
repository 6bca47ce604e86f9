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
