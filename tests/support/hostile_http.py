"""A hostile HTTP/1.1 server on 127.0.0.1, written on raw sockets so it can break every rule
a well-behaved server keeps: trickle a status line, flood ``102 Processing``, stream a body
forever, never answer on a kept-alive connection, stop reading the request, send a
decompression bomb, a charset that is no charset, or a ``Location`` no URL parser likes.

Each path gets a *handler*: a function of the :class:`Exchange` (the parsed request and the
socket) that writes whatever bytes it likes and returns whether the connection stays open
for another request. The factories below build the handlers the tests use. Every request is
recorded in :attr:`HostileServer.requests`, with the id of the connection it came on.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: How long a handler may hold a connection at most (tests close the server long before).
HOLD_LIMIT = 60.0


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    connection: int
    at: float
    body: bytes = b""


@dataclass
class Exchange:
    """What a handler works with: the request, its socket, and the server's stop signal."""

    seen: Seen
    sock: socket.socket
    stop: threading.Event
    pending: bytearray = field(default_factory=bytearray)  # bytes read past the headers

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False once the server is stopping (the handler should end)."""
        return not self.stop.wait(seconds)

    def read_body(self) -> bytes:
        """Read the request body (``Content-Length``) and record it."""
        size = int(self.seen.headers.get("content-length", "0") or 0)
        while len(self.pending) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.pending += chunk
        body = bytes(self.pending[:size])
        del self.pending[:size]
        self.seen.body = body
        return body

    def hold(self) -> bool:
        """Keep the connection open, answering nothing, until the server stops."""
        self.stop.wait(HOLD_LIMIT)
        return False


Handler = Callable[[Exchange], bool]


class HostileServer:
    """``HostileServer().route("/x", trickle_body())``; ``url``; ``requests``; ``close()``.
    A route ending in ``/`` is a prefix.

    ``recv_buffer`` shrinks the receive buffer of accepted sockets, so a handler that stops
    reading makes the client's writes block quickly.
    """

    def __init__(self, *, recv_buffer: int | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self.requests: list[Seen] = []
        self._routes: dict[str, Handler] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if recv_buffer is not None:  # inherited by accepted sockets
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)  # accept() wakes up to notice close()
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._spawn(self._accept)

    def route(self, path: str, handler: Handler) -> HostileServer:
        self._routes[path] = handler
        return self

    def paths(self) -> list[str]:
        return [s.path for s in self.requests]

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in list(self._sockets):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)

    # -- internals -------------------------------------------------------------------------

    def _handler(self, path: str) -> Handler:
        """The route for ``path``; a route ending in ``/`` serves everything below it."""
        if path in self._routes:
            return self._routes[path]
        for prefix, handler in self._routes.items():
            if prefix.endswith("/") and path.startswith(prefix):
                return handler
        return respond(404, body=b"no route")

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="hostile-http")
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self._lock:
                self._connections += 1
                self._sockets.add(sock)
                number = self._connections
            self._spawn(self._serve, sock, number)

    def _serve(self, sock: socket.socket, number: int) -> None:
        buffer = bytearray()
        try:
            if self._tls is not None:
                sock.settimeout(10)
                tls_sock = self._tls.wrap_socket(sock, server_side=True)
                tls_sock.settimeout(None)
                with self._lock:
                    self._sockets.discard(sock)
                    self._sockets.add(tls_sock)
                sock = tls_sock
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk or len(buffer) > 1 << 20:
                        return
                    buffer += chunk
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                seen = Seen(method, target.split("?", 1)[0], headers, number, time.monotonic())
                self.requests.append(seen)
                exchange = Exchange(seen, sock, self._stop, bytearray(rest))
                handler = self._handler(seen.path)
                if not handler(exchange):
                    return
                buffer = exchange.pending
        except OSError:
            return
        finally:
            with self._lock:
                self._sockets.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()


# ------------------------------------------------------------------------------ handlers


def _head(status: int, reason: str, headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"",
            reason: str = "OK", raw_headers: bytes = b"") -> Handler:
    """A complete answer, then the connection stays open (keep-alive)."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        h = {"Content-Length": str(len(body)), **(headers or {})}
        head = _head(status, reason, h)
        ex.send(head[:-2] + raw_headers + b"\r\n" + body)
        return True

    return handle


def respond_in_parts(headers: dict[str, str], parts: list[bytes], pause: float = 0.1
                     ) -> Handler:
    """200 with a body sent in ``parts``, ``pause`` seconds apart (so they arrive apart)."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        size = sum(len(p) for p in parts)
        ex.send(_head(200, "OK", {"Content-Length": str(size), **headers}))
        for part in parts:
            ex.send(part)
            if not ex.pause(pause):
                return False
        return True

    return handle


def trickle_body(every: float = 0.05) -> Handler:
    """200 at once, then one byte of a 100 MB body every ``every`` seconds."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        ex.send(_head(200, "OK", {"Content-Type": "text/plain", "Content-Length": "100000000"}))
        while ex.pause(every):
            ex.send(b"x")
        return False

    return handle


def trickle_headers(every: float = 0.05) -> Handler:
    """The status line, then one more header line every ``every`` seconds, forever."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        ex.send(b"HTTP/1.1 201 Created\r\n")
        while ex.pause(every):
            ex.send(b"X-More: y\r\n")
        return False

    return handle


def info_flood(every: float = 0.02) -> Handler:
    """``102 Processing`` after ``102 Processing``: a final status never comes."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        while ex.pause(every):
            ex.send(b"HTTP/1.1 102 Processing\r\n\r\n")
        return False

    return handle


def chunked_forever(every: float = 0.02) -> Handler:
    """200 with ``Transfer-Encoding: chunked``, one small chunk after another, no last one."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        ex.send(_head(200, "OK", {"Content-Type": "text/plain",
                                  "Transfer-Encoding": "chunked"}))
        while ex.pause(every):
            ex.send(b"4\r\nxxxx\r\n")
        return False

    return handle


def silent() -> Handler:
    """Read the request, answer nothing, keep the connection open."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        return ex.hold()

    return handle


def never_read() -> Handler:
    """Do not even read the request body: the client's writes block once buffers fill."""

    def handle(ex: Exchange) -> bool:
        return ex.hold()

    return handle


def delayed(seconds: float, then: Handler) -> Handler:
    """Wait ``seconds`` before handling the request with ``then`` (a slow but honest hop)."""

    def handle(ex: Exchange) -> bool:
        return ex.pause(seconds) and then(ex)

    return handle


def raw(data: bytes) -> Handler:
    """Any bytes at all, then close."""

    def handle(ex: Exchange) -> bool:
        ex.read_body()
        ex.send(data)
        return False

    return handle


_BOMBS: dict[tuple[str, int, int], bytes] = {}


def bomb_bytes(coding: str, layers: int, size: int) -> bytes:
    """``size`` zero bytes compressed ``layers`` times with ``coding`` (cached: slow once)."""
    key = (coding, layers, size)
    if key not in _BOMBS:
        wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[coding]
        c = zlib.compressobj(9, zlib.DEFLATED, wbits)
        block = bytes(1 << 20)
        parts = [c.compress(block[:min(len(block), size - i)])
                 for i in range(0, size, len(block))]
        data = b"".join([*parts, c.flush()])
        for _ in range(layers - 1):
            c = zlib.compressobj(9, zlib.DEFLATED, wbits)
            data = c.compress(data) + c.flush()
        _BOMBS[key] = data
    return _BOMBS[key]


def bomb(coding: str = "gzip", layers: int = 2, size: int = 256 << 20, *, status: int = 200,
         content_type: str = "application/json") -> Handler:
    """A small body that inflates to ``size`` bytes, declared as ``layers`` codings."""
    data = bomb_bytes(coding, layers, size)
    declared = "deflate" if coding == "raw-deflate" else coding
    return respond(status, {"Content-Type": content_type,
                            "Content-Encoding": ", ".join([declared] * layers)}, data)


def gzip_members(count: int, content: bytes = b"") -> bytes:
    """``count`` gzip members of ``content`` each, back to back (RFC 1952 allows it)."""
    return gzip.compress(content, 1) * count


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``127.0.0.1`` (and its key) made with the ``openssl`` command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
