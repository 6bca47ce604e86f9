"""A fault-injecting HTTP proxy for tests: it sits on 127.0.0.1 between an
S3 client and an S3 server and, on command, answers a request with a fault
instead of forwarding it.

Faults (``FaultProxy.inject(kind, times=..., method=...)``):

- ``"error"``: an S3 error answer without forwarding (default 503
  SlowDown; ``status`` and ``code`` choose another, e.g. 403 AccessDenied).
- ``"reset"``: read the request, then reset the connection (RST).
- ``"delay"``: wait ``seconds`` before forwarding (a slow store).
- ``"truncate"``: forward, then send only half the body and close, the
  header still announcing the whole length (a cut connection).
- ``"short"``: forward, then send half the body with a Content-Length
  saying half (a lying answer only a size or checksum check catches).

One request per connection (every answer says ``Connection: close``)
keeps the parsing small. Every socket has a timeout, every wait ends at
``stop()``, and ``stop()`` joins every thread it started.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

__all__ = ["FaultProxy"]

KINDS = ("error", "reset", "delay", "truncate", "short")
_MAX_HEAD = 64 << 10


class FaultProxy:
    """A threaded loopback HTTP/1.1 proxy to ``upstream`` (host, port)."""

    def __init__(self, upstream: tuple[str, int], *, io_timeout: float = 10.0):
        self.upstream = upstream
        self.io_timeout = io_timeout
        self.requests = 0  #: requests seen
        self.injected: list[str] = []  #: faults applied, in order
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so the accept loop sees stop()
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ commands

    def start(self) -> FaultProxy:
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def inject(
        self,
        kind: str,
        times: int = 1,
        *,
        method: str | None = None,
        status: int = 503,
        code: str = "SlowDown",
        seconds: float = 1.0,
    ) -> None:
        """Apply fault ``kind`` to the next ``times`` requests (of ``method``
        only, when given). Faults queue up in the order injected."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}, expected one of {KINDS}")
        with self._lock:
            self._faults.append(
                {"kind": kind, "left": times, "method": method, "status": status, "code": code, "seconds": seconds}
            )

    def clear(self) -> None:
        """Drop every fault not yet applied."""
        with self._lock:
            self._faults.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket and join every thread; RuntimeError if one
        does not finish within ``timeout`` seconds."""
        self._stop.set()
        self._listener.close()
        self._acceptor.join(timeout)  # no connection threads start after this
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            _close(sock)
        for thread in threads:
            thread.join(timeout)
        alive = [t.name for t in (self._acceptor, *threads) if t.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads still running after {timeout}s: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ plumbing

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"faultproxy-{self.requests}", daemon=True)
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        sock.settimeout(self.io_timeout)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        _close(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # the listener was closed by stop()
            self._spawn(self._serve, self._track(client))

    def _take(self, method: str) -> dict[str, Any] | None:
        with self._lock:
            self.requests += 1
            for fault in self._faults:
                if fault["method"] in (None, method):
                    fault["left"] -= 1
                    if fault["left"] <= 0:
                        self._faults.remove(fault)
                    self.injected.append(fault["kind"])
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            request = _read_head(client)
            if request is None:
                return
            head, rest = request
            method = head.split(b" ", 1)[0].decode()
            length = int(_header(head, b"content-length") or 0)
            body = rest + _read_exact(client, length - len(rest))
            fault = self._take(method)
            kind = fault["kind"] if fault else None
            if kind == "reset":
                # SO_LINGER with a zero timeout makes close() send RST.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if kind == "error":
                client.sendall(_error_answer(method, fault["status"], fault["code"]))
                return
            if kind == "delay" and self._stop.wait(fault["seconds"]):
                return
            upstream = self._track(socket.create_connection(self.upstream, timeout=self.io_timeout))
            upstream.sendall(_with_header(head, b"Connection", b"close") + body)
            answer = _read_head(upstream)
            if answer is None:
                return
            rhead, rest = answer
            status = int(rhead.split(b" ", 2)[1])
            if method == "HEAD" or status in (204, 304):
                rbody = b""
            elif _header(rhead, b"content-length") is not None:
                want = int(_header(rhead, b"content-length") or 0)
                rbody = rest + _read_exact(upstream, want - len(rest))
            else:
                rbody = rest + _read_to_eof(upstream)
            rhead = _with_header(rhead, b"Connection", b"close")
            if kind in ("truncate", "short") and rbody:
                rbody = rbody[: len(rbody) // 2]
                if kind == "short":
                    rhead = _with_header(rhead, b"Content-Length", str(len(rbody)).encode())
            client.sendall(rhead + rbody)
        except OSError:
            pass  # the client gave up (a timeout) or stop() closed the socket
        finally:
            if upstream is not None:
                self._untrack(upstream)
            self._untrack(client)


# ---------------------------------------------------------------- HTTP bits


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """(head through the blank line, bytes read past it), or None at EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > _MAX_HEAD:
            raise OSError("HTTP head too large")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def _read_exact(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n > 0:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise OSError("connection closed mid-body")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_to_eof(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _with_header(head: bytes, name: bytes, value: bytes) -> bytes:
    """``head`` with header ``name`` set to ``value`` (any old one removed)."""
    lines = [l for l in head.split(b"\r\n") if l and l.partition(b":")[0].strip().lower() != name.lower()]
    return b"\r\n".join([*lines, name + b": " + value]) + b"\r\n\r\n"


def _error_answer(method: str, status: int, code: str) -> bytes:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code.encode()
        + b"</Code><Message>injected by the test proxy</Message><RequestId>faultproxy</RequestId></Error>"
    )
    if method == "HEAD":
        body = b""  # a HEAD answer never has a body
    head = (
        f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body
