"""A real HTTP server on loopback standing in for an external system.

It records every mutation by its ``Idempotency-Key`` (the external system's own record, which
tests compare with keepflow's ledger) and follows a *plan*: a queue of behaviours consumed one
per mutating request, e.g. ``["apply_then_timeout", "ok"]``. Reconcile lookups are
``GET /records/<key>``: 200 with the record if it was applied, 404 if not, or whatever the
``lookup_plan`` says.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = {
    "ok",  # apply, 201
    "apply_then_timeout",  # apply, then hang past the client's timeout
    "timeout",  # do not apply, hang past the client's timeout
    "reject_400", "reject_403", "reject_401", "reject_404", "unavailable_503", "error_500",
    "apply_then_500",  # apply, then answer 500 (ambiguous)
    "close",  # read the request and close the connection without answering (not applied)
    "apply_then_kill",  # apply, then SIGKILL the process ``kill_pid`` mid-request
}


#: A request whose body ended before its Content-Length (the client was killed mid-send).
_TRUNCATED = object()


def start_server(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` served on a free loopback port, in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # A short poll: stopping a server (every test's teardown) takes one poll interval.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler answering JSON (the base of every loopback test service)."""

    disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class Applied:
    key: str
    path: str
    body: Any
    seq: int
    at: float


@dataclass
class Sink:
    hang_seconds: float = 3.0
    plan: deque[str] = field(default_factory=deque)
    lookup_plan: deque[str] = field(default_factory=deque)
    applied: list[Applied] = field(default_factory=list)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    kill_pid: int | None = None
    #: When the plans are empty: behaviour of the next mutation / lookup (e.g. seeded random).
    chooser: Callable[[], str] | None = None
    lookup_chooser: Callable[[], str] | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def set_plan(self, *behaviours: str) -> None:
        for b in behaviours:
            assert b in BEHAVIOURS, b
        with self.lock:
            self.plan = deque(behaviours)

    def applied_keys(self) -> list[str]:
        with self.lock:
            return [a.key for a in self.applied]

    def applied_bodies(self) -> list[Any]:
        with self.lock:
            return [a.body for a in self.applied]

    def record(self, key: str) -> Applied | None:
        with self.lock:
            return next((a for a in self.applied if a.key == key), None)

    def start(self) -> Sink:
        sink = self

        class Handler(JsonHandler):
            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                if len(raw) < n:
                    return _TRUNCATED
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode(errors="replace")

            def do_GET(self) -> None:
                sink.requests.append(("GET", self.path, None))
                if self.path.startswith("/records/"):
                    key = self.path.split("/records/", 1)[1]
                    with sink.lock:
                        forced = sink.lookup_plan.popleft() if sink.lookup_plan else (
                            sink.lookup_chooser() if sink.lookup_chooser else None)
                    if forced == "unavailable_503":
                        self._reply(503, {"error": "busy"})
                        return
                    if forced == "hang":
                        time.sleep(sink.hang_seconds)
                        self.close_connection = True
                        return
                    rec = sink.record(key)
                    if rec is None:
                        self._reply(404, {"error": "no such record"})
                    else:
                        self._reply(200, {"id": rec.seq, "key": key, "body": rec.body})
                    return
                if self.path in ("/auth-required", "/forbidden"):
                    self._reply(401 if self.path == "/auth-required" else 403,
                                {"error": "no"})
                    return
                if self.path == "/stats":
                    with sink.lock:
                        self._reply(200, {"applied": len(sink.applied)})
                    return
                self._reply(200, {"path": self.path, "items": [1, 2, 3]})

            def do_POST(self) -> None:
                body = self._body()
                if body is _TRUNCATED:  # the client died mid-request: a real server applies
                    self.close_connection = True  # nothing it has not fully received
                    return
                key = self.headers.get("Idempotency-Key")
                sink.requests.append(("POST", self.path, key))
                with sink.lock:
                    behaviour = sink.plan.popleft() if sink.plan else (
                        sink.chooser() if sink.chooser else "ok")
                if behaviour in ("ok", "apply_then_timeout", "apply_then_500", "apply_then_kill"):
                    with sink.lock:
                        seq = len(sink.applied) + 1
                        sink.applied.append(Applied(key or "", self.path, body, seq, time.time()))
                    if behaviour == "apply_then_timeout":
                        time.sleep(sink.hang_seconds)
                        self.close_connection = True
                        return
                    if behaviour == "apply_then_kill" and sink.kill_pid:
                        os.kill(sink.kill_pid, signal.SIGKILL)
                        self.close_connection = True
                        return
                    if behaviour == "apply_then_500":
                        self._reply(500, {"error": "internal"})
                        return
                    self._reply(201, {"id": seq, "key": key})
                    return
                if behaviour == "timeout":
                    time.sleep(sink.hang_seconds)
                    self.close_connection = True
                    return
                if behaviour == "close":
                    self.close_connection = True
                    return
                status = int(behaviour.rsplit("_", 1)[1])
                self._reply(status, {"error": behaviour})  # not applied

            do_PUT = do_POST
            do_PATCH = do_POST
            do_DELETE = do_POST

        self.server = start_server(Handler)
        return self

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)


def serve_forever() -> None:
    """``python -m tests.support.sink``: a sink in its own process (benchmarks), printing its
    URL; ``GET /stats`` reports how many mutations it applied."""
    sink = Sink().start()
    print(sink.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sink.stop()


if __name__ == "__main__":
    serve_forever()
