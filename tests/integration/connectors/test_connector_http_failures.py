"""Transport failures and reconcile of the http connector against real sockets
(SPEC §6 steps 3–4, §8, §15 scenarios 9–10)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from loopback_http_server import Behavior, LoopbackServer

from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall
from keepflow.connectors.http import HttpConnector
from keepflow.errors import TransientError, UncertainOutcome

pytestmark = pytest.mark.integration


@pytest.fixture
def api(http_server: LoopbackServer) -> Iterator[HttpConnector]:
    c = HttpConnector(ConnectionConfig("api", "http", {"base_url": http_server.url}))
    yield c
    c.close()


@pytest.fixture
def plain() -> Iterator[HttpConnector]:
    c = HttpConnector(ConnectionConfig("http", "http", {}))
    yield c
    c.close()


@contextlib.contextmanager
def allowing(port: int) -> Iterator[HttpConnector]:
    """A connection without base_url that may reach 127.0.0.1:<port> (loopback is refused
    unless allowed: docs/security.md#network-egress)."""
    c = HttpConnector(ConnectionConfig("http", "http", {"allow": [f"http://127.0.0.1:{port}"]}))
    try:
        yield c
    finally:
        c.close()


def post(url: str, key: str = "wf1:run1:1", timeout: float = 5.0, **params: Any) -> ToolCall:
    return ToolCall("post", {"url": url, "json": {"n": 1}, **params}, timeout=timeout,
                    idempotency_key=key)


RECONCILE = {"url": "/applied/{idempotencyKey}"}


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_connection_refused_is_transient_and_not_sent() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/orders"
    with allowing(port) as plain:
        with pytest.raises(TransientError) as info:
            plain.call(post(url))
        assert info.value.details["sent"] is False
        with pytest.raises(TransientError):
            plain.call(ToolCall("get", {"url": url}, timeout=5))


def test_dns_failure_is_transient(plain: HttpConnector) -> None:
    with pytest.raises(TransientError, match="could not connect"):
        plain.call(post("http://no-such-host.invalid/orders", timeout=3))


def test_connect_timeout_is_transient() -> None:
    # A listening socket whose accept queue is full: SYNs are dropped, connect() times out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        with allowing(port) as plain, pytest.raises(TransientError) as info:
            plain.call(post(f"http://127.0.0.1:{port}/orders", timeout=0.5))
        assert info.value.details["sent"] is False
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_apply_then_timeout_is_uncertain_and_reconciles_to_applied(
    api: HttpConnector, http_server: LoopbackServer
) -> None:
    """SPEC §15.10: the server applied the request but the answer never came."""
    http_server.behave("/orders", Behavior(kind="apply_then_hang"))
    c = post("/orders", key="wf1:run2:1", timeout=0.5, reconcile=RECONCILE)
    with pytest.raises(UncertainOutcome) as info:
        api.call(c)
    assert info.value.details["sent"] is True
    http_server.wait_for_requests(1)
    assert "wf1:run2:1" in http_server.applied
    assert api.can_reconcile(c)
    verdict = api.reconcile(c)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result["status"] == 200
    assert verdict.result["json"]["idempotencyKey"] == "wf1:run2:1"


def test_read_timeout_on_a_read_is_transient(api: HttpConnector,
                                             http_server: LoopbackServer) -> None:
    http_server.behave("/slow", Behavior(kind="apply_then_hang"))
    with pytest.raises(TransientError):
        api.call(ToolCall("get", {"url": "/slow"}, timeout=0.3))


@pytest.mark.parametrize("kind", ["close_after_read", "reset_after_read"])
def test_connection_dropped_after_send_is_uncertain_for_mutations(
    api: HttpConnector, http_server: LoopbackServer, kind: Any
) -> None:
    http_server.behave("/orders", Behavior(kind=kind, apply=False))
    c = post("/orders", key=f"wf1:{kind}:1", reconcile=RECONCILE)
    with pytest.raises(UncertainOutcome):
        api.call(c)
    # The server never applied it: reconcile says so, and the host may re-execute.
    assert api.reconcile(c).outcome is ReconcileOutcome.FAILED


@pytest.mark.parametrize("kind", ["close_after_read", "reset_after_read"])
def test_connection_dropped_on_a_read_is_transient(
    api: HttpConnector, http_server: LoopbackServer, kind: Any
) -> None:
    http_server.behave("/r", Behavior(kind=kind))
    with pytest.raises(TransientError):
        api.call(ToolCall("get", {"url": "/r"}, timeout=5))


def test_ambiguous_5xx_after_applying_reconciles_to_applied(
    api: HttpConnector, http_server: LoopbackServer
) -> None:
    http_server.behave("/orders", Behavior(status=502, apply=True))
    c = post("/orders", key="wf1:run3:1", reconcile=RECONCILE)
    with pytest.raises(UncertainOutcome):
        api.call(c)
    assert api.reconcile(c).outcome is ReconcileOutcome.APPLIED


def test_reconcile_failed_when_never_applied(api: HttpConnector) -> None:
    c = post("/orders", key="never-sent", reconcile=RECONCILE)
    verdict = api.reconcile(c)
    assert verdict.outcome is ReconcileOutcome.FAILED
    assert verdict.result is None


def test_reconcile_key_is_url_encoded(api: HttpConnector, http_server: LoopbackServer) -> None:
    key = "wf 1/run?2#&x"
    api.call(post("/orders", key=key))
    verdict = api.reconcile(post("/orders", key=key, reconcile=RECONCILE))
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert http_server.requests[-1].path == f"/applied/{key}"


@pytest.mark.parametrize("behavior", [
    Behavior(status=500), Behavior(status=401), Behavior(status=429),
    Behavior(kind="close_after_read"),
])
def test_reconcile_retry_when_the_answer_is_unclear(
    api: HttpConnector, http_server: LoopbackServer, behavior: Behavior
) -> None:
    api.call(post("/orders", key="k-retry"))
    http_server.behave("/applied/", behavior)
    verdict = api.reconcile(post("/orders", key="k-retry", reconcile=RECONCILE))
    assert verdict.outcome is ReconcileOutcome.RETRY
    assert verdict.detail


def test_reconcile_retry_when_the_server_is_gone() -> None:
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    c = post(f"{base}/orders", reconcile={"url": f"{base}/applied/{{idempotencyKey}}"})
    with allowing(port) as plain:
        verdict = plain.reconcile(c)
    assert verdict.outcome is ReconcileOutcome.RETRY
    assert "could not connect" in verdict.detail
