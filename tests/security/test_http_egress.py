"""Hostile scripts vs. the host's own services: the ``http`` connector's egress policy
(docs/security.md#network-egress).

The defect: the default ``http`` connection reached any URL, so a producer read
``GET 127.0.0.1:<serve port>/api/status`` and a mutation triggered a *paused* workflow through
``POST /api/workflows/<other>/trigger/<handler>``. Attacked here from several sides: odd
spellings of local addresses (unit), real loopback servers that must record nothing, redirect
hops, DNS answers (a custom resolver stands in for DNS), a proxy, config validation, a real
workflow run, and a real ``keepflow serve`` process.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keepflow import service
from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall
from keepflow.connectors.config import parse_connections
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.http_egress import (
    DOCUMENTATION,
    INVALID,
    LINK_LOCAL,
    LOCAL_NAME,
    LOOPBACK,
    METADATA,
    MULTICAST,
    NOT_ALLOWED,
    PRIVATE,
    RESERVED,
    SHARED,
    UNSPECIFIED,
    EgressPolicy,
    EgressRefused,
    classify_address,
    classify_host,
    is_own_address,
    parse_ipv4,
    parse_origin,
    system_resolver,
)
from keepflow.errors import ConfigError, PermanentError, PermissionDenied, TransientError
from keepflow.model import RunStatus, WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.integration.conftest import clock, host, pool, sink, target_db  # noqa: F401
from tests.integration.connectors.loopback_http_server import Behavior, LoopbackServer
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    events_of,
    run_detail,
    seed_producer,
    workflow_js,
)

integration = pytest.mark.integration  # the tests that start servers or processes
PUBLIC = "93.184.215.14"  # a public address; nothing in these tests must ever reach it


# ----------------------------------------------------------------- the address policy (pure)


def host_of(url: str) -> str:
    return httpx.URL(url).raw_host.decode()


@pytest.mark.parametrize(("url", "refused"), [
    ("http://127.0.0.1/", LOOPBACK),
    ("http://127.255.255.254/", LOOPBACK),
    ("http://2130706433/", LOOPBACK),
    ("http://0x7f000001/", LOOPBACK),
    ("http://0x7f.1/", LOOPBACK),
    ("http://0X7F.0.0.1/", LOOPBACK),
    ("http://127.1/", LOOPBACK),
    ("http://127.0.1/", LOOPBACK),
    ("http://017700000001/", LOOPBACK),
    ("http://127.0.0.1./", LOOPBACK),
    ("http://[::1]/", LOOPBACK),
    ("http://[0:0:0:0:0:0:0:1]/", LOOPBACK),
    ("http://[::ffff:127.0.0.1]/", LOOPBACK),
    ("http://[::ffff:7f00:1]/", LOOPBACK),
    ("http://[::127.0.0.1]/", LOOPBACK),
    ("http://[64:ff9b::7f00:1]/", LOOPBACK),
    ("http://[2002:7f00:1::]/", LOOPBACK),
    ("http://localhost/", LOCAL_NAME),
    ("http://LOCALHOST/", LOCAL_NAME),
    ("http://localhost./", LOCAL_NAME),
    ("http://LocalHost.:8080/", LOCAL_NAME),
    ("http://api.localhost/", LOCAL_NAME),
    ("http://localhost.localdomain/", LOCAL_NAME),
    ("http://ip6-localhost/", LOCAL_NAME),
    ("http://0/", UNSPECIFIED),
    ("http://0.0.0.0/", UNSPECIFIED),
    ("http://0x0/", UNSPECIFIED),
    ("http://[::]/", UNSPECIFIED),
    ("http://[::ffff:0.0.0.0]/", UNSPECIFIED),
    ("http://169.254.169.254/latest/meta-data/", LINK_LOCAL),
    ("http://0xa9fea9fe/", LINK_LOCAL),
    ("http://2852039166/", LINK_LOCAL),
    ("http://[::ffff:169.254.169.254]/", LINK_LOCAL),
    ("http://[fe80::1]/", LINK_LOCAL),
    ("http://[fe80::1%25eth0]/", LINK_LOCAL),
    ("http://metadata.google.internal/computeMetadata/v1/", METADATA),
    ("http://METADATA.GOOGLE.INTERNAL./", METADATA),
    ("http://metadata/", METADATA),
    ("http://metadata.goog/", METADATA),
    ("http://instance-data/", METADATA),
    ("http://10.0.0.1/", PRIVATE),
    ("http://10.255.255.255/", PRIVATE),
    ("http://172.16.5.4/", PRIVATE),
    ("http://172.31.255.255/", PRIVATE),
    ("http://192.168.1.1/", PRIVATE),
    ("http://3232235777/", PRIVATE),
    ("http://[::ffff:10.1.2.3]/", PRIVATE),
    ("http://[fc00::1]/", PRIVATE),
    ("http://[fd12:3456::1]/", PRIVATE),
    ("http://[fec0::1]/", PRIVATE),
    ("http://[64:ff9b:1::a00:1]/", PRIVATE),
    ("http://100.64.0.1/", SHARED),
    ("http://100.127.255.255/", SHARED),
    ("http://224.0.0.1/", MULTICAST),
    ("http://239.255.255.250/", MULTICAST),
    ("http://[ff02::1]/", MULTICAST),
    ("http://255.255.255.255/", "broadcast"),
    ("http://192.0.2.1/", DOCUMENTATION),
    ("http://198.51.100.7/", DOCUMENTATION),
    ("http://203.0.113.9/", DOCUMENTATION),
    ("http://[2001:db8::1]/", DOCUMENTATION),
    ("http://240.0.0.1/", RESERVED),
    ("http://198.18.0.1/", RESERVED),
    ("http://192.0.0.8/", RESERVED),
    ("http://192.88.99.1/", RESERVED),
    ("http://[100::1]/", RESERVED),
    ("http://[2001::1]/", RESERVED),  # Teredo
    ("http://[::8.8.8.8]/", RESERVED),  # deprecated IPv4-compatible form
    ("http://[4000::1]/", RESERVED),  # outside global unicast
    ("http://%31%32%37.0.0.1/", INVALID),
    ("http://1.2.3.4.5/", INVALID),
    ("http://0x7g.1/", INVALID),
    ("http://4294967296/", INVALID),
    ("http://intranet/", LOCAL_NAME),
    ("http://printer.local/", LOCAL_NAME),
    ("http://db.internal/", LOCAL_NAME),
    ("http://router.home.arpa/", LOCAL_NAME),
])
def test_local_and_odd_destinations_are_refused(url: str, refused: str) -> None:
    assert classify_host(host_of(url))[0] == refused


@pytest.mark.parametrize("url", [
    "http://example.com/", "https://API.Example.com:8443/x", "http://example.com./",
    f"http://{PUBLIC}/", "http://8.8.8.8/", "http://1.1.1.1./", "http://11.0.0.1/",
    "http://100.63.255.255/", "http://100.128.0.1/", "http://172.32.0.1/",
    "http://192.169.0.1/", "http://[2606:4700:4700::1111]/", "http://[::ffff:8.8.8.8]/",
    "http://[64:ff9b::808:808]/", "http://[2002:808:808::1]/", "http://bücher.example/",
    "http://under_score.example.com/",
])
def test_public_destinations_pass(url: str) -> None:
    assert classify_host(host_of(url)) [0] is None


def test_numeric_hosts_are_read_like_the_c_library_reads_them() -> None:
    # httpx refuses "0177.0.0.1" itself; the policy must still read it as getaddrinfo would.
    for spelling in ("0177.0.0.1", "0x7f.0.0.1", "127.0.0.1", "2130706433", "0x7F000001",
                     "127.1", "0177.1", "127.0.0.1."):
        assert parse_ipv4(spelling) == ipaddress.IPv4Address("127.0.0.1"), spelling
    for not_numeric in ("example.com", "1.example", "0x", ""):
        assert parse_ipv4(not_numeric) in (None, ipaddress.IPv4Address("0.0.0.0"))
    for broken in ("08.1", "256.1.1.1", "1.2.3.4.5", "0x1g"):
        assert parse_ipv4(broken) is None
    assert classify_host("0177.0.0.1")[0] == LOOPBACK


def test_every_address_class_is_classified_not_just_is_global() -> None:
    # Multicast and 6to4 are "global" to some Python versions: the policy says otherwise.
    assert classify_address(ipaddress.ip_address("224.0.0.251")) == MULTICAST
    assert classify_address(ipaddress.ip_address("ff0e::1")) == MULTICAST
    assert classify_address(ipaddress.ip_address("2002:a9fe:a9fe::")) == LINK_LOCAL
    assert classify_address(ipaddress.ip_address("2002:c0a8:101::")) == PRIVATE
    assert classify_address(ipaddress.ip_address(PUBLIC)) is None


def test_what_the_system_resolver_answers_is_checked() -> None:
    """A real lookup (``localhost`` via the system's resolver) feeding a name that passes the
    lexical check: the answer, not the name, decides."""
    policy = EgressPolicy(resolver=lambda name, port: system_resolver("localhost", port))
    assert policy.check_url(httpx.URL("http://alias.example:8765/")) is None  # lexically fine
    with pytest.raises(EgressRefused) as info:
        policy.vet("alias.example", 8765)
    assert info.value.refused == LOOPBACK
    assert "alias.example resolves to 127.0.0.1" in info.value.detail


def test_an_address_of_this_machine_is_recognised() -> None:
    assert is_own_address(ipaddress.ip_address("127.0.0.1"))
    assert not is_own_address(ipaddress.ip_address(PUBLIC))


@pytest.mark.parametrize(("entry", "problem"), [
    ("127.0.0.1:9000", "http"),
    ("ftp://127.0.0.1", "http"),
    ("http://127.0.0.1:9000/api", "origin only"),
    ("http://127.0.0.1:9000/?a=1", "origin only"),
    ("http://u:p@127.0.0.1:9000", "origin only"),
    ("http://*.example.com", "wildcards"),
    ("http://%31%32%37.0.0.1:9000", "valid host"),
    ("http://127.0.0.1:*", "not a valid URL"),
    ("http://0x7f.1:9000", "unusual form"),
    ("http://2130706433", "unusual form"),
    ("http://", "http"),
])
def test_allow_entries_are_validated_strictly(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_origin(entry)
    with pytest.raises(ConfigError) as cfg:
        parse_connections({"connections": {"api": {"type": "http", "allow": [entry]}}},
                          source="connections.toml", environ={})
    assert cfg.value.details["key"] == "allow"
    assert "connection 'api'" in cfg.value.message
    assert "key 'allow'" in cfg.value.message
    assert "entry 1" in cfg.value.message


@pytest.mark.parametrize("value", ["http://127.0.0.1:9000", [9000], [["http://x.test"]]])
def test_allow_must_be_a_list_of_strings(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        HttpConnector.validate_settings({"allow": value})
    assert info.value.details["key"] == "allow"


def test_credentials_need_a_destination_of_their_own() -> None:
    """Without base_url or allow, a configured token would go wherever a script points."""
    with pytest.raises(ConfigError) as info:
        parse_connections({"connections": {"api": {
            "type": "http", "headers_env": {"Authorization": "API_TOKEN"}}}},
            environ={"API_TOKEN": "Bearer s3cr3t-value"})
    assert info.value.details["key"] == "headers_env"
    assert "s3cr3t" not in info.value.message
    assert "docs/security.md#network-egress" in info.value.message
    for extra in ({"base_url": "https://api.example.com"}, {"allow": ["https://a.example"]}):
        parse_connections({"connections": {"api": {
            "type": "http", "headers_env": {"Authorization": "API_TOKEN"}, **extra}}},
            environ={"API_TOKEN": "Bearer s3cr3t-value"})


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "127.0.0.1:3128", 3128])
def test_proxy_must_be_an_http_proxy_url(proxy: Any) -> None:
    with pytest.raises(ConfigError) as info:
        HttpConnector.validate_settings({"proxy": proxy})
    assert info.value.details["key"] == "proxy"


def test_allow_entries_keep_their_exact_origin() -> None:
    assert str(parse_origin("HTTPS://API.Example.com:443/")) == "https://api.example.com"
    assert str(parse_origin("http://127.0.0.1:9000")) == "http://127.0.0.1:9000"
    assert str(parse_origin("http://[::1]:9000")) == "http://[::1]:9000"
    HttpConnector.validate_settings({"allow": []})  # empty: only the base_url, if any


# ------------------------------------------------------------------- real loopback servers


class Resolver:
    """Stands in for DNS: answers from a table and counts the lookups."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, name: str, port: int) -> list[str]:
        self.calls.append(name)
        queue = self.answers.get(name)
        if not queue:
            raise OSError(f"[Errno -2] Name or service not known: {name}")
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


@pytest.fixture
def other() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


def connector(settings: dict[str, Any] | None = None, name: str = "http",
              resolver: Resolver | None = None) -> HttpConnector:
    return HttpConnector(ConnectionConfig(name, "http", settings or {}), resolver=resolver)


def call(tool: str, url: str, **params: Any) -> ToolCall:
    if tool in ("get", "head"):
        return ToolCall(tool, {"url": url, **params}, timeout=2.0)
    return ToolCall(tool, {"url": url, "json": {"x": 1}, **params}, timeout=2.0,
                    idempotency_key="kf-wf-run-1")


def assert_refused(exc: PermissionDenied, refused: str | None = None) -> None:
    assert exc.details["sent"] is False
    if refused is not None:
        assert exc.details["refused"] == refused
    assert "before sending anything" in exc.message
    if exc.details["refused"] == INVALID:
        assert "plain DNS name or IP address" in exc.message
    else:  # says how to allow it, in the words of connections.toml
        assert "allow = [\"http" in exc.message
    assert "docs/security.md#network-egress" in exc.message
    assert "SPEC" not in exc.message
    assert exc.failure_class.value == "permission"
    assert exc.retryable is False


def spellings(port: int) -> list[str]:
    return [f"http://127.0.0.1:{port}/api/status", f"http://localhost:{port}/api/status",
            f"http://LOCALHOST:{port}/", f"http://localhost.:{port}/",
            f"http://2130706433:{port}/", f"http://0x7f.1:{port}/", f"http://127.1:{port}/",
            f"http://[::ffff:127.0.0.1]:{port}/", f"http://0:{port}/",
            f"http://0.0.0.0:{port}/", f"http://127.0.0.1.:{port}/",
            f"http://%31%32%37.0.0.1:{port}/", f"http://[::1]:{port}/",
            f"http://api.localhost:{port}/"]


@integration
@pytest.mark.parametrize("tool", ["get", "head", "post", "put", "patch", "delete"])
def test_the_default_connection_reaches_no_spelling_of_loopback(
        server: LoopbackServer, tool: str) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    c = connector()
    try:
        for url in spellings(port):
            with pytest.raises(PermissionDenied) as info:
                c.call(call(tool, url))
            assert_refused(info.value)
    finally:
        c.close()
    assert server.requests == []  # not one byte arrived


@integration
def test_userinfo_tricks_are_refused_before_anything_is_sent(server: LoopbackServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    c = connector()
    try:
        for url in (f"http://api.example.com@127.0.0.1:{port}/",
                    f"http://127.0.0.1:{port}@api.example.com/",
                    f"http://127.0.0.1:{port}%40api.example.com/"):
            with pytest.raises((PermanentError, PermissionDenied)):
                c.call(call("get", url))
    finally:
        c.close()
    assert server.requests == []


@integration
def test_a_name_that_resolves_to_loopback_is_refused(server: LoopbackServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    dns = Resolver({"sneaky.example": [["127.0.0.1"]],
                    "split.example": [[PUBLIC, "127.0.0.1"]],
                    "meta.example": [["169.254.169.254"]],
                    "six.example": [["::ffff:127.0.0.1"]]})
    c = connector(resolver=dns)
    try:
        for name, cls in (("sneaky", LOOPBACK), ("split", LOOPBACK), ("meta", LINK_LOCAL),
                          ("six", LOOPBACK)):
            with pytest.raises(PermissionDenied) as info:
                c.call(call("post", f"http://{name}.example:{port}/api/workflows/x/trigger/y"))
            assert_refused(info.value, cls)
            assert "resolves to" in info.value.message
    finally:
        c.close()
    assert server.requests == []


@integration
def test_dns_rebinding_gains_nothing_the_name_is_resolved_once(server: LoopbackServer) -> None:
    """First answer public (passes), every later answer 127.0.0.1: a checker that looked the
    name up again to connect would reach the loopback server."""
    port = int(server.url.rsplit(":", 1)[1])
    dns = Resolver({"rebind.example": [[PUBLIC], ["127.0.0.1"]]})
    c = connector(resolver=dns)
    try:
        with pytest.raises(TransientError):  # connecting to the public address fails here
            c.call(ToolCall("get", {"url": f"http://rebind.example:{port}/api/status"},
                            timeout=0.5))
    finally:
        c.close()
    assert dns.calls == ["rebind.example"]  # one lookup, and we connected to its answer
    assert server.requests == []


@integration
def test_an_unknown_name_is_still_a_transient_dns_failure() -> None:
    c = connector(resolver=Resolver({}))
    try:
        with pytest.raises(TransientError, match="could not connect") as info:
            c.call(call("post", "http://no-such-host.example/orders"))
        assert info.value.details["sent"] is False
    finally:
        c.close()


@integration
def test_allow_opens_exactly_the_listed_origins(server: LoopbackServer,
                                                other: LoopbackServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    dns = Resolver({"api.example.com": [[PUBLIC]]})
    c = connector({"allow": [server.url]}, resolver=dns)
    try:
        assert c.call(call("get", f"{server.url}/api/status"))["json"] == {"path": "/api/status"}
        assert c.call(call("post", f"{server.url}/orders"))["status"] == 201
        refused = [f"http://localhost:{port}/", f"https://127.0.0.1:{port}/",
                   f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/",
                   f"{other.url}/", "https://api.example.com/"]
        for url in refused:
            with pytest.raises(PermissionDenied) as info:
                c.call(call("get", url))
            assert_refused(info.value)
            assert "only the origins in its allow list" in info.value.message
        assert info.value.details["refused"] == NOT_ALLOWED
    finally:
        c.close()
    assert [r.path for r in server.requests] == ["/api/status", "/orders"]
    assert other.requests == []
    assert dns.calls == []  # with an allow list, an unlisted name is not even looked up


@integration
def test_an_empty_allow_list_leaves_only_the_base_url(server: LoopbackServer,
                                                      other: LoopbackServer) -> None:
    dns = Resolver({"api.example.com": [[PUBLIC]]})
    c = connector({"base_url": server.url, "allow": []}, resolver=dns)
    try:
        assert c.call(call("get", "/x"))["status"] == 200
        server.behave("/away", Behavior(status=302,
                                        headers={"Location": "https://api.example.com/"}))
        with pytest.raises(PermissionDenied):
            c.call(call("get", "/away"))
    finally:
        c.close()
    assert dns.calls == []


@integration
@pytest.mark.parametrize("location", [
    "{other}/api/status", "http://localhost:{port}/api/status",
    "http://[::ffff:127.0.0.1]:{port}/", "http://2130706433:{port}/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://metadata.google.internal/computeMetadata/v1/", "http://10.0.0.1/admin",
    "http://[::1]:{port}/",
])
def test_a_redirect_to_a_local_address_is_refused_at_the_hop(
        server: LoopbackServer, other: LoopbackServer, location: str) -> None:
    port = int(other.url.rsplit(":", 1)[1])
    target = location.format(other=other.url, port=port)
    server.behave("/hop", Behavior(status=302, headers={"Location": "/hop2"}))
    server.behave("/hop2", Behavior(status=307, headers={"Location": target}))
    c = connector({"base_url": server.url})
    try:
        with pytest.raises(PermissionDenied) as info:
            c.call(call("get", "/hop"))
        assert_refused(info.value)
        assert info.value.message.startswith(f"GET {server.url}/hop: refused ")
    finally:
        c.close()
    assert [r.path for r in server.requests] == ["/hop", "/hop2"]  # the same origin: fine
    assert other.requests == []


@integration
def test_a_redirect_to_an_allowed_origin_is_followed(server: LoopbackServer,
                                                     other: LoopbackServer) -> None:
    server.behave("/hop", Behavior(status=302, headers={"Location": f"{other.url}/landing"}))
    c = connector({"base_url": server.url, "allow": [other.url]})
    try:
        assert c.call(call("get", "/hop"))["json"] == {"path": "/landing"}
    finally:
        c.close()
    assert [r.path for r in other.requests] == ["/landing"]


@integration
def test_a_reconcile_get_to_loopback_is_refused_and_cannot_verify(server: LoopbackServer
                                                                  ) -> None:
    c = connector(resolver=Resolver({"api.example.com": [[PUBLIC]]}))
    try:
        verdict = c.reconcile(call("post", "https://api.example.com/orders", reconcile={
            "url": f"{server.url}/api/workflows/victim/trigger/work?k={{idempotencyKey}}"}))
    finally:
        c.close()
    assert verdict.outcome is ReconcileOutcome.RETRY  # never "applied" from a local answer
    assert "refused" in verdict.detail
    assert "loopback" in verdict.detail
    assert server.requests == []


@integration
def test_with_a_proxy_the_target_is_checked_before_it_is_handed_over(
        server: LoopbackServer, other: LoopbackServer) -> None:
    """The proxy is configured, so it is reachable; the target is checked (resolved here)."""
    port = int(other.url.rsplit(":", 1)[1])
    dns = Resolver({"public.example": [[PUBLIC]], "inside.example": [["10.1.2.3"]]})
    c = connector({"proxy": server.url}, resolver=dns)
    try:
        result = c.call(call("get", "http://public.example/feed"))
        assert result["json"] == {"path": "/feed"}  # the loopback "proxy" answered
        for url, cls in ((f"{other.url}/api/status", LOOPBACK),
                         (f"http://localhost:{port}/", LOCAL_NAME),
                         ("http://inside.example/", PRIVATE),
                         ("http://unknown.example/", "unresolved")):
            with pytest.raises(PermissionDenied) as info:
                c.call(call("get", url))
            assert_refused(info.value, cls)
    finally:
        c.close()
    assert len(server.requests) == 1
    assert server.requests[0].headers["host"] == "public.example"
    assert other.requests == []


# ------------------------------------------------------------------ through a workflow run


def spy_workflow(url: str) -> str:
    producers = f"""
    spy: async (ctx) => {{
      const r = await ctx.http.get({{ url: "{url}/api/status" }});
      await ctx.publish("items", {{ messageId: "leak", title: JSON.stringify(r).slice(0, 200) }});
    }},""" + seed_producer(["a"])
    mutate = f"""await ctx.http.post({{ url: "{url}/api/workflows/victim/trigger/work",
                                      headers: {{ "X-Keepflow-Request": "1" }}, json: {{}} }});"""
    return workflow_js(producers=producers, consumers=consumer_js(mutate=mutate))


@integration
def test_a_workflow_cannot_read_or_drive_the_hosts_own_api(host: Any, tmp_path: Path,  # noqa: F811
                                                           server: LoopbackServer) -> None:
    server.behave("/api/status", Behavior(json={"workflows": ["victim", "payroll"]}))
    deploy_source(host, tmp_path, spy_workflow(server.url))
    read = service.trigger(host, "wf", "spy")
    assert read.status is RunStatus.FAILED
    assert read.failure is not None
    assert read.failure["class"] == "permission"
    assert "docs/security.md#network-egress" in read.failure["message"]
    assert events_of(host) == []  # nothing was published: the producer learnt nothing

    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "permission"
    [m] = run_detail(host, out.run_id)["mutations"]
    assert m["status"] == "failed"  # definite: never indeterminate, never left in_flight
    assert m["error"]["code"] == "permission"
    assert m["error"]["sent"] is False
    assert service.list_workflows(host)[0]["status"] == "needs_action"
    assert server.requests == []  # the stand-in for `keepflow serve` saw nothing at all


# --------------------------------------------------------------- a real `keepflow serve`

VICTIM = """
export default Keep.workflow({
  name: "victim",
  topics: { "jobs": {} },
  producers: {
    seed: async (ctx) => { await ctx.publish("jobs", { messageId: "j1", title: "Job 1" }); },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["jobs"],
      async prepare(ctx) {
        const [e] = await ctx.peek("jobs", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "jobs", ids: [e.messageId] }], data: {} };
      },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return { ran: true }; },
    }),
  },
});
"""

ATTACKER = """
export default Keep.workflow({
  name: "attacker",
  topics: { "loot": {} },
  producers: {
    spy: async (ctx) => {
      const r = await ctx.http.get({ url: "%(api)s/api/status" });
      await ctx.publish("loot", { messageId: "s", title: JSON.stringify(r).slice(0, 300) });
    },
    seed: async (ctx) => { await ctx.publish("loot", { messageId: "go", title: "Go" }); },
  },
  consumers: {
    strike: Keep.consumer({
      subscribe: ["loot"],
      async prepare(ctx) {
        const [e] = await ctx.peek("loot", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "loot", ids: [e.messageId] }], data: {} };
      },
      async mutate(ctx, prepared) {
        await ctx.http.post({ url: "%(api)s/api/workflows/victim/trigger/work?wait=true",
                              headers: { "X-Keepflow-Request": "1" }, json: {} });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@integration
def test_a_script_under_keepflow_serve_cannot_reach_its_api(
        tmp_path: Path, store_url: str, pool: SandboxPool) -> None:  # noqa: F811
    """The reported attack, against the real server: read every workflow's status, then run
    a *paused* workflow's consumer through the trigger route (with the CSRF header)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    settings = Settings(home=tmp_path / "home", database_url=store_url)
    settings.home.mkdir()
    with Host(settings, pool=pool) as h:
        deploy_source(h, tmp_path, VICTIM, "victim.js")
        deploy_source(h, tmp_path, ATTACKER % {"api": api}, "attacker.js")
        service.set_status(h, "victim", WorkflowStatus.PAUSED)
    env = {**os.environ, "KEEPFLOW_HOME": str(settings.home),
           "KEEPFLOW_DATABASE_URL": store_url, "KEEPFLOW_SANDBOX_WORKERS": "1"}
    env.pop("KEEPFLOW_FAULTS", None)
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "keepflow.cli", "serve", "--port",
                                 str(port)], env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        with httpx.Client(base_url=api, timeout=60,
                          headers={"X-Keepflow-Request": "1"}) as client:
            deadline = time.monotonic() + 60
            while True:  # wait for the server to answer (a condition, with a deadline)
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)

            def trigger(workflow: str, handler: str) -> dict[str, Any]:
                res = client.post(f"/api/workflows/{workflow}/trigger/{handler}",
                                  params={"wait": "true"})
                assert res.status_code == 200, res.text
                body: dict[str, Any] = res.json()
                return body

            assert trigger("victim", "seed")["status"] == "committed"  # a person may
            spy = trigger("attacker", "spy")
            assert (spy["status"], spy["failureClass"]) == ("failed", "permission"), spy
            trigger("attacker", "seed")
            strike = trigger("attacker", "strike")
            assert (strike["status"], strike["failureClass"]) == ("failed", "permission"), strike
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    with Host(settings, pool=pool) as h:
        assert [r["handler"] for r in service.list_runs(h, "victim")] == ["seed"]
        [attack] = [r for r in service.list_runs(h, "attacker") if r["handler"] == "strike"]
        assert [m["status"] for m in attack["mutations"]] == ["failed"]
        assert [e["messageId"] for e in service.list_events(h, "attacker")] == ["go"]
        assert service.list_events(h, "victim")[0]["status"] == "pending"  # never consumed
