"""A real HTTP server on 127.0.0.1 for connector tests: it records every request and can be
told, per path, to misbehave in the ways SPEC §6/§8 care about.

Default behaviour:

* ``POST/PUT/PATCH/DELETE <any path>`` applies the request: it is stored under its
  ``Idempotency-Key`` (the external system's own record of what happened) and answered
  ``201`` with the stored record. A repeated key returns the first record again.
* ``GET /applied/<key>`` answers the record for ``<key>`` or ``404`` (a reconcile endpoint).
* ``GET /echo`` answers the request's headers and query as JSON.
* any other ``GET``/``HEAD`` answers ``200 {"path": ...}``.

``behave(path, Behavior(...))`` overrides a path (a path ending in ``/`` is a prefix).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

Kind = Literal["respond", "apply_then_hang", "close_after_read", "reset_after_read"]

#: Upper bound for a hanging handler; tests release it at teardown long before this.
HANG_LIMIT = 30.0


@dataclass(frozen=True)
class Behavior:
    kind: Kind = "respond"
    status: int = 200
    json: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Whether a mutation is applied before the behaviour happens.
    apply: bool = False


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    #: Every header line as sent, repeated names included.
    lines: tuple[tuple[str, str], ...] = ()

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


class LoopbackServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.applied: dict[str, dict[str, Any]] = {}
        self._behaviors: dict[str, Behavior] = {}
        self._cond = threading.Condition()
        self._release = threading.Event()
        self._sockets: set[socket.socket] = set()
        server = self

        class Handler(_Handler):
            owner = server

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def behave(self, path: str, behavior: Behavior) -> None:
        with self._cond:
            self._behaviors[path] = behavior

    def behavior(self, path: str) -> Behavior | None:
        with self._cond:
            if path in self._behaviors:
                return self._behaviors[path]
            for prefix, b in self._behaviors.items():
                if prefix.endswith("/") and path.startswith(prefix):
                    return b
        return None

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        """Block until at least ``n`` requests were recorded (a condition, not a sleep)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"expected {n} requests, saw {len(self.requests)}")
            return list(self.requests)

    def record(self, rec: Recorded) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()

    def apply(self, rec: Recorded) -> dict[str, Any]:
        with self._cond:
            key = rec.idempotency_key or f"no-key-{len(self.applied)}"
            if key not in self.applied:
                try:
                    body = json.loads(rec.body) if rec.body else None
                except ValueError:
                    body = rec.body.decode()
                self.applied[key] = {"id": len(self.applied) + 1, "idempotencyKey": key,
                                     "method": rec.method, "path": rec.path, "body": body}
            self._cond.notify_all()
            return self.applied[key]

    def hang(self) -> None:
        self._release.wait(HANG_LIMIT)

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._cond:
            (self._sockets.add if add else self._sockets.discard)(sock)

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        with self._cond:
            for s in list(self._sockets):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.httpd.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):

    disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK
    owner: LoopbackServer
    protocol_version = "HTTP/1.1"
    timeout = 10

    def setup(self) -> None:
        super().setup()
        self.owner.track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed or reset on purpose
            super().finish()
        self.owner.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        rec = Recorded(self.command, path, parts.query,
                       {k.lower(): v for k, v in self.headers.items()}, body,
                       tuple(self.headers.items()))
        owner = self.owner
        owner.record(rec)
        mutation = self.command in ("POST", "PUT", "PATCH", "DELETE")
        b = owner.behavior(path)
        if b is None:
            self._default(rec, mutation)
            return
        if mutation and b.apply:
            owner.apply(rec)
        if b.kind == "apply_then_hang":
            if mutation:
                owner.apply(rec)
            owner.hang()
            self.close_connection = True
            return
        if b.kind == "close_after_read":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if b.kind == "reset_after_read":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if b.json is not None:
            self._send(b.status, json.dumps(b.json).encode(), "application/json", b.headers)
        else:
            self._send(b.status, (b.text or "").encode(), "text/plain; charset=utf-8",
                       b.headers)

    def _default(self, rec: Recorded, mutation: bool) -> None:
        if mutation:
            self._json(201, self.owner.apply(rec))
        elif rec.path.startswith("/applied/"):
            found = self.owner.applied.get(rec.path[len("/applied/"):])
            self._json(200 if found else 404, found or {"error": "not found"})
        elif rec.path == "/echo":
            self._json(200, {"headers": rec.headers, "query": rec.query})
        else:
            self._json(200, {"path": rec.path})

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", {})

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
