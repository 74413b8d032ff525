"""A small fault-injecting HTTP proxy for an S3 server, on 127.0.0.1 (tests only).

Clients point their S3 endpoint at the proxy; it forwards each request unchanged (Host header
included, so SigV4 signatures still verify upstream) and applies the first matching rule:

* ``pass``           forward as is;
* ``error``          answer an S3 error itself (503 SlowDown by default) without forwarding;
* ``stall``          wait ``seconds``, then forward;
* ``drop_response``  forward (the request takes effect upstream), then cut the connection
                     before the client sees the response — a lost response;
* ``hold``           keep the request (not forwarded) until :meth:`Rule.release`, then cut the
                     connection — a request in flight when its sender dies.

Rules match on method, a regex over the path and query, and an optional probability (seeded,
so a run is reproducible), and fire at most ``times`` times; ``hits`` counts how often they did,
so a test can assert that its fault was really injected.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Action = Literal["pass", "error", "stall", "drop_response", "hold"]
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Rule:
    action: Action
    method: str | None = None
    path: str = ""  # regex searched in "<path>?<query>"
    probability: float = 1.0
    times: int | None = None
    seconds: float = 0.0
    status: int = 503
    code: str = "SlowDown"
    hits: int = 0
    seen: list[str] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _holding: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, target: str, rng: random.Random) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and method != self.method:
            return False
        if self.path and not re.search(self.path, target):
            return False
        return rng.random() < self.probability

    def release(self) -> None:
        self._released.set()

    def wait_holding(self, timeout: float) -> bool:
        """True once a request is being held by this rule."""
        return self._holding.wait(timeout)


class FaultProxy:
    """``with FaultProxy(upstream_port) as proxy:`` — ``proxy.endpoint`` is what clients use."""

    def __init__(self, upstream_port: int, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self.rules:
                rule.release()
            self.rules.clear()

    @contextmanager
    def rule(self, rule: Rule) -> Iterator[Rule]:
        self.add(rule)
        try:
            yield rule
        finally:
            rule.release()
            with self._lock:
                if rule in self.rules:
                    self.rules.remove(rule)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()

    def _pick(self, method: str, target: str) -> Rule | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, target, self._rng):
                    rule.hits += 1
                    rule.seen.append(f"{method} {target}")
                    return rule
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _cut(self) -> None:
                self.close_connection = True
                with suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _handle(self) -> None:
                body = self._body()
                rule = proxy._pick(self.command, self.path)
                action = rule.action if rule else "pass"
                if rule and action == "error":
                    self._s3_error(rule.status, rule.code)
                    return
                if rule and action == "stall":
                    time.sleep(rule.seconds)
                if rule and action == "hold":
                    rule._holding.set()
                    rule._released.wait()
                    self._cut()
                    return
                status, reason, headers, payload = self._forward(body)
                if action == "drop_response":
                    self._cut()
                    return
                self.send_response_only(status, reason)
                # A HEAD response has no body but the object's Content-Length: pass it on.
                keep_length = self.command == "HEAD"
                for name, value in headers:
                    lower = name.lower()
                    if lower not in _HOP and (keep_length or lower != "content-length"):
                        self.send_header(name, value)
                if not keep_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in _HOP and k.lower() != "content-length"
                    }
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    return resp.status, resp.reason, resp.getheaders(), resp.read()
                finally:
                    conn.close()

            def _s3_error(self, status: int, code: str) -> None:
                payload = (
                    '<?xml version="1.0" encoding="UTF-8"?>'
                    f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message>"
                    "</Error>"
                ).encode()
                self.send_response_only(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
