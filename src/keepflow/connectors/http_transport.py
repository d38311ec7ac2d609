"""The httpx transport of the ``http`` connector: where it may connect, and for how long.

Two guards, both applied to every socket the connector opens:

**Egress** (docs/security.md#network-egress), checked before a byte is sent:

1. :meth:`GuardedTransport.handle_request` checks the URL of every request — the first one,
   each redirect hop of a read, every reconcile GET — against the connection's
   :class:`~keepflow.connectors.http_egress.EgressPolicy`.
2. :class:`GuardedBackend` opens the sockets. It resolves a name **once**, refuses it if any
   address is not public, and connects to the vetted address itself. A name that resolves
   to a public address for a check and to 127.0.0.1 a moment later (DNS rebinding) gains
   nothing: there is no second lookup. The URL keeps its name, so the ``Host`` header, TLS
   SNI and certificate verification are for the name, as usual.

A pooled connection is reused only for the same origin, so it was vetted when it was opened.

**The call's deadline** (docs/connectors.md#http-deadline). httpx's timeouts bound each
socket operation, not the exchange: a server that sends one byte a second, floods ``102
Processing`` or streams a chunked body forever never trips them. So a call runs inside
:func:`deadline_in`, and every stream the backends open is a :class:`DeadlineStream`, whose
reads, writes and TLS handshakes wait at most until that deadline. A name lookup waits at
most until then too (:func:`resolve_within`). The deadline lives in a context variable:
calls are synchronous, one per thread, and a pooled connection obeys the deadline of
whichever call is using it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import httpcore
import httpx

from keepflow.connectors.http_egress import (
    EgressPolicy,
    EgressRefused,
    Origin,
    Resolver,
    system_resolver,
)

#: Pool limits (httpx's defaults).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
#: Bytes handed to one socket write: each waits at most until the deadline, so a server
#: that reads slowly cannot stretch one large write past it.
WRITE_PIECE = 4096

_DEADLINE: ContextVar[float | None] = ContextVar("keepflow_http_deadline", default=None)


# ------------------------------------------------------------------------------ deadline


@contextlib.contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    """Everything the connector does on the network in this block ends ``seconds`` from now
    (an enclosing, earlier deadline still wins)."""
    at = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(at if outer is None else min(at, outer))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left until the current deadline (≤ 0 once it passed); ``None`` without one."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def deadline_passed() -> bool:
    left = remaining()
    return left is not None and left <= 0


def _budget(timeout: float | None, late: Callable[[str], Exception]) -> float | None:
    """``timeout`` shortened to the time left; raises ``late(...)`` once none is left."""
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise late("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


def resolve_within(resolve: Resolver) -> Resolver:
    """``resolve`` that gives up when the deadline passes: the system's lookup cannot be
    interrupted, so it runs in a daemon thread that is abandoned (it ends when the system's
    own resolver timeout does). Address literals need no lookup."""

    def bounded(host: str, port: int) -> list[str]:
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        left = remaining()
        if left is None:
            return resolve(host, port)
        if left <= 0:
            raise TimeoutError(f"no time was left to look up {host}")
        box: dict[str, Any] = {}

        def lookup() -> None:
            try:
                box["addresses"] = resolve(host, port)
            except BaseException as exc:  # handed to the caller's thread below
                box["error"] = exc

        worker = threading.Thread(target=lookup, name="keepflow-http-dns", daemon=True)
        worker.start()
        worker.join(left)
        if worker.is_alive():
            raise TimeoutError(f"looking up {host} took longer than the call's deadline")
        if "error" in box:
            raise box["error"]
        addresses: list[str] = box["addresses"]
        return addresses

    return bounded


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the current call's deadline.

    Once the deadline passed, a read raises ``ReadTimeout`` and a write ``WriteTimeout`` —
    except the first write of a request (nothing of it was sent yet), which raises
    ``ConnectTimeout`` so that a mutation that never left stays a definite failure
    (docs/connectors.md#http-failure-classification).
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._sending = False  # a request is being written (set by write, cleared by read)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._sending = False
        return self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            late = httpcore.WriteTimeout if self._sending else httpcore.ConnectTimeout
            piece, view = view[:WRITE_PIECE], view[WRITE_PIECE:]
            self._inner.write(bytes(piece), _budget(timeout, late))
            self._sending = True

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # CPython bounds a whole TLS handshake by the socket timeout, so this is a deadline.
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


# ------------------------------------------------------------------------------ backends


class DeadlineBackend(httpcore.SyncBackend):
    """httpcore's blocking socket backend, every stream bounded by the call's deadline.

    ``resolve`` maps a name to the addresses to try (in order); it is bounded by the
    deadline too.
    """

    def __init__(self, resolve: Resolver = system_resolver) -> None:
        self._resolve = resolve_within(resolve)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                    ) -> httpcore.NetworkStream:
        return self._connect(self._addresses(host, port), port, timeout, local_address,
                             socket_options)

    def _addresses(self, host: str, port: int) -> list[str]:
        try:
            return self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        except OSError as exc:  # the name does not resolve: a connect error (transient)
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None

    def _connect(self, addresses: list[str], port: int, timeout: float | None,
                 local_address: str | None,
                 socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
                 ) -> httpcore.NetworkStream:
        if not addresses:
            raise httpcore.ConnectError("the name has no addresses")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses[:4]:
            try:  # an address literal: the socket library does no second lookup
                stream = super().connect_tcp(
                    address, port, _budget(timeout, httpcore.ConnectTimeout), local_address,
                    socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return DeadlineStream(stream)
        assert failure is not None
        raise failure


class GuardedBackend(DeadlineBackend):
    """:class:`DeadlineBackend` with the address policy in ``connect_tcp``."""

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__()
        self._policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                    ) -> httpcore.NetworkStream:
        try:
            addresses = self._policy.vet(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        except OSError as exc:  # the name does not resolve: a connect error (transient)
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        if addresses is None:  # configured by a person (base_url, allow, proxy)
            addresses = self._addresses(host, port)
        return self._connect(addresses, port, timeout, local_address, socket_options)


# ------------------------------------------------------------------------------ transports


def _pool(backend: httpcore.NetworkBackend, verify: bool | str, proxy: str | None
          ) -> httpcore.ConnectionPool:
    context = ssl_context(verify)
    limits: dict[str, Any] = {
        "max_connections": LIMITS.max_connections,
        "max_keepalive_connections": LIMITS.max_keepalive_connections,
        "keepalive_expiry": LIMITS.keepalive_expiry, "network_backend": backend}
    if proxy is None:
        return httpcore.ConnectionPool(ssl_context=context, **limits)
    parsed = httpx.Proxy(url=proxy)
    return httpcore.HTTPProxy(
        proxy_url=httpcore.URL(scheme=parsed.url.raw_scheme, host=parsed.url.raw_host,
                               port=parsed.url.port, target=parsed.url.raw_path),
        proxy_auth=parsed.raw_auth, proxy_headers=parsed.headers.raw,
        proxy_ssl_context=parsed.ssl_context, ssl_context=context, **limits)


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections obey :func:`deadline_in` (no egress policy:
    for destinations a person configured, such as a notification webhook).

    httpx offers no switch for the network backend, so this builds the httpcore pool itself
    (``_pool`` is the attribute ``HTTPTransport.handle_request`` sends through; the egress
    and deadline tests fail if a new httpx changes that). ``proxy`` must be ``http(s)://``.
    """

    def __init__(self, *, verify: bool | str = True, proxy: str | None = None,
                 backend: httpcore.NetworkBackend | None = None) -> None:
        # No super().__init__(): it would build a second, unguarded pool.
        self._pool = _pool(backend or DeadlineBackend(), verify, proxy)


class GuardedTransport(DeadlineTransport):
    """:class:`DeadlineTransport` that connects only where ``policy`` allows."""

    def __init__(self, policy: EgressPolicy, *, verify: bool | str = True,
                 proxy: str | None = None) -> None:
        self.policy = policy
        super().__init__(verify=verify, proxy=proxy, backend=GuardedBackend(policy))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_url(request.url)
        try:
            return super().handle_request(request)
        except EgressRefused as exc:  # refused where the socket was opened: name the URL
            raise EgressRefused(str(Origin.of(request.url)), exc.refused, exc.detail) from None


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context for ``verify`` (``true``, ``false`` or a CA bundle file/directory)."""
    if isinstance(verify, bool):
        return httpx.create_ssl_context(verify=verify, trust_env=False)
    if Path(verify).is_dir():
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)

