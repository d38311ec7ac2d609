"""A loopback HTTP server standing in for a SaaS API, built from the API's published shapes.

A concrete fake (Slack, GitHub, Google Sheets, Notion) subclasses :class:`FakeApi`, declares
its routes with :meth:`FakeApi.route` and says how the real API answers a missing or wrong
token (:meth:`FakeApi.auth_error`) and a rate limit (:meth:`FakeApi.rate_limited`). What every
fake shares lives here:

* a token check on every request (``Authorization: Bearer <token>`` against ``tokens``);
* *faults*, consumed one per matching request, in order — the ways a real call goes wrong::

      api.fault("rate_limit", retry_after=1)   # 429 + Retry-After, nothing applied
      api.fault("apply_then_drop")             # the handler runs (applied), then the
                                               # connection closes without an answer
      api.fault("drop")                        # the request is read, nothing is applied,
                                               # the connection closes without an answer
      api.fault("status", status=500, body={...})  # an answer, nothing applied
      api.fault("apply_then_status", status=502)   # applied, then an error answer

  By default a fault applies to the next mutating request (POST, PUT, PATCH, DELETE); pass
  ``methods=`` or ``path=`` (a regular expression) to aim it elsewhere;
* a record of every request (``api.requests``), for asserting what the connector sent.

Handlers take the :class:`Request` and the route's ``re.Match`` and return
``(status, headers, body)``; a ``dict``/``list`` body is sent as JSON, ``bytes`` as they are.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.sink import JsonHandler, start_server, stop_server

Response = tuple[int, dict[str, str], Any]
Handler = Callable[["Request", re.Match[str]], Response]

MUTATING = ("POST", "PUT", "PATCH", "DELETE")
FAULTS = {"rate_limit", "apply_then_drop", "drop", "status", "apply_then_status"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON (``None`` when empty or not JSON)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body, one value per key."""
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def token(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[7:] if value.lower().startswith("bearer ") else None


@dataclass
class Fault:
    kind: str
    methods: tuple[str, ...]
    path: re.Pattern[str] | None
    retry_after: float | None
    status: int
    body: Any
    headers: dict[str, str]

    def matches(self, req: Request) -> bool:
        return req.method in self.methods and (
            self.path is None or self.path.search(req.path) is not None)


@dataclass
class FakeApi:
    """The shared machinery of a fake API; subclasses add routes in ``__post_init__``."""

    tokens: set[str] = field(default_factory=lambda: {"good-token"})
    requests: list[Request] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _routes: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        """A subclass declares its routes here (calling ``super().__post_init__()``)."""

    # -- what a subclass says --------------------------------------------------------------

    def auth_error(self, req: Request) -> Response:
        """The API's answer to a missing or refused token."""
        return 401, {}, {"message": "Bad credentials"}

    def rate_limited(self, req: Request, retry_after: float | None) -> Response:
        """The API's answer when a caller is over its rate limit."""
        headers = {} if retry_after is None else {"Retry-After": _seconds(retry_after)}
        return 429, headers, {"message": "rate limited"}

    def not_found(self, req: Request) -> Response:
        return 404, {}, {"message": "Not Found"}

    def authorized(self, req: Request) -> bool:
        return req.token is not None and req.token in self.tokens

    # -- set-up ----------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """``handler`` answers ``method`` requests whose path fully matches ``pattern``."""
        self._routes.append((method, re.compile(pattern), handler))

    def fault(self, kind: str, *, times: int = 1, methods: tuple[str, ...] = MUTATING,
              path: str | None = None, retry_after: float | None = 1.0, status: int = 500,
              body: Any = None, headers: dict[str, str] | None = None) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {sorted(FAULTS)}")
        with self.lock:
            for _ in range(times):
                self._faults.append(Fault(kind, methods, re.compile(path) if path else None,
                                          retry_after, status,
                                          {"message": "error"} if body is None else body,
                                          dict(headers or {})))

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        with self.lock:
            return [r for r in self.requests if r.method == method and rx.fullmatch(r.path)]

    # -- serving ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeApi:
        api = self

        class Handler(JsonHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length > 0 else b""
                req = Request(self.command, parts.path, parse_qs(parts.query),
                              {k.lower(): v for k, v in self.headers.items()}, body)
                answer = api._answer(req)
                if answer is None:  # drop: no answer at all
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers, payload = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                if not any(k.lower() == "content-type" for k in headers):
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = start_server(Handler)
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop_server(self._server)
            self._server = None

    def _answer(self, req: Request) -> Response | None:
        with self.lock:
            self.requests.append(req)
            if not self.authorized(req):
                return self.auth_error(req)
            fault = next((f for f in self._faults if f.matches(req)), None)
            if fault is not None:
                self._faults.remove(fault)
            if fault is not None and fault.kind == "rate_limit":
                status, headers, body = self.rate_limited(req, fault.retry_after)
                return status, headers, body
            if fault is not None and fault.kind == "drop":
                return None
            if fault is not None and fault.kind == "status":
                return fault.status, fault.headers, fault.body
            answer = self._dispatch(req)
            if fault is not None and fault.kind == "apply_then_drop":
                return None
            if fault is not None and fault.kind == "apply_then_status":
                return fault.status, fault.headers, fault.body
            return answer

    def _dispatch(self, req: Request) -> Response:
        for method, pattern, handler in self._routes:
            if method != req.method:
                continue
            match = pattern.fullmatch(req.path)
            if match is not None:
                return handler(req, match)
        return self.not_found(req)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
