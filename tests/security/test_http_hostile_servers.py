"""The ``http`` connector and the webhook client hold against hostile *servers*
(docs/connectors.md#http-deadline, #http-response-bodies, #http-failure-classification).

Every byte a server returns is untrusted, and so is its pace. Against a real hostile server on
loopback (:mod:`tests.support.hostile_http`) this checks, from several sides each:

* **the deadline** — a call ends by its deadline whatever the server does (trickles the
  status line, floods ``102 Processing``, never answers on a kept-alive connection, stops
  reading the request, streams a body forever, redirects slowly), and ends classified: a
  read is transient; a mutation that was sent and got no answer is uncertain (reconcile); a
  mutation that never left is a definite, transient failure;
* **decoding** — a decompression bomb costs a bounded amount of memory and comes back cut,
  and no ``charset`` a server names can raise or turn an applied ``201`` into "did it
  happen?";
* **URLs a server or a script writes** — an IDNA name that does not decode, a ``Location``
  with control characters or another scheme: definite failures, never untyped exceptions;
* **numbers and sizes** — ``Retry-After`` of 10**20 or year 9999, thousands of headers;
* **end to end** — through workflows on SQLite and PostgreSQL: ``drain`` finishes the other
  workflows while a hostile server trickles, and the ledger says ``applied`` where the server
  answered ``201``.
"""

from __future__ import annotations

import gzip
import shutil
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall
from keepflow.connectors.config import Connections
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.http_body import MAX_BODY_BYTES, read_body
from keepflow.connectors.http_classify import (
    MAX_HEADER_CHARS,
    MAX_RESULT_HEADERS,
    MAX_RETRY_AFTER_SECONDS,
    MAX_TEXT_CHARS,
    parse_retry_after,
)
from keepflow.connectors.http_transport import DeadlineStream, DeadlineTransport, deadline_in
from keepflow.connectors.secret import Secret
from keepflow.errors import (
    ConfigError,
    ConnectorError,
    PermanentError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import WebhookStatus, WorkflowStatus
from keepflow.notifications import deliver_webhooks, sweep, webhook_client
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.store.store import Store
from tests.support.hostile_http import (
    Handler,
    HostileServer,
    bomb,
    bomb_bytes,
    chunked_forever,
    delayed,
    gzip_members,
    info_flood,
    never_read,
    respond,
    respond_in_parts,
    self_signed,
    server_tls,
    silent,
    trickle_body,
    trickle_headers,
)
from tests.support.notify import REASON, hooked, open_now, workflow
from tests.support.sink import Sink
from tests.support.workflows import consumer_js, deploy_source, quick_policy, workflow_js

pytestmark = pytest.mark.integration

#: The deadline of most calls here, and what a loaded two-core machine may add to it.
T = 1.0
MARGIN = 1.5
KEY = "kf-wf-run-1"
#: Python allocations a bounded read may make at most (the body is cut at 2 MiB).
MEMORY_BOUND = 40 << 20


@pytest.fixture
def server() -> Iterator[HostileServer]:
    s = HostileServer(recv_buffer=8192)
    yield s
    s.close()


@pytest.fixture
def evil(server: HostileServer) -> Iterator[HttpConnector]:
    c = HttpConnector(ConnectionConfig("evil", "http", {"base_url": server.url}))
    yield c
    c.close()


def read(url: str, timeout: float = T, **params: Any) -> ToolCall:
    return ToolCall("get", {"url": url, **params}, timeout=timeout)


def post(url: str, timeout: float = T, **params: Any) -> ToolCall:
    return ToolCall("post", {"url": url, "json": {"order": 1}, **params}, timeout=timeout,
                    idempotency_key=KEY)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` or the connector error it raised, and the seconds it took."""
    started = time.monotonic()
    try:
        out = fn()
    except ConnectorError as exc:
        out = exc
    return out, time.monotonic() - started


def assert_within(elapsed: float, deadline: float = T) -> None:
    assert elapsed < deadline + MARGIN, f"took {elapsed:.2f}s, the deadline was {deadline}s"


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak of Python allocations (zlib's buffers included) while it ran."""
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def stream_body(server: HostileServer, path: str) -> tuple[bytes, bool]:
    """``read_body`` of a real streamed response from ``server``."""
    with httpx.Client(transport=DeadlineTransport()) as client, \
            client.stream("GET", f"{server.url}{path}") as response:
        return read_body(response)


# ------------------------------------------------------------------------------ deadline

NO_FINAL_ANSWER: dict[str, Callable[[], Handler]] = {
    "status line and headers trickled": trickle_headers,
    "102 Processing flood": info_flood,
    "silence after the request": silent,
}
ENDLESS_BODY: dict[str, Callable[[], Handler]] = {
    "body trickled byte by byte": trickle_body,
    "chunked body that never ends": chunked_forever,
}


@pytest.mark.parametrize("mode", NO_FINAL_ANSWER)
def test_a_read_without_a_final_answer_ends_at_the_deadline_as_transient(
        server: HostileServer, evil: HttpConnector, mode: str) -> None:
    server.route("/x", NO_FINAL_ANSWER[mode]())
    out, elapsed = timed(lambda: evil.call(read("/x")))
    assert type(out) is TransientError
    assert f"did not finish within the {T:g} s the call may take" in out.message
    assert "docs/connectors.md#http-deadline" in out.message
    assert_within(elapsed)


@pytest.mark.parametrize("mode", NO_FINAL_ANSWER)
def test_a_mutation_sent_without_a_final_answer_is_uncertain_at_the_deadline(
        server: HostileServer, evil: HttpConnector, mode: str) -> None:
    server.route("/orders", NO_FINAL_ANSWER[mode]())
    out, elapsed = timed(lambda: evil.call(post("/orders")))
    assert type(out) is UncertainOutcome  # the server has it: reconcile decides (SPEC §6)
    assert out.details["sent"] is True
    assert_within(elapsed)
    [seen] = server.requests
    assert seen.headers["idempotency-key"] == KEY
    assert seen.body == b'{"order":1}'


@pytest.mark.parametrize("tool", ["get", "post"])
@pytest.mark.parametrize("mode", ENDLESS_BODY)
def test_an_endless_body_after_the_status_is_cut_at_the_deadline(
        server: HostileServer, evil: HttpConnector, mode: str, tool: str) -> None:
    server.route("/x", ENDLESS_BODY[mode]())
    result, elapsed = timed(lambda: evil.call(read("/x") if tool == "get" else post("/x")))
    assert_within(elapsed)
    # The status arrived, so the outcome is definite: a mutation here is applied.
    assert result["status"] == 200
    assert result["truncated"] is True
    assert set(result["text"]) <= {"x"}


def test_a_kept_alive_connection_that_never_answers_again_ends_at_the_deadline(
        server: HostileServer, evil: HttpConnector) -> None:
    server.route("/ok", respond(200, {"Content-Type": "application/json"}, b'{"ok": true}'))
    server.route("/orders", silent())
    assert evil.call(read("/ok"))["json"] == {"ok": True}
    out, elapsed = timed(lambda: evil.call(post("/orders")))
    assert type(out) is UncertainOutcome
    assert_within(elapsed)
    first, second = server.requests
    assert first.connection == second.connection  # the pooled connection was reused


def test_a_server_that_stops_reading_cannot_stretch_the_write_past_the_deadline(
        server: HostileServer, evil: HttpConnector) -> None:
    server.route("/upload", never_read())
    big = ToolCall("post", {"url": "/upload", "body": "x" * (16 << 20)}, timeout=T,
                   idempotency_key=KEY)
    out, elapsed = timed(lambda: evil.call(big))
    assert type(out) is UncertainOutcome  # part of the request arrived
    assert "WriteTimeout" in out.message
    assert_within(elapsed)


def test_every_redirect_hop_of_a_read_shares_the_one_deadline(
        server: HostileServer, evil: HttpConnector) -> None:
    for i in range(4):  # each hop is slow but honest: 4 × 0.4 s
        server.route(f"/hop{i}", delayed(0.4, respond(302, {"Location": f"/hop{i + 1}"})))
    server.route("/hop4", respond(200, body=b"landed"))
    out, elapsed = timed(lambda: evil.call(read("/hop0")))
    assert type(out) is TransientError
    assert_within(elapsed)
    assert len(server.requests) <= 3
    # With time enough, the same chain is followed to its end.
    assert evil.call(read("/hop0", timeout=10))["text"] == "landed"


def test_a_reconcile_get_ends_at_its_deadline_and_answers_retry(
        server: HostileServer, evil: HttpConnector) -> None:
    server.route("/check/", trickle_headers())
    call = post("/orders", reconcile={"url": "/check/{idempotencyKey}"})
    verdict, elapsed = timed(lambda: evil.reconcile(call))
    assert verdict.outcome is ReconcileOutcome.RETRY
    assert_within(elapsed)
    assert server.paths() == [f"/check/{KEY}"]


def test_a_name_lookup_that_hangs_ends_at_the_deadline_and_nothing_was_sent() -> None:
    release = threading.Event()

    def hanging_dns(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["93.184.216.34"]

    c = HttpConnector(ConnectionConfig("http", "http", {}), resolver=hanging_dns)
    try:
        out, elapsed = timed(lambda: c.call(post("https://api.example.com/orders")))
    finally:
        release.set()
        c.close()
    assert type(out) is TransientError  # a definite failure: the request never left
    assert out.details["sent"] is False
    assert_within(elapsed)


def test_the_scripts_shorter_timeout_is_the_deadline(server: HostileServer,
                                                     evil: HttpConnector) -> None:
    server.route("/x", info_flood())
    out, elapsed = timed(lambda: evil.call(ToolCall("get", {"url": "/x", "timeout": 0.3},
                                                    timeout=30)))
    assert type(out) is TransientError
    assert_within(elapsed, 0.3)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the TLS variants need the openssl command to make a test certificate")
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_a_tls_handshake_that_never_completes_ends_at_the_deadline_unsent(
        server: HostileServer) -> None:
    """The server accepts the connection and never speaks TLS."""
    c = HttpConnector(ConnectionConfig("evil", "http", {
        "base_url": server.url.replace("http://", "https://")}))
    try:
        out, elapsed = timed(lambda: c.call(post("/orders")))
    finally:
        c.close()
    assert type(out) is TransientError  # definite: no request was written
    assert out.details["sent"] is False
    assert_within(elapsed)


@pytest.mark.parametrize("mode", [*NO_FINAL_ANSWER, *ENDLESS_BODY])
def test_over_tls_every_mode_ends_at_the_deadline_too(certificate: tuple[Path, Path],
                                                       mode: str) -> None:
    cert, key = certificate
    s = HostileServer(tls=server_tls(cert, key))
    s.route("/x", (NO_FINAL_ANSWER | ENDLESS_BODY)[mode]())
    c = HttpConnector(ConnectionConfig("evil", "http", {"base_url": s.url,
                                                        "verify": str(cert)}))
    try:
        for call, error in ((read("/x"), TransientError), (post("/x"), UncertainOutcome)):
            out, elapsed = timed(lambda call=call: c.call(call))
            assert_within(elapsed)
            if mode in ENDLESS_BODY:
                assert out["truncated"] is True
            else:
                assert type(out) is error
    finally:
        c.close()
        s.close()
    assert len(s.requests) == 2  # TLS worked: both requests arrived


def test_the_deadline_stream_on_a_real_socket() -> None:
    """A late first write means nothing was sent (connect timeout: definite); a late write
    within a request, or a read, is a timeout after sending; a silent peer's read ends at
    the deadline although the socket timeout given is much longer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = DeadlineStream(httpcore.SyncBackend().connect_tcp("127.0.0.1", port,
                                                                   timeout=5))
        peer, _ = listener.accept()
        try:
            with deadline_in(0), pytest.raises(httpcore.ConnectTimeout):
                stream.write(b"GET / HTTP/1.1\r\n", timeout=30)
            with deadline_in(5):
                stream.write(b"GET / HTTP/1.1\r\n", timeout=30)
            with deadline_in(0), pytest.raises(httpcore.WriteTimeout):
                stream.write(b"Host: x\r\n\r\n", timeout=30)
            started = time.monotonic()
            with deadline_in(0.3), pytest.raises(httpcore.ReadTimeout):
                stream.read(1024, timeout=30)
            assert_within(time.monotonic() - started, 0.3)
            assert peer.recv(100) == b"GET / HTTP/1.1\r\n"  # nothing of the late writes
        finally:
            stream.close()
            peer.close()


# ------------------------------------------------------------------------------ bodies

BOMBS = [("gzip", 1), ("gzip", 2), ("deflate", 2), ("raw-deflate", 1)]


@pytest.mark.parametrize(("coding", "layers"), BOMBS)
def test_a_decompression_bomb_is_cut_while_it_is_decoded(
        server: HostileServer, coding: str, layers: int) -> None:
    server.route("/bomb", bomb(coding, layers, 128 << 20))
    (body, truncated), peak = peak_memory(lambda: stream_body(server, "/bomb"))
    assert (len(body), truncated) == (MAX_BODY_BYTES, True)
    assert body == bytes(MAX_BODY_BYTES)  # decoded correctly, as far as it was read
    assert peak < MEMORY_BOUND, f"{peak >> 20} MiB for a {MAX_BODY_BYTES >> 20} MiB body"


@pytest.mark.parametrize("tool", ["get", "post"])
def test_the_connector_returns_a_bomb_cut_with_bounded_memory(
        server: HostileServer, evil: HttpConnector, tool: str) -> None:
    bomb_bytes("gzip", 2, 256 << 20)  # built before measuring
    server.route("/bomb", bomb("gzip", 2, 256 << 20, status=201, content_type="text/plain"))
    started = time.monotonic()
    result, peak = peak_memory(lambda: evil.call(read("/bomb") if tool == "get"
                                                 else post("/bomb")))
    assert_within(time.monotonic() - started)
    assert peak < MEMORY_BOUND, f"{peak >> 20} MiB"
    assert result["status"] == 201
    assert result["truncated"] is True
    assert result["text"] == "\x00" * MAX_TEXT_CHARS
    assert server.requests[0].headers["accept-encoding"] == "gzip, deflate"


def test_legitimate_compressed_bodies_still_decode_exactly(server: HostileServer,
                                                           evil: HttpConnector) -> None:
    payload = b'{"items": [' + b", ".join(b'"item %d"' % i for i in range(5000)) + b"]}"
    first, second = gzip.compress(payload[:7000]), gzip.compress(payload[7000:])
    members = first + second  # RFC 1952
    server.route("/multi", respond(200, {"Content-Type": "application/json",
                                         "Content-Encoding": "gzip"}, members))
    server.route("/zlib", respond(200, {"Content-Type": "application/json",
                                        "Content-Encoding": "deflate"},
                                  zlib.compress(payload)))
    server.route("/twice", respond(200, {"Content-Type": "application/json",
                                         "Content-Encoding": "gzip, gzip"},
                                   gzip.compress(gzip.compress(payload))))
    server.route("/apart", respond_in_parts(  # the second member arrives later, in parts
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        [first, second[:1], second[1:-3], second[-3:]]))
    for path in ("/multi", "/zlib", "/twice", "/apart"):
        result = evil.call(read(path))
        assert result["json"]["items"][4999] == "item 4999", path
        assert "truncated" not in result


@pytest.mark.parametrize("declared", ["gzip, gzip, gzip", "br", "zstd", "compress",
                                      "gzip, x-custom"])
def test_a_coding_that_cannot_be_bounded_is_returned_as_it_arrived(
        server: HostileServer, declared: str) -> None:
    data = bomb_bytes("gzip", 1, 1 << 20)
    server.route("/x", respond(200, {"Content-Type": "application/octet-stream",
                                     "Content-Encoding": declared}, data))
    assert stream_body(server, "/x") == (data, False)


@pytest.mark.parametrize(("coding", "data"), [
    ("gzip", gzip_members(400_000)),  # endless empty gzip members
    ("deflate", b"\x00\x00\x00\xff\xff" * 1_000_000),  # empty stored deflate blocks
])
def test_a_body_that_decodes_to_nothing_is_not_read_forever(
        server: HostileServer, coding: str, data: bytes) -> None:
    server.route("/x", respond(200, {"Content-Encoding": coding}, data))
    (out, elapsed) = timed(lambda: stream_body(server, "/x"))
    assert out == (b"", True)
    assert_within(elapsed)


NOT_CHARSETS = ["rot13", "rot_13", "hex", "zlib", "base64", "bz2", "uu", "quopri", "idna",
                "punycode", "unicode_escape", "raw_unicode_escape", "undefined",
                "no-such-charset", "utf-8'", "x" * 300, "\"utf-8", "utf\xe9"]


@pytest.mark.parametrize("charset", NOT_CHARSETS)
def test_a_charset_that_is_no_charset_never_makes_an_applied_201_uncertain(
        server: HostileServer, evil: HttpConnector, charset: str) -> None:
    content_type = f"text/plain; charset={charset}"
    server.route("/orders", respond(201, {"Content-Type": content_type}, b"created \xff",
                                    reason="Created"))
    for call in (post("/orders"), read("/orders")):
        result = evil.call(call)
        assert (result["status"], result["text"]) == (201, "created \ufffd")
    server.route("/orders", respond(409, {"Content-Type": content_type}, b"duplicate \xff"))
    with pytest.raises(PermanentError) as info:  # definite, with the body quoted
        evil.call(post("/orders"))
    assert "duplicate \ufffd" in info.value.message


@pytest.mark.parametrize(("charset", "data", "text"), [
    ("iso-8859-1", b"caf\xe9", "café"), ("utf-16", "hé".encode("utf-16"), "hé"),
    ("shift_jis", "日本".encode("shift_jis"), "日本"), ("UTF-8", "ü".encode(), "ü"),
])
def test_real_charsets_are_still_honoured(server: HostileServer, evil: HttpConnector,
                                          charset: str, data: bytes, text: str) -> None:
    server.route("/t", respond(200, {"Content-Type": f"text/plain; charset={charset}"}, data))
    assert evil.call(read("/t"))["text"] == text


@pytest.mark.parametrize("charset", ["punycode", "idna"])
def test_a_quadratic_codec_is_never_used_on_a_large_body(
        server: HostileServer, evil: HttpConnector, charset: str) -> None:
    server.route("/t", respond(200, {"Content-Type": f"text/plain; charset={charset}"},
                               b"a" * MAX_BODY_BYTES))
    result, elapsed = timed(lambda: evil.call(read("/t")))
    assert result["text"] == "a" * MAX_TEXT_CHARS
    assert_within(elapsed)


@pytest.mark.parametrize("depth", [600, 900])
def test_json_nested_too_deeply_to_redact_is_returned_as_text_not_uncertain(
        server: HostileServer, depth: int) -> None:
    c = HttpConnector(ConnectionConfig("evil", "http", {
        "base_url": server.url, "headers": {"X-Api-Key": Secret("s3cr3t-k3y-v4lue", "K")}}))
    server.route("/orders", respond(201, {"Content-Type": "application/json"},
                                    b"[" * depth + b"]" * depth, reason="Created"))
    try:
        result = c.call(post("/orders"))
    finally:
        c.close()
    assert result["status"] == 201
    assert result["text"] == "[" * depth + "]" * depth


def test_thousands_of_headers_or_a_huge_one_are_cut_and_the_json_still_parsed(
        server: HostileServer, evil: HttpConnector) -> None:
    many = b"".join(b"X-Header-%d: value\r\n" % i for i in range(3000))
    server.route("/many", respond(200, {"Content-Type": "application/json"}, b'{"a": 1}',
                                  raw_headers=many))
    server.route("/huge", respond(200, {"Content-Type": "application/json"}, b'{"a": 1}',
                                  raw_headers=b"X-Huge: " + b"h" * 90_000 + b"\r\n"))
    result = evil.call(read("/many"))
    assert (result["json"], result["truncated"]) == ({"a": 1}, True)
    assert len(result["headers"]) == MAX_RESULT_HEADERS
    result = evil.call(read("/huge"))
    assert (result["json"], result["truncated"]) == ({"a": 1}, True)
    assert len(result["headers"]["x-huge"]) == MAX_HEADER_CHARS


@pytest.mark.parametrize("reason", ["Bad\x1b[31m \x07gateway", "R" * 90_000])
def test_a_reason_phrase_reaches_a_message_short_and_inert(
        server: HostileServer, evil: HttpConnector, reason: str) -> None:
    server.route("/x", respond(502, reason=reason, headers={"Location": "/\x1b[2J"}))
    server.route("/moved", respond(301, reason=reason, headers={"Location": "/\x1b[2J"}))
    for call, error in ((read("/x"), TransientError), (post("/x"), UncertainOutcome),
                        (post("/moved"), PermanentError)):
        with pytest.raises(error) as info:
            evil.call(call)
        message = info.value.message
        assert message.isprintable()
        assert len(message) < 1000


@pytest.mark.parametrize(("tool", "error"), [("get", TransientError),
                                             ("post", UncertainOutcome)])
def test_a_header_block_beyond_the_parsers_limit_is_a_typed_failure(
        server: HostileServer, evil: HttpConnector, tool: str,
        error: type[ConnectorError]) -> None:
    server.route("/x", respond(200, raw_headers=b"X-Big: " + b"b" * (10 << 20) + b"\r\n"))
    out, elapsed = timed(lambda: evil.call(read("/x") if tool == "get" else post("/x")))
    assert type(out) is error  # no valid answer arrived after the request was sent
    assert_within(elapsed)


# ------------------------------------------------------------------------------ URLs

BAD_IDNA = ["xn--localhost", "XN--LOCALHOST", "xn--", "xn--a", "xn--ls8h", "xn--zz-7vz.example.com"]


@pytest.mark.parametrize("host", BAD_IDNA)
def test_a_script_url_whose_idna_name_does_not_decode_is_a_definite_invalid_url(
        host: str) -> None:
    c = HttpConnector(ConnectionConfig("http", "http", {}))
    try:
        for call in (read(f"http://{host}/x"), post(f"https://{host}/orders"),
                     post("https://api.example.com/orders",
                          reconcile={"url": f"http://{host}/check/{{idempotencyKey}}"})):
            with pytest.raises(PermanentError, match="is not a valid URL"):
                c.validate(call)
            with pytest.raises(PermanentError, match="is not a valid URL"):
                c.call(call)
        assert c.describe(post(f"http://{host}/orders")) == "http.post (invalid url)"
    finally:
        c.close()


@pytest.mark.parametrize("settings", [
    {"base_url": "http://xn--localhost/api"}, {"allow": ["http://xn--ls8h:9000"]},
    {"proxy": "http://xn--a:3128"},
])
def test_a_configured_idna_name_that_does_not_decode_is_a_config_error(
        settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HttpConnector.validate_settings(settings)


BAD_LOCATIONS = [b"http://xn--localhost/x", b"//xn--ls8h/x", b"/a\x01b", b"/\x1b[31mred",
                 b"javascript:alert(1)", b"file:///etc/passwd", b"ftp://example.com/",
                 b"http://user:pw@example.com/", b"http://[::1/"]


@pytest.mark.parametrize("location", BAD_LOCATIONS)
def test_a_redirect_to_a_location_that_is_no_http_url_is_a_definite_failure(
        server: HostileServer, evil: HttpConnector, location: bytes) -> None:
    server.route("/hop", respond(302, raw_headers=b"Location: " + location + b"\r\n"))
    with pytest.raises(PermanentError) as info:
        evil.call(read("/hop"))
    message = info.value.message
    assert "it was not followed" in message
    assert message.isascii()
    assert message.isprintable()  # a server's control characters stay inert
    assert server.paths() == ["/hop"]


@pytest.mark.parametrize(("status", "applied"), [(303, True), (302, True), (307, False)])
def test_a_mutations_redirect_with_a_broken_location_keeps_its_status_outcome(
        server: HostileServer, evil: HttpConnector, status: int, applied: bool) -> None:
    server.route("/orders", respond(status, raw_headers=b"Location: http://xn--localhost/\r\n"))
    out, _ = timed(lambda: evil.call(post("/orders")))
    if applied:  # post/redirect/get: processed (docs/connectors.md#http-failure-classification)
        assert out["status"] == status
    else:
        assert type(out) is PermanentError
    assert server.paths() == ["/orders"]


# ------------------------------------------------------------------------------ numbers

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 30 ", 30.0), ("0", 0.0), (str(10**20), MAX_RETRY_AFTER_SECONDS),
    ("9" * 400, MAX_RETRY_AFTER_SECONDS), ("1e20", None), ("-5", None), ("\xb2", None),
    ("3.5", None),
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SECONDS),
    (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
    (format_datetime(NOW - timedelta(days=1), usegmt=True), 0.0),
    ("Mon, 99 Foo 99999 99:99:99 GMT", None), ("x" * 10_000, None),
])
def test_retry_after_is_read_strictly_and_capped(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("value", [str(10**20), "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_servers_retry_after_cannot_hold_the_run_for_ages(
        server: HostileServer, evil: HttpConnector, value: str) -> None:
    server.route("/x", respond(429, {"Retry-After": value}))
    for call in (read("/x"), post("/x")):
        with pytest.raises(TransientError) as info:
            evil.call(call)
        assert info.value.retry_after == MAX_RETRY_AFTER_SECONDS


# ------------------------------------------------------------------------------ webhooks


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[Store]:
    s = Store(store_url, clock=clock.now)
    yield s
    s.close()


WEBHOOK_ANSWERS: dict[str, tuple[Callable[[], Handler], bool]] = {
    # name: (handler, delivered?)
    "gzip bomb": (lambda: bomb("gzip", 2, 256 << 20), True),
    "body trickled forever": (trickle_body, True),
    "status line trickled": (trickle_headers, False),
    "102 Processing flood": (info_flood, False),
    "silence": (silent, False),
}


@pytest.mark.parametrize("answer", WEBHOOK_ANSWERS)
def test_a_webhook_receiver_cannot_bomb_or_hold_the_host(
        store: Store, clock: FakeClock, server: HostileServer, answer: str) -> None:
    handler, delivered = WEBHOOK_ANSWERS[answer]
    bomb_bytes("gzip", 2, 256 << 20)
    server.route("/hook", handler())
    policies = hooked(f"{server.url}/hook", webhook_timeout_seconds=T)
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    started = time.monotonic()
    with webhook_client() as client:
        count, peak = peak_memory(lambda: deliver_webhooks(store, policies, clock.now(),
                                                           client))
    assert_within(time.monotonic() - started)
    assert peak < MEMORY_BOUND
    [n] = open_now(store)
    assert len(server.requests) == 1
    if delivered:  # only the status matters: the body is never read
        assert (count, n.webhook_status) == (1, WebhookStatus.DELIVERED)
    else:
        assert (count, n.webhook_status) == (0, WebhookStatus.PENDING)
        assert n.webhook_error is not None
        assert n.webhook_error.startswith("ReadTimeout")


def test_a_webhook_url_whose_idna_name_does_not_decode_is_a_recorded_failure(
        store: Store, clock: FakeClock) -> None:
    policies = hooked("http://xn--localhost/hook")
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    with webhook_client() as client:
        assert deliver_webhooks(store, policies, clock.now(), client) == 0
    [n] = open_now(store)
    assert n.webhook_status is WebhookStatus.PENDING
    assert n.webhook_error is not None


# ------------------------------------------------------------------------------ workflows


@pytest.fixture
def evil_host(store_url: str, tmp_path: Path, pool: SandboxPool, sink: Sink,
              server: HostileServer, clock: FakeClock) -> Iterator[Host]:
    connections = Connections([
        ConnectionConfig("http", "http", {}),
        ConnectionConfig("api", "http", {"base_url": sink.url}),
        ConnectionConfig("evil", "http", {"base_url": server.url}),
    ])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def _deploy(host: Host, tmp_path: Path, name: str, *, prepare: str | None = None,
            mutate: str) -> None:
    seed = """seed: async (ctx) => { await ctx.publish("items", { messageId: "1",
                                                               title: "Order 1" }); },"""
    deploy_source(host, tmp_path, workflow_js(
        name=name, producers=seed, consumers=consumer_js(prepare=prepare, mutate=mutate)),
        name=f"{name}.js")
    service.trigger(host, name, "seed")


def _ledger(host: Host, wf: str) -> list[str]:
    runs = [service.show_run(host, r["id"]) for r in service.list_runs(host, wf)]
    return [m["status"] for r in runs for m in r.get("mutations", [])]


def test_drain_finishes_the_other_workflows_while_hostile_servers_trickle(
        evil_host: Host, tmp_path: Path, server: HostileServer, sink: Sink) -> None:
    server.route("/stall", info_flood())
    server.route("/orders", trickle_headers())
    server.route("/check/", respond(200, {"Content-Type": "application/json"}, b"{}"))
    _deploy(evil_host, tmp_path, "a-hostile-read", prepare="""
      await ctx.evil.get({ url: "/stall" });
      return { reservations: [], data: {} };""", mutate="")
    _deploy(evil_host, tmp_path, "b-hostile-write", mutate="""
      await ctx.evil.post({ url: "/orders", json: { id: prepared.data.event.messageId },
                            reconcile: { url: "/check/{idempotencyKey}" } });""")
    _deploy(evil_host, tmp_path, "c-hostile-blind", mutate="""
      await ctx.evil.post({ url: "/orders", json: { id: prepared.data.event.messageId } });""")
    _deploy(evil_host, tmp_path, "d-victim", mutate="""
      await ctx.api.post({ url: "/orders", json: { id: prepared.data.event.messageId } });""")
    done: dict[str, service.DrainReport] = {}
    worker = threading.Thread(target=lambda: done.setdefault("r", service.drain(evil_host)),
                              daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "drain is held by a hostile server"
    # Three reads of 0.5 s, a mutation and its reconcile of 0.5 s each, one more mutation.
    assert time.monotonic() - started < 15
    assert len(sink.applied_keys()) == 1  # the victim's mutation went through
    assert _ledger(evil_host, "d-victim") == ["applied"]
    assert _ledger(evil_host, "b-hostile-write") == ["applied"]  # uncertain → reconciled
    assert _ledger(evil_host, "c-hostile-blind") == ["indeterminate"]  # no way to verify
    [read_run] = [r for r in service.list_runs(evil_host, "a-hostile-read")
                  if r["handler"] == "work"]
    assert service.show_run(evil_host, read_run["id"])["failure"]["class"] == "transient"


@pytest.mark.parametrize("answer", ["charset=rot13", "charset=punycode", "303 to xn--"])
def test_an_answered_mutation_is_applied_end_to_end_whatever_the_server_adds(
        evil_host: Host, tmp_path: Path, server: HostileServer, answer: str) -> None:
    if answer.startswith("charset"):
        server.route("/orders", respond(201, {"Content-Type": f"text/plain; {answer}"},
                                        b"created", reason="Created"))
    else:
        server.route("/orders", respond(303, raw_headers=b"Location: http://xn--localhost/\r\n"))
    _deploy(evil_host, tmp_path, "shop", mutate="""
      await ctx.evil.post({ url: "/orders", json: { id: prepared.data.event.messageId } });""")
    service.drain(evil_host)
    assert _ledger(evil_host, "shop") == ["applied"]
    assert server.paths() == ["/orders"]


def test_a_mutation_to_an_idna_name_that_does_not_decode_fails_definitely_end_to_end(
        evil_host: Host, tmp_path: Path) -> None:
    _deploy(evil_host, tmp_path, "wf", mutate="""
      await ctx.http.post({ url: "http://xn--localhost/orders", json: { id: 1 } });""")
    service.drain(evil_host)
    assert "indeterminate" not in _ledger(evil_host, "wf")
    [run] = [r for r in service.list_runs(evil_host, "wf") if r["handler"] == "work"]
    failure = service.show_run(evil_host, run["id"])["failure"]
    assert failure["code"] == "permanent"
    assert "is not a valid URL" in failure["message"]
