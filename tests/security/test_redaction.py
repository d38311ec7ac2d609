"""Hostile data vs. secrets: no echo of a credential survives, whole or in part
(docs/connectors.md#configuring-connections, docs/security.md).

The defect: the redactor masked only the exact configured value (``Bearer <token>``) and ran
*after* the cuts (64 KiB of text, 500 characters of an error snippet, the 2 MiB read limit),
so a server echoing the bare token, or an echo cut short, put the token into results, error
messages, the ledger, events and ``run show``. A real loopback server here echoes the
secrets in every way we could think of; nothing anyone can see may contain the secret or
any piece of it of :data:`MIN_CUT_PREFIX_CHARS` characters or more.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig, ToolCall
from keepflow.connectors.config import Connections
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.http_classify import ERROR_BODY_CHARS, MAX_BODY_BYTES, MAX_TEXT_CHARS
from keepflow.connectors.secret import (
    MASK,
    MIN_CUT_PREFIX_CHARS,
    MIN_SECRET_CHARS,
    Redactor,
    Secret,
    secret_pieces,
)
from keepflow.errors import ConnectorError, KeepflowError
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.integration.conftest import clock, pool  # noqa: F401
from tests.support.workflows import consumer_js, deploy_source, quick_policy, workflow_js

TOKEN = "s3cr3t-7f1e9c2a-Qx8Zk4Lw"
BEARER = f"Bearer {TOKEN}"
USER, PASSWORD = "kf-robot", "pw-9Hq2Lz7Xv"
BASIC_B64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BASIC = f"Basic {BASIC_B64}"
#: What must never be seen, in any piece of MIN_CUT_PREFIX_CHARS characters or more.
SECRETS = (TOKEN, PASSWORD, BASIC_B64)

integration = pytest.mark.integration


def pct_all(s: str, upper: bool = True) -> str:
    """Every character percent-encoded, as a hostile server may write it."""
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in s.encode())


def json_escaped(s: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in s)


def views(text: str) -> list[str]:
    """``text`` and its decodings: a leak written encoded is still a leak."""
    unjson = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    return [text, unquote(text), unquote_plus(text), unjson, unquote(unjson)]


def leaked(text: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """Every piece of a secret (≥ MIN_CUT_PREFIX_CHARS) that can be read in ``text``."""
    found = []
    for secret in secrets:
        pieces = {secret[i:i + MIN_CUT_PREFIX_CHARS]
                  for i in range(len(secret) - MIN_CUT_PREFIX_CHARS + 1)}
        for view in views(text):
            found += [p for p in pieces if p in view]
    return sorted(set(found))


def assert_no_leak(*things: Any, secrets: tuple[str, ...] = SECRETS) -> None:
    for thing in things:
        if isinstance(thing, KeepflowError):
            texts = [str(thing), repr(thing), thing.message, json.dumps(thing.to_dict())]
        elif isinstance(thing, str):
            texts = [thing]
        else:
            texts = [json.dumps(thing, default=str)]
        for text in texts:
            bad = leaked(text, secrets)
            assert bad == [], f"leaked {bad} in {text[:300]!r}…{text[-300:]!r}"


# ------------------------------------------------------------------------ the Redactor itself


def test_every_piece_of_a_credential_is_derived() -> None:
    pieces = dict(secret_pieces(BEARER))
    assert pieces == {BEARER: False, TOKEN: True}
    basic = dict(secret_pieces(BASIC))
    assert basic[BASIC_B64]
    assert basic[f"{USER}:{PASSWORD}"]
    assert basic[PASSWORD]
    url = dict(secret_pieces(f"postgresql://kf:{quote('p@ss/wörd', safe='')}@db.example/shop"))
    assert url["p@ss/wörd"] is True
    assert url[f"postgresql://kf:{quote('p@ss/wörd', safe='')}@db.example/shop"] is False


@pytest.mark.parametrize("echo", [
    f"you sent {BEARER}",
    f"token {TOKEN} is not valid",
    f"token={pct_all(TOKEN)}",
    f"token={pct_all(TOKEN, upper=False)}",
    f"token={quote(TOKEN, safe='')}",
    "token=" + TOKEN[:5] + pct_all(TOKEN[5:9]) + TOKEN[9:],  # partly encoded
    f'{{"t": "{json_escaped(TOKEN)}"}}',
    f'{{"t": "{TOKEN[:4]}{json_escaped(TOKEN[4:10])}{TOKEN[10:]}"}}',
    f"pw {PASSWORD} for {USER}",
    f"creds {USER}:{PASSWORD}",
    f"basic {BASIC_B64}",
    f"cut off at the end: {TOKEN[:MIN_CUT_PREFIX_CHARS]}",
    f"cut off at the end: {TOKEN[:-1]}",
    f"cut off, encoded: {pct_all(TOKEN[:9])}",
    f"cut off mid-escape: {pct_all(TOKEN[:9])}%4",
    f"cut off mid-escape: {json_escaped(TOKEN[:8])}\\u00",
    f"cut off password: {USER}:{PASSWORD[:7]}",
    f"INVALID TOKEN {TOKEN.upper()}",
    f"x-{TOKEN.lower()}: name",
])
def test_echoes_in_any_encoding_and_cut_off_echoes_are_masked(echo: str) -> None:
    r = Redactor([BEARER, BASIC])
    masked = r.text(echo)
    assert MASK in masked
    assert leaked(masked) == []


def test_ordinary_text_is_not_mangled() -> None:
    r = Redactor([BEARER, BASIC, "postgresql://kf:hunter2-pw@db.example/shop", "abc"])
    for text in ("Authorization: Bearer realm=api", "use Bearer", "token is not valid",
                 "could not connect to postgresql", f"the token starts {TOKEN[:5]}",
                 "user kf-robot is not allowed", "abc" * 3, "s3cr3"):
        assert r.text(text) == text


def test_any_letter_case_matches_and_numbers_are_masked() -> None:
    r = Redactor(["deadbeefcafe0123", "Token 98765432"])
    assert r.text("id DEADBEEFCAFE0123 ok") == f"id {MASK} ok"
    assert r.deep({"pin": 98765432, "n": 12, "ok": True}) == {"pin": MASK, "n": 12,
                                                                "ok": True}


def test_redaction_happens_before_the_cut() -> None:
    r = Redactor([BEARER])
    text = "a" * 90 + TOKEN + "z" * 10
    for limit in range(len(text)):  # wherever the cut falls, nothing of the token is left
        cut, _ = r.cut(text, limit)
        assert leaked(cut) == [], (limit, cut)
        assert len(cut) <= limit + len(MASK)
    assert r.cut("short", 100) == ("short", False)
    assert Redactor([]).cut("x" * 10, 4) == ("xxxx", True)
    assert not Redactor(["abc"])  # shorter than MIN_SECRET_CHARS: nothing to mask
    assert MIN_SECRET_CHARS <= MIN_CUT_PREFIX_CHARS


def test_sql_urls_keep_working_with_the_redactor() -> None:
    url = "postgresql+psycopg://kf:hunter2-pw@127.0.0.1:5432/shop"
    r = Redactor([url, "hunter2-pw"])
    assert r.text(f'connection to "{url}" failed') == f'connection to "{MASK}" failed'
    assert r.text("password authentication failed: hunter2-pw") == \
        f"password authentication failed: {MASK}"
    assert r.text("password hunter2") == f"password {MASK}"  # cut off


# ------------------------------------------------------------------ a hostile echo server


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    ctype: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    #: Announce this many bytes but send only ``body`` and hang up (a body that breaks off).
    announce: int | None = None


def big(prefix_len: int, tail: str = "z" * 64) -> bytes:
    """``prefix_len`` filler characters, then the token, so it straddles a cut there."""
    return ("a" * (prefix_len - 8) + TOKEN + tail).encode()


def replies(query: str = "") -> dict[str, Reply]:
    json_body = (f'{{"echo": "{BEARER}", "bare": "{TOKEN}", "escaped": "{json_escaped(TOKEN)}",'
                 f' "nested": [{{"k": "{TOKEN}"}}], "{TOKEN}": "as a key",'
                 f' "basic": "{BASIC_B64}", "pw": "{PASSWORD}"}}').encode()
    return {
        "/whole": Reply(body=f"you sent Authorization: {BEARER}".encode()),
        "/bare": Reply(body=f"token {TOKEN} is not valid".encode()),
        "/basic": Reply(body=f"user {USER} password {PASSWORD} ({BASIC_B64})".encode()),
        "/cut-text": Reply(body=big(MAX_TEXT_CHARS)),
        "/cut-read": Reply(body=big(MAX_BODY_BYTES)),
        "/cut-read-json": Reply(body=b'{"a": "' + big(MAX_BODY_BYTES) + b'"}',
                                ctype="application/json"),
        "/broken": Reply(body=("a" * 100 + TOKEN[:12]).encode(), announce=5000),
        "/json": Reply(body=json_body, ctype="application/json"),
        "/pct": Reply(body=f"q={pct_all(TOKEN)}&r={pct_all(TOKEN, False)}&s={quote(BEARER)}"
                           .encode()),
        "/header": Reply(headers={"X-Echo": TOKEN, "X-Auth-Echo": BEARER,
                                  "WWW-Authenticate": f'Bearer error="invalid", t="{TOKEN}"',
                                  f"X-{TOKEN}": "name"}),
        "/location": Reply(status=302, headers={"Location": f"/landing?token={pct_all(TOKEN)}"}),
        "/location-307": Reply(status=307, headers={"Location": f"/landing?token={TOKEN}"}),
        "/landing": Reply(body=f"you came with {query}".encode()),
        "/reason": Reply(status=400, reason=f"Bad token {TOKEN}", body=b"no"),
        "/snippet-400": Reply(status=400, body=big(ERROR_BODY_CHARS)),
        "/snippet-500": Reply(status=500, body=big(ERROR_BODY_CHARS)),
        "/json-400": Reply(status=422, body=json_body, ctype="application/json"),
        "/cut-read-400": Reply(status=400, body=big(MAX_BODY_BYTES)),
        "/broken-400": Reply(status=400, body=("a" * 100 + TOKEN[:12]).encode(), announce=5000),
    }


class EchoServer:
    """A real HTTP server on 127.0.0.1 that echoes the secrets back in hostile ways."""

    def __init__(self) -> None:
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            owner = self

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                self.owner.paths.append(parts.path)
                reply = replies(parts.query).get(parts.path, Reply(status=404))
                self.send_response(reply.status, reply.reason)
                self.send_header("Content-Type", reply.ctype)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(reply.announce or len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)
                if reply.announce:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    s = EchoServer()
    yield s
    s.close()


def connectors(url: str) -> list[tuple[HttpConnector, tuple[str, ...]]]:
    """A Bearer-token connection and a Basic-auth one on the echo server, each with the
    secrets it knows (a connection cannot mask what it was never given)."""
    return [
        (HttpConnector(ConnectionConfig("api", "http", {
            "base_url": url, "headers": {"Authorization": Secret(BEARER, "API_TOKEN")}})),
         (TOKEN,)),
        (HttpConnector(ConnectionConfig("basic", "http", {
            "base_url": url, "headers": {"Authorization": Secret(BASIC, "API_BASIC"),
                                         "X-Api-Key": Secret(TOKEN, "API_KEY")}})),
         SECRETS),
    ]


READ_PATHS = ["/whole", "/bare", "/basic", "/cut-text", "/cut-read", "/cut-read-json",
              "/broken", "/json", "/pct", "/header", "/location", "/landing", "/reason",
              "/snippet-400", "/json-400", "/snippet-500", "/cut-read-400", "/broken-400"]
MUTATION_PATHS = ["/whole", "/bare", "/json", "/header", "/location", "/location-307",
                  "/reason", "/snippet-400", "/snippet-500", "/json-400", "/cut-read-400",
                  "/broken", "/broken-400", "/cut-text"]


@integration
@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_never_show_an_echoed_secret(echo: EchoServer, path: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for c, secrets in connectors(echo.url):
        try:
            for tool in ("get", "head"):
                try:
                    result = c.call(ToolCall(tool, {"url": path}, timeout=5))
                except ConnectorError as exc:
                    assert_no_leak(exc, secrets=secrets)
                else:
                    assert_no_leak(result, secrets=secrets)
                    if path == "/cut-text" and tool == "get":
                        assert result["truncated"] is True
                        assert len(result["text"]) <= MAX_TEXT_CHARS
                    if path == "/broken" and tool == "get":
                        assert result["truncated"] is True
                        assert result["text"].endswith(MASK)
        finally:
            c.close()
    assert_no_leak(caplog.text, secrets=(TOKEN,))  # httpx logs URLs, httpcore headers
    assert path in echo.paths  # the server did answer: this is not a vacuous pass


@integration
@pytest.mark.parametrize("path", MUTATION_PATHS)
def test_mutations_and_reconcile_never_show_an_echoed_secret(
        echo: EchoServer, path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for c, secrets in connectors(echo.url):
        try:
            for tool in ("post", "put", "patch", "delete"):
                call = ToolCall(tool, {"url": path, "json": {"a": 1},
                                       "reconcile": {"url": path + "?k={idempotencyKey}"}},
                                timeout=5, idempotency_key="kf-wf-run-1")
                try:
                    assert_no_leak(c.call(call), secrets=secrets)
                except ConnectorError as exc:
                    assert_no_leak(exc, secrets=secrets)
                verdict = c.reconcile(call)
                assert_no_leak(verdict.result, verdict.detail, secrets=secrets)
        finally:
            c.close()
    assert_no_leak(caplog.text, secrets=(TOKEN,))
    assert path in echo.paths


@integration
def test_error_snippets_quote_the_body_but_not_the_secret(echo: EchoServer) -> None:
    [(api, _), (basic, _)] = connectors(echo.url)
    try:
        with pytest.raises(ConnectorError) as info:
            api.call(ToolCall("post", {"url": "/snippet-400"}, timeout=5,
                              idempotency_key="k1"))
        body = info.value.details["body"]
        assert body.startswith("aaaa")
        assert len(body) <= ERROR_BODY_CHARS
        assert MASK in body  # the token straddled the 500-character cut: masked, then cut
        with pytest.raises(ConnectorError) as info:
            api.call(ToolCall("post", {"url": "/reason"}, timeout=5, idempotency_key="k2"))
        assert "-> 400 Bad token ***" in info.value.message
        with pytest.raises(ConnectorError) as info:
            basic.call(ToolCall("post", {"url": "/location-307"}, timeout=5,
                                idempotency_key="k3"))
        assert "redirected to /landing?token=***" in info.value.message
    finally:
        api.close()
        basic.close()


# ---------------------------------------------------------------- through a workflow run

PRODUCER = """
    read: async (ctx) => {
      for (const path of %(paths)s) {
        let r;
        try { r = await ctx.api.get({ url: path }); }
        catch (e) { r = { error: String(e && e.message || e) }; }
        const s = JSON.stringify(r);
        await ctx.publish("items", { messageId: path, title: s.slice(-180) || "empty",
                                     payload: { head: s.slice(0, 3000), tail: s.slice(-3000),
                                                headers: r.headers ?? null } });
      }
    },
    seed: async (ctx) => { await ctx.publish("orders", { messageId: "m", title: "M",
                                                        payload: { path: "%(mutation)s" } }); },"""

CONSUMER = """
    send: Keep.consumer({
      subscribe: ["orders"],
      async prepare(ctx) {
        const evs = await ctx.peek("orders", { limit: 1 });
        if (!evs.length) return { reservations: [], data: {} };
        return { reservations: [{ topic: "orders", ids: [evs[0].messageId] }],
                 data: { path: evs[0].payload.path } };
      },
      async mutate(ctx, prepared) {
        await ctx.api.post({ url: prepared.data.path, json: { hello: 1 } });
      },
      async next(ctx, prepared, mutation) { return { result: mutation.result ?? null }; },
    }),"""


@pytest.fixture
def echo_host(store_url: str, tmp_path: Path, pool: SandboxPool,  # noqa: F811
              clock: FakeClock, echo: EchoServer) -> Iterator[Host]:  # noqa: F811
    connections = Connections([ConnectionConfig("api", "http", {
        "base_url": echo.url, "headers": {"Authorization": Secret(BEARER, "API_TOKEN")}})])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def everything_visible(host: Host, workflow: str) -> list[Any]:
    """What a person (CLI, API, UI) or a Maintainer prompt can see of a workflow."""
    runs = service.list_runs(host, workflow)
    events = service.list_events(host, workflow)
    return [runs, [service.show_run(host, r["id"]) for r in runs], events,
            [service.show_event(host, workflow, e["topic"], e["messageId"]) for e in events],
            service.list_workflows(host), service.inbox(host)]


@integration
@pytest.mark.parametrize("mutation", ["/snippet-400", "/reason", "/json-400",
                                      "/snippet-500", "/location-307", "/json"])
def test_runs_and_events_never_store_an_echoed_secret(echo_host: Host, tmp_path: Path,
                                                      mutation: str) -> None:
    host = echo_host
    reads = ["/whole", "/bare", "/json", "/pct", "/header", "/location", "/cut-text",
             "/broken", "/cut-read-json"]
    src = workflow_js(producers=PRODUCER % {"paths": json.dumps(reads), "mutation": mutation},
                      consumers=CONSUMER + consumer_js("archive", topic="items"),
                      topics=("items", "orders"))
    deploy_source(host, tmp_path, src)
    read = service.trigger(host, "wf", "read")
    assert read.status is RunStatus.COMMITTED, read.failure
    assert len(service.list_events(host, "wf")) == len(reads)
    service.trigger(host, "wf", "seed")
    sent = service.trigger(host, "wf", "send")
    assert sent.status is not RunStatus.COMMITTED or mutation == "/json"
    visible = everything_visible(host, "wf")
    assert_no_leak(*visible, secrets=(TOKEN,))
    text = json.dumps(visible, default=str)
    assert MASK in text  # the echoes were there, and masked
    assert mutation in text
