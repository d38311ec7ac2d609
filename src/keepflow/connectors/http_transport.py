"""The httpx transport of the ``http`` connector: it connects only where the policy allows.

Two checks, both before a byte is sent (docs/security.md#network-egress):

1. :meth:`GuardedTransport.handle_request` checks the URL of every request — the first one,
   each redirect hop of a read, every reconcile GET — against the connection's
   :class:`~keepflow.connectors.http_egress.EgressPolicy`.
2. :class:`GuardedBackend` opens the sockets. It resolves a name **once**, refuses it if any
   address is not public, and connects to the vetted address itself. A name that resolves
   to a public address for a check and to 127.0.0.1 a moment later (DNS rebinding) gains
   nothing: there is no second lookup. The URL keeps its name, so the ``Host`` header, TLS
   SNI and certificate verification are for the name, as usual.

A pooled connection is reused only for the same origin, so it was vetted when it was opened.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

import httpcore
import httpx

from keepflow.connectors.http_egress import EgressPolicy, EgressRefused, Origin

#: Pool limits (httpx's defaults).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's blocking socket backend, with the address policy in ``connect_tcp``."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                    ) -> httpcore.NetworkStream:
        try:
            addresses = self._policy.vet(host, port)
        except OSError as exc:  # the name does not resolve: a connect error (transient)
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        if addresses is None:  # configured by a person (base_url, allow, proxy)
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses[:4]:
            try:  # an address literal: the socket library does no second lookup
                return super().connect_tcp(address, port, timeout, local_address,
                                           socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool uses :class:`GuardedBackend`.

    httpx offers no switch for the network backend, so this builds the httpcore pool itself
    (``_pool`` is the attribute ``HTTPTransport.handle_request`` sends through; the egress
    tests fail if a new httpx changes that). ``proxy`` must be an ``http(s)://`` URL.
    """

    def __init__(self, policy: EgressPolicy, *, verify: bool | str = True,
                 proxy: str | None = None) -> None:
        # No super().__init__(): it would build a second, unguarded pool.
        self.policy = policy
        context = ssl_context(verify)
        backend = GuardedBackend(policy)
        if proxy is None:
            self._pool = httpcore.ConnectionPool(
                ssl_context=context, max_connections=LIMITS.max_connections,
                max_keepalive_connections=LIMITS.max_keepalive_connections,
                keepalive_expiry=LIMITS.keepalive_expiry, network_backend=backend)
            return
        parsed = httpx.Proxy(url=proxy)
        self._pool = httpcore.HTTPProxy(
            proxy_url=httpcore.URL(scheme=parsed.url.raw_scheme, host=parsed.url.raw_host,
                                   port=parsed.url.port, target=parsed.url.raw_path),
            proxy_auth=parsed.raw_auth, proxy_headers=parsed.headers.raw,
            proxy_ssl_context=parsed.ssl_context,
            ssl_context=context, max_connections=LIMITS.max_connections,
            max_keepalive_connections=LIMITS.max_keepalive_connections,
            keepalive_expiry=LIMITS.keepalive_expiry, network_backend=backend)

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
