"""An S3 server for the tests: an in-process moto server on 127.0.0.1, or
the real S3-compatible server named by the environment.

With AOFLITE_TEST_S3_ENDPOINT set (an http:// or https:// URL), the tests
use that server with AOFLITE_TEST_S3_ACCESS_KEY, AOFLITE_TEST_S3_SECRET_KEY
and the bucket AOFLITE_TEST_S3_BUCKET (created if missing). Otherwise a
moto server is started on a free loopback port for the session, with a
bucket of its own, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Iterator

from minio import Minio

from aoflite.tiers.base import RetryPolicy

__all__ = ["S3Server", "s3_server"]

ENV_ENDPOINT = "AOFLITE_TEST_S3_ENDPOINT"
ENV_ACCESS_KEY = "AOFLITE_TEST_S3_ACCESS_KEY"
ENV_SECRET_KEY = "AOFLITE_TEST_S3_SECRET_KEY"
ENV_BUCKET = "AOFLITE_TEST_S3_BUCKET"

#: Retries for tests: a few, quickly, so failures show in well under a second.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_ms=1, max_delay_ms=5, jitter=0)


@dataclasses.dataclass(frozen=True)
class S3Server:
    """Where the test server is and how to reach it."""

    endpoint: str  #: http://127.0.0.1:PORT for moto
    access_key: str
    secret_key: str
    bucket: str
    real: bool  #: True when it came from the environment

    def client(self) -> Minio:
        """A plain minio client, for looking behind a backend's back."""
        host = self.endpoint.split("://", 1)[1].rstrip("/")
        return Minio(host, self.access_key, self.secret_key, secure=self.endpoint.startswith("https"), region="us-east-1")

    def settings(self, **more: Any) -> dict[str, Any]:
        """aoflite.open() settings that reach this server (give tier2_url)."""
        return {
            "tier2_endpoint": self.endpoint,
            "tier2_access_key": self.access_key,
            "tier2_secret_key": self.secret_key,
            **more,
        }

    def options(self, **more: Any) -> dict[str, Any]:
        """open_backend() options for this server."""
        return {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "retry": FAST_RETRY,
            **more,
        }


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """The real server from the environment, or a moto server for the
    duration of the block."""
    endpoint = os.environ.get(ENV_ENDPOINT)
    if endpoint:
        server = S3Server(
            endpoint,
            os.environ.get(ENV_ACCESS_KEY, ""),
            os.environ.get(ENV_SECRET_KEY, ""),
            os.environ.get(ENV_BUCKET, "aoflite-test"),
            real=True,
        )
        client = server.client()
        if not client.bucket_exists(server.bucket):
            client.make_bucket(server.bucket)
        yield server
        return

    from moto.server import ThreadedMotoServer

    # The server logs every request to stderr; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        server = S3Server(f"http://{host}:{port}", "test-access-key", "test-secret-key", "aoflite-test", real=False)
        server.client().make_bucket(server.bucket)
        yield server
    finally:
        moto.stop()
