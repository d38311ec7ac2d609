"""Attacks on a real `keepflow serve` over loopback (docs/security.md#the-api, docs/api.md,
docs/ui.md): the access token and the session cookie, the login form's redirect, CSRF on page
forms and the JSON API, the ``Host`` check against DNS rebinding, the inbound-event endpoint
with hostile tokens, bodies, text and paths, markup in everything a page shows, the response
headers, the ``/live`` stream and its cap, error answers and ``/metrics``.

Two servers for the whole module: one with ``KEEPFLOW_API_TOKEN`` (how a server is exposed
beyond loopback: every request needs the token) and one on loopback without a token (where the
``Host`` header and the CSRF proofs are all that stand between a web page and the API)."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import httpx
import pytest

from keepflow.web.pages import LIVE_STREAMS
from keepflow.web.security import SESSION_COOKIE, Guard
from tests.acceptance.test_api_operations import ok, until
from tests.acceptance.test_first_hour import _env, kf
from tests.acceptance.test_serve import Server

pytestmark = pytest.mark.integration

TOKEN = "kfa_attack-suite-access-token-0123456789abcdefgh"
#: Another server's secrets: its session cookie, CSRF field and one-time messages.
OTHER = Guard("kfa_another-servers-access-token-0123456789abcd")
CSRF = {"X-Keepflow-Request": "1"}
#: Markup in every value a script, an event sender or a link controls.
X = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
RAW = ("<script>alert", "<img src=x")
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

ALPHA = """
export default Keep.workflow({
  name: "alpha",
  topics: { "order": {}, "report": {} },
  consumers: {
    take: Keep.consumer({
      subscribe: ["order"],
      async prepare(ctx) {
        const [e] = await ctx.peek("order", { limit: 1 });
        if (!e) return { reservations: [] };
        return { reservations: [{ topic: "order", ids: [e.messageId] }], data: e };
      },
      async mutate(ctx, prepared) {
        const p = prepared.data.payload;
        if (p && typeof p === "object" && typeof p.fail === "string") throw new Error(p.fail);
      },
      async next(ctx, prepared, mutation) {
        const p = prepared.data.payload;
        // What scripts commonly do with a payload: copy it, spread it, merge it.
        const merged = Object.assign({}, p);
        const spread = { ...p, ...merged };
        const probe = {};
        await ctx.publish("report", { messageId: "report-" + prepared.data.messageId,
          title: "report", payload: {
            polluted: probe.polluted !== undefined || Object.prototype.polluted !== undefined
              || typeof probe.toString !== "function" || probe.constructor !== Object,
            protoIsObject: Object.getPrototypeOf(probe) === Object.prototype
              && Object.getPrototypeOf(spread) === Object.prototype,
            ownKeys: p && typeof p === "object" ? Object.keys(p).sort() : [],
          } });
        return null;
      },
    }),
    keep: Keep.consumer({
      subscribe: ["report"],
      async prepare(ctx) { return { reservations: [] }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""

#: Its events stay pending (its consumer reserves nothing): they are shown with their actions.
BETA = """
export default Keep.workflow({
  name: "beta",
  topics: { "order": {} },
  consumers: {
    hold: Keep.consumer({
      subscribe: ["order"],
      async prepare(ctx) { return { reservations: [] }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


# ------------------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname
    assert parts.port
    return parts.hostname, parts.port


def _parse(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), data[:200]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def raw(url: str, data: bytes, timeout: float = 10) -> Answer:
    """Send ``data`` as it is and read the answer until the server closes."""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
    return _parse(got)


def request(url: str, method: str, target: str, headers: Sequence[tuple[str, str | bytes]],
            body: bytes = b"", host: str | bytes | None = None) -> Answer:
    """One request, byte for byte: ``host`` None sends this server's own address."""
    name, port = _address(url)
    lines = [f"{method} {target} HTTP/1.1".encode(),
             b"Host: " + (host.encode("latin-1") if isinstance(host, str) else
                          host if host is not None else f"{name}:{port}".encode())]
    for key, value in headers:
        lines.append(key.encode() + b": " + (value if isinstance(value, bytes)
                                            else value.encode("latin-1")))
    lines.append(b"Connection: close")
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return raw(url, b"\r\n".join(lines) + b"\r\n\r\n" + body)


def refused_before_read(url: str, head: bytes, chunks: Iterator[bytes], timeout: float = 15
                        ) -> tuple[Answer, int]:
    """Send ``head``, then ``chunks`` while the server reads them, until it answers: the
    answer and how many body bytes had been sent by then."""
    sent = 0
    got = b""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(head)
        deadline = time.monotonic() + timeout
        pending = b""
        while time.monotonic() < deadline and b"\r\n\r\n" not in got:
            readable, writable, _ = select.select([sock], [sock], [], 0.5)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
                continue
            if writable:
                if not pending:
                    pending = next(chunks, b"")
                    if not pending:
                        continue  # all sent: wait for the answer
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    pending = b""
                    continue
                sent += n
                pending = pending[n:]
        answer = _parse(got)
        length = int(answer.headers.get("content-length", "0"))
        while len(answer.body) < length:  # the rest of the answer's body
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer.body += chunk
    return answer, sent


# ------------------------------------------------------------------------- the servers


@dataclass
class Servers:
    url: str  # KEEPFLOW_API_TOKEN set: every request needs it
    loop_url: str  # loopback without a token: the Host check
    home: Path
    log: Path
    api: httpx.Client  # the access token as a bearer
    browser: httpx.Client  # the session cookie /login sets
    inbound: dict[str, str] = field(default_factory=dict)  # each workflow's inbound token

    def anon(self, url: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=url or self.url, timeout=30)

    def publish(self, workflow: str, body: Any = None, *, token: str | None = None,
                raw_body: bytes | None = None, topic: str = "order",
                content_type: str = "application/json") -> httpx.Response:
        given = self.inbound[workflow] if token is None else token
        headers = {"Content-Type": content_type}
        if given:
            headers["Authorization"] = f"Bearer {given}"
        content = raw_body if raw_body is not None else json.dumps(body).encode()
        with self.anon() as client:
            return client.post(f"/api/workflows/{workflow}/topics/{topic}/events",
                               content=content, headers=headers)

    def csrf(self, client: httpx.Client | None = None, path: str = "/") -> str:
        page = (client or self.browser).get(path)
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert m, ("the page carries no CSRF field", page.status_code, page.text[:300])
        return m.group(1)

    def status(self, workflow: str) -> str:
        return str(ok(self.api.get(f"/api/workflows/{workflow}"))["status"])

    def stored(self) -> int:
        """How many events the two workflows hold, every topic."""
        return sum(len(ok(self.api.get(f"/api/workflows/{w}/events", params={"limit": 1000})))
                   for w in ("alpha", "beta"))


@pytest.fixture(scope="module")
def kf_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("web-attacks")
    env = _env(KEEPFLOW_HOME=str(tmp / "home"), KEEPFLOW_API_TOKEN=TOKEN)
    loop_env = _env(KEEPFLOW_HOME=str(tmp / "loop"))
    for e in (env, loop_env):
        assert kf(e, "init").returncode == 0
    for name, script, homes in (("alpha", ALPHA, (env,)), ("beta", BETA, (env, loop_env))):
        (tmp / f"{name}.js").write_text(script, encoding="utf-8")
        for e in homes:
            deployed = kf(e, "deploy", str(tmp / f"{name}.js"))
            assert deployed.returncode == 0, deployed.stderr
    server = Server(env, tmp / "serve.log")
    try:
        loop_server = Server(loop_env, tmp / "loop.log")
    except BaseException:
        server.stop()
        raise
    try:
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as api, \
                httpx.Client(base_url=server.url, timeout=30,
                             cookies={SESSION_COOKIE: Guard(TOKEN).session()}) as browser:
            servers = Servers(server.url, loop_server.url, tmp / "home", tmp / "serve.log",
                              api, browser)
            for w in ("alpha", "beta"):
                servers.inbound[w] = ok(api.post(f"/api/workflows/{w}/inbound-token",
                                                 headers=CSRF))["token"]
            yield servers
    finally:
        loop_server.stop()
        server.stop()


# ------------------------------------------------------------------------- the access token


@pytest.mark.parametrize("authorization", [
    None, b"", b"Bearer", b"Bearer ", b"Bearer  ", b"Token " + TOKEN.encode(),
    b"Basic " + TOKEN.encode(), b"Bearer " + TOKEN[:-1].encode(),  # one character short
    b"Bearer " + TOKEN.encode() + b"0",  # one longer
    b"Bearer " + TOKEN[:-1].encode() + b"X",  # same length, last character wrong
    b"Bearer " + b"k" * 2000,  # far longer
    b"Bearer " + TOKEN.encode()[:10] + b"\xe9\xff" + TOKEN.encode()[12:],  # not ASCII
    b"Bearer " + Guard(TOKEN).session().encode(),  # the session cookie's value as a bearer
])
def test_the_api_and_metrics_refuse_a_missing_or_wrong_access_token(
        kf_web: Servers, authorization: bytes | None) -> None:
    headers: Sequence[tuple[str, str | bytes]] = (
        [] if authorization is None else [("Authorization", authorization)])
    answers = [request(kf_web.url, "GET", path, headers)
               for path in ("/api/health", "/api/workflows", "/api/openapi.json", "/metrics")]
    for res in answers:
        assert res.status == 401, (authorization, res.status, res.text[:200])
        assert json.loads(res.body)["error"]["code"] == "unauthorized"
        assert TOKEN not in res.text
    # Every wrong token gets the very same answer as none: nothing tells how much matched.
    assert answers[0].body == request(kf_web.url, "GET", "/api/health", []).body
    page = request(kf_web.url, "GET", "/inbox", headers)
    assert page.status == 303
    assert page.headers["location"] == "/login?next=/inbox"


def test_the_access_token_works_only_in_the_authorization_header(kf_web: Servers) -> None:
    assert kf_web.api.get("/api/health").status_code == 200  # the control: a bearer works
    with kf_web.anon() as client:
        for params in ({"token": TOKEN}, {"access_token": TOKEN},
                       {"authorization": f"Bearer {TOKEN}"}):
            assert client.get("/api/health", params=params).status_code == 401, params
            assert client.get("/metrics", params=params).status_code == 401, params
        for cookie in (f"{SESSION_COOKIE}={TOKEN}", f"token={TOKEN}",
                       f"Authorization=Bearer {TOKEN}"):
            res = client.get("/api/health", headers={"Cookie": cookie})
            assert res.status_code == 401, cookie
        # An inbound token is no access token either.
        inbound = {"Authorization": f"Bearer {kf_web.inbound['alpha']}"}
        assert client.get("/api/workflows", headers=inbound).status_code == 401
        assert client.get("/metrics", headers=inbound).status_code == 401
        assert client.post("/api/workflows/alpha/pause",
                           headers=inbound | CSRF).status_code == 401
    assert kf_web.status("alpha") == "active"


# ------------------------------------------------------------------------- the session cookie


def _flip(value: str) -> str:
    return value[:-1] + ("0" if value[-1] != "0" else "1")


@pytest.mark.parametrize(("cookie", "why"), [
    (_flip(Guard(TOKEN).session()).encode(), "tampered"),
    (Guard(TOKEN).session()[:-2].encode(), "truncated"),
    (Guard(TOKEN).session().encode() + b"00", "extended"),
    (OTHER.session().encode(), "signed by another server's secret"),
    (Guard(TOKEN).csrf().encode(), "the CSRF value instead"),
    (b"", "empty"),
    (b"\xe9" * 64, "not ASCII"),
    (b'"\\351\\351"', "quoted octal escapes that decode to non-ASCII"),
])
def test_a_forged_or_foreign_session_cookie_is_refused(kf_web: Servers, cookie: bytes,
                                                       why: str) -> None:
    jar = b"keepflow_session=" + cookie
    res = request(kf_web.url, "GET", "/api/health", [("Cookie", jar)])
    assert res.status == 401, (why, res.status, res.text[:200])
    page = request(kf_web.url, "GET", "/", [("Cookie", jar)])
    assert page.status == 303, (why, page.status)
    assert page.headers["location"].startswith("/login")
    posted = request(kf_web.url, "POST", "/ui/workflows/alpha/pause",
                     [("Cookie", jar), ("Content-Type", "application/x-www-form-urlencoded")],
                     f"csrf={Guard(TOKEN).csrf()}".encode())
    assert posted.status == 401, (why, posted.status)
    assert kf_web.status("alpha") == "active"


def test_the_right_session_cookie_is_accepted(kf_web: Servers) -> None:
    """The control of the test above: the HMAC under this server's own key."""
    jar = b"keepflow_session=" + Guard(TOKEN).session().encode()
    assert request(kf_web.url, "GET", "/api/health", [("Cookie", jar)]).status == 200
    assert request(kf_web.url, "GET", "/", [("Cookie", jar)]).status == 200


# ------------------------------------------------------------------------- signing in

#: ``next`` values that would send the browser to another site (or run script) after login.
OFFSITE = ["//evil.example/", "///evil.example", "/\\evil.example", "\\\\evil.example",
           "/\\/evil.example", "https://evil.example/", "http:evil.example",
           "javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)",
           "data:text/html,<script>alert(1)</script>", "%2F%2Fevil.example",
           "/\t/evil.example", "/\n/evil.example", "/\r\nSet-Cookie: pwned=1",
           "\r\nLocation: https://evil.example/", "evil.example", "", "/\x0b/evil.example"]


@pytest.mark.parametrize("target", OFFSITE)
def test_login_never_redirects_off_this_site(kf_web: Servers, target: str) -> None:
    with kf_web.anon() as client:
        res = client.post("/login", data={"token": TOKEN, "next": target})
        assert res.status_code == 303, res.text[:200]
        assert res.headers["location"] == "/", target
        assert "pwned" not in res.headers.get("set-cookie", "")
        assert "evil" not in str(res.headers)
        page = client.get("/login", params={"next": target})
        assert page.status_code == 200
        assert 'name="next" value="/"' in page.text, target


def test_login_keeps_a_path_of_this_site_and_sets_a_safe_cookie(kf_web: Servers) -> None:
    with kf_web.anon() as client:
        res = client.post("/login", data={"token": TOKEN,
                                          "next": "/workflows/alpha?status=pending"})
        assert res.status_code == 303
        assert res.headers["location"] == "/workflows/alpha?status=pending"
        cookie = res.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}={Guard(TOKEN).session()};")
        assert TOKEN not in cookie  # an HMAC of the token, never the token
        assert "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        assert "Path=/" in cookie
        # An encoded "//" stays a path of this site: a browser never decodes it into a host.
        encoded = client.post("/login", data={"token": TOKEN, "next": "/%2F%2Fevil.example"})
        assert urlsplit(encoded.headers["location"]).netloc == ""
        assert not encoded.headers["location"].startswith("//")


@pytest.mark.parametrize("given", ["wrong", "", " ", TOKEN[:-1], TOKEN + "x", "é" * 40,
                                   "\ud800", OTHER.session(), Guard(TOKEN).session()])
def test_login_with_a_wrong_token_sets_nothing(kf_web: Servers, given: str) -> None:
    body = "token=" + quote(given.encode("utf-8", "surrogatepass"), safe="") + "&next=%2F"
    with kf_web.anon() as client:
        res = client.post("/login", content=body.encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert res.status_code == 401, (given, res.status_code, res.text[:200])
        assert "set-cookie" not in res.headers
        assert "not this server&#39;s access token" in res.text
        assert client.get("/api/health").status_code == 401


def test_the_login_page_escapes_next_and_an_unauthenticated_path(kf_web: Servers) -> None:
    with kf_web.anon() as client:
        page = client.get("/login", params={"next": "/" + X})
        assert page.status_code == 200
        assert all(r not in page.text for r in RAW)
        assert 'name="next" value="/&lt;script&gt;' in page.text
    # A path like //evil.example/x is carried to the login page, which refuses it as next.
    res = request(kf_web.url, "GET", "//evil.example/x", [])
    assert res.status == 303
    assert res.headers["location"] == "/login?next=//evil.example/x"
    login = request(kf_web.url, "GET", res.headers["location"], [])
    assert 'name="next" value="/"' in login.text


def test_the_login_form_body_is_bounded(kf_web: Servers) -> None:
    """``/login`` is open to anyone: its body is bounded before it is read, or anyone could
    make the server hold hundreds of megabytes (1 000 form fields of up to 1 MB each)."""
    name, port = _address(kf_web.url)
    many = b"&".join(b"f%d=" % i + b"a" * 4000 for i in range(300)) + b"&token=x"
    with kf_web.anon() as client:
        res = client.post("/login", content=many,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert res.status_code == 413, (res.status_code, res.text[:200])
    huge = 200 * 1024 * 1024
    head = (f"POST /login HTTP/1.1\r\nHost: {name}:{port}\r\nContent-Type: "
            f"application/x-www-form-urlencoded\r\nContent-Length: {huge}\r\n\r\n").encode()
    answer, sent = refused_before_read(kf_web.url, head,
                                       iter([b"token=" + b"a" * 65536] * 3200))
    assert answer.status == 413
    assert sent < 16 * 1024 * 1024, f"the server read {sent:,} bytes before refusing"
    chunked = (f"POST /login HTTP/1.1\r\nHost: {name}:{port}\r\nContent-Type: "
               "multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"%x\r\n" % 65536 + b"z" * 65536 + b"\r\n"
    answer, sent = refused_before_read(kf_web.url, chunked, iter([piece] * 3200))
    assert answer.status == 413
    assert sent < 16 * 1024 * 1024
    # A person's login still works, and the server still answers.
    with kf_web.anon() as client:
        assert client.post("/login", data={"token": TOKEN}).status_code == 303


# ------------------------------------------------------------------------- CSRF


#: The CSRF value of the token server (an HMAC under its key: the same on every page).
REAL_CSRF = Guard(TOKEN).csrf()


@pytest.mark.parametrize(("csrf", "why"), [
    (None, "missing"), ("", "empty"), ("0" * 64, "zeros"), ("x", "short"),
    ("TRUE", "a word"), ("é" * 64, "not ASCII"), (REAL_CSRF[:-1] + "é", "one non-ASCII"),
    ("\ud800", "a lone surrogate"), (_flip(REAL_CSRF), "one character changed"),
    (REAL_CSRF[:-1], "truncated"), (REAL_CSRF + "0", "extended"),
    (REAL_CSRF.upper(), "upper case"), (" " + REAL_CSRF, "a leading space"),
    (OTHER.csrf(), "another server's"), (Guard(TOKEN).session(), "the session value"),
])
def test_page_forms_need_this_servers_csrf_field(kf_web: Servers, csrf: str | None,
                                                 why: str) -> None:
    fields = {"back": "/"} if csrf is None else {"csrf": csrf, "back": "/"}
    body = "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
                    for k, v in fields.items())
    for path in ("/ui/workflows/alpha/pause", "/ui/workflows/alpha/disable",
                 "/ui/events/skip"):
        res = kf_web.browser.post(path, content=body.encode() + b"&workflow=beta&topic=order"
                                  b"&message_id=fresh",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert res.status_code == 403, (why, path, res.status_code, res.text[:200])
        assert "out of date" in res.text
    assert kf_web.status("alpha") == "active"


@pytest.mark.parametrize("origin", [
    "https://evil.example", "null", "http://127.0.0.1", "http://127.0.0.1:1",
    "http://localhost:{port}", "http://{host}:{port}.evil.example", "file://",
    "chrome-extension://abc",
])
def test_a_post_from_another_origin_is_refused_even_with_the_csrf_field(
        kf_web: Servers, origin: str) -> None:
    name, port = _address(kf_web.url)
    given = origin.format(host=name, port=port)
    csrf = kf_web.csrf()
    form = kf_web.browser.post("/ui/workflows/alpha/pause", data={"csrf": csrf, "back": "/"},
                               headers={"Origin": given})
    assert form.status_code == 403, (given, form.status_code)
    api = kf_web.api.post("/api/workflows/alpha/pause", headers=CSRF | {"Origin": given})
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "csrf"
    assert kf_web.status("alpha") == "active"


def test_a_form_post_with_our_csrf_field_and_no_origin_works(kf_web: Servers) -> None:
    """The control of the CSRF tests: our own page's form, as a browser without ``Origin``
    (or with a foreign ``Referer``, which proves nothing) sends it. Without the field, the
    same request with the same cookie is refused."""
    assert kf_web.csrf() == REAL_CSRF
    bare = kf_web.browser.post("/ui/workflows/alpha/pause", data={"back": "/"},
                               headers={"Referer": f"{kf_web.url}/"})
    assert bare.status_code == 403
    done = kf_web.browser.post("/ui/workflows/alpha/pause",
                               data={"csrf": kf_web.csrf(), "back": "/"},
                               headers={"Referer": "https://evil.example/"})
    assert done.status_code == 303
    assert done.headers["location"] == "/"
    assert kf_web.status("alpha") == "paused"
    resumed = kf_web.browser.post("/ui/workflows/alpha/resume",
                                  data={"csrf": kf_web.csrf()},
                                  headers={"Origin": kf_web.url})
    assert resumed.status_code == 303
    assert kf_web.status("alpha") == "active"


@pytest.mark.parametrize(("content_type", "body", "header"), [
    ("text/plain", b'{"reason": "csrf"}', None),
    ("application/x-www-form-urlencoded", b"reason=csrf", None),
    ("multipart/form-data; boundary=b", b"--b--\r\n", None),
    ("application/json", b"{}", "0"),
    ("text/plain", b"{}", "true"),
    ("text/plain", b"{}", ""),
])
def test_the_json_api_with_cookie_auth_needs_the_header(
        kf_web: Servers, content_type: str, body: bytes, header: str | None) -> None:
    """What a cross-site ``<form>`` or ``fetch(no-cors)`` can send with the victim's cookie:
    any simple content type, never a custom header."""
    headers = {"Content-Type": content_type}
    if header is not None:
        headers["X-Keepflow-Request"] = header
    for path in ("/api/workflows/alpha/pause", "/api/workflows/alpha/inbound-token",
                 "/api/workflows/alpha/trigger/take", "/api/refresh"):
        res = kf_web.browser.post(path, content=body, headers=headers)
        assert res.status_code == 403, (path, res.status_code)
        assert res.json()["error"]["code"] == "csrf"
    assert kf_web.status("alpha") == "active"
    # The control: the header, sent only by keepflow's own clients, makes it work.
    assert kf_web.browser.post("/api/workflows/alpha/pause", headers=CSRF).status_code == 200
    assert kf_web.browser.post("/api/workflows/alpha/resume", headers=CSRF).status_code == 200


def test_get_and_head_never_change_anything(kf_web: Servers) -> None:
    for method in ("GET", "HEAD"):
        for path in ("/ui/workflows/alpha/pause", "/ui/workflows/alpha/disable",
                     "/api/workflows/alpha/pause", "/api/workflows/alpha/disable",
                     "/api/workflows/alpha/inbound-token/revoke",
                     "/ui/workflows/alpha/inbound-token"):
            res = kf_web.browser.request(method, path)
            assert res.status_code == 405, (method, path, res.status_code)
    assert kf_web.status("alpha") == "active"
    assert kf_web.publish("beta", {"title": "x"}, token=kf_web.inbound["beta"]
                          ).status_code in (200, 201)  # the token still works


def test_loopback_without_a_token_still_needs_the_csrf_proofs(kf_web: Servers) -> None:
    """With no token there is no cookie to steal: a page on any site could post to
    127.0.0.1 — the CSRF field, the header and the Origin check are all that refuse it."""
    with kf_web.anon(kf_web.loop_url) as client:
        def status() -> str:
            return str(ok(client.get("/api/workflows/beta"))["status"])

        csrf = kf_web.csrf(client)
        for data, headers in (({"back": "/"}, {}), ({"csrf": OTHER.csrf()}, {}),
                              ({"csrf": REAL_CSRF}, {}),  # the token server's
                              ({"csrf": csrf}, {"Origin": "https://evil.example"}),
                              ({"csrf": csrf}, {"Origin": "null"})):
            res = client.post("/ui/workflows/beta/pause", data=data, headers=headers)
            assert res.status_code == 403, (data, headers, res.status_code)
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            res = client.post("/api/workflows/beta/pause", content=b"{}",
                              headers={"Content-Type": content_type})
            assert res.status_code == 403
        assert status() == "active"
        # The controls: our page's field, and the API header, are accepted.
        assert client.post("/ui/workflows/beta/pause", data={"csrf": csrf}).status_code == 303
        assert status() == "paused"
        assert client.post("/api/workflows/beta/resume", headers=CSRF).status_code == 200
        assert status() == "active"


# ------------------------------------------------------------------------- Host / DNS rebinding

REFUSED_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                 "localhost.evil.example", "localhost.:{port}", "127.0.0.1:{port}@evil.example",
                 "evil.example@127.0.0.1:{port}", "[::1]evil.example", "[::1].evil.example:{port}",
                 "[::1]:{port}:{port}", "localhost:", "localhost:http", "127.0.0.1:{port} x",
                 "127.0.0.2:{port}", "0.0.0.0:{port}", "2130706433:{port}", "127.1:{port}",
                 "[::ffff:127.0.0.1]:{port}", "", "localhost:８０"]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_loopback_refuses_every_other_host_name(kf_web: Servers, host: str) -> None:
    _, port = _address(kf_web.loop_url)
    given = host.format(port=port)
    for method, path, headers in (("GET", "/api/health", []), ("GET", "/", []),
                                  ("GET", "/metrics", []),
                                  ("POST", "/api/refresh", [("X-Keepflow-Request", "1")])):
        res = request(kf_web.loop_url, method, path, headers,
                      host=given.encode("utf-8"))
        assert res.status in (400, 403), (given, path, res.status)
        if res.status == 403:
            assert json.loads(res.body)["error"]["code"] == "host"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}", "127.0.0.1", "localhost", "[::1]"])
def test_loopback_answers_its_own_names(kf_web: Servers, host: str) -> None:
    _, port = _address(kf_web.loop_url)
    res = request(kf_web.loop_url, "GET", "/api/health", [], host=host.format(port=port))
    assert res.status == 200, (host, res.status, res.text[:200])
    assert request(kf_web.loop_url, "GET", "/metrics", [],
                   host=host.format(port=port)).status == 200


def test_host_tricks_in_the_request_line_and_forwarding_headers(kf_web: Servers) -> None:
    name, port = _address(kf_web.loop_url)
    own = f"{name}:{port}"
    # An absolute URI naming loopback does not make a foreign Host header loopback...
    res = request(kf_web.loop_url, "GET", f"http://{own}/api/health", [], host="evil.example")
    assert res.status == 403
    # ... and one naming another site, with our Host, reaches no route of ours.
    res = request(kf_web.loop_url, "GET", "http://evil.example/api/health", [])
    assert res.status == 404
    assert b'"status":"ok"' not in res.body
    for header in ("X-Forwarded-Host", "X-Host", "X-Original-Host", "Forwarded"):
        value = f"host={own}" if header == "Forwarded" else own
        res = request(kf_web.loop_url, "GET", "/api/health", [(header, value)],
                      host="evil.example")
        assert res.status == 403, header
    # HTTP/1.0 without a Host header at all.
    res = raw(kf_web.loop_url, b"GET /api/health HTTP/1.0\r\n\r\n")
    assert res.status in (400, 403)
    # Two Host headers, the first one ours.
    two = raw(kf_web.loop_url, f"GET /api/health HTTP/1.1\r\nHost: {own}\r\n"
                               "Host: evil.example\r\nConnection: close\r\n\r\n".encode())
    assert two.status in (400, 403)
    # With the token, an absolute URI is no way around it either.
    name, port = _address(kf_web.url)
    res = request(kf_web.url, "GET", f"http://{name}:{port}/api/health", [])
    assert res.status in (303, 401, 404)
    assert b'"status":"ok"' not in res.body


# ------------------------------------------------------------------------- inbound events


def test_an_inbound_event_needs_its_own_workflows_current_token(kf_web: Servers) -> None:
    alpha, beta = kf_web.inbound["alpha"], kf_web.inbound["beta"]
    before = kf_web.stored()
    for workflow, token in (("alpha", beta), ("beta", alpha), ("alpha", TOKEN),
                            ("alpha", alpha[:-1]), ("alpha", alpha + "x"),
                            ("alpha", alpha.upper()), ("alpha", ""),
                            ("alpha", Guard(TOKEN).session())):
        res = kf_web.publish(workflow, {"title": "forged"}, token=token)
        assert res.status_code == 401, (workflow, token[:8], res.status_code)
        assert alpha not in res.text
        assert beta not in res.text
    for value in (b"Bearer " + alpha.encode()[:5] + b"\xe9" + alpha.encode()[6:],
                  b"Basic " + alpha.encode(), alpha.encode()):
        forged = request(kf_web.url, "POST", "/api/workflows/alpha/topics/order/events",
                         [("Authorization", value), ("Content-Type", "application/json")],
                         b'{"title": "forged"}')
        assert forged.status == 401, value
    # A workflow that does not exist, and one whose token was revoked: the same 401 as a
    # wrong token, so a caller without the token cannot tell which workflows exist.
    assert kf_web.publish("nope", {"title": "x"}, token=alpha).status_code == 401
    made = ok(kf_web.api.post("/api/workflows/beta/inbound-token", headers=CSRF))["token"]
    assert kf_web.publish("beta", {"title": "x"}, token=beta).status_code == 401  # replaced
    ok(kf_web.api.post("/api/workflows/beta/inbound-token/revoke", headers=CSRF))
    revoked = kf_web.publish("beta", {"title": "x"}, token=made)
    assert revoked.status_code == 401
    assert "keepflow token beta" in revoked.json()["error"]["message"]
    assert kf_web.stored() == before  # nothing got in
    kf_web.inbound["beta"] = ok(kf_web.api.post("/api/workflows/beta/inbound-token",
                                                headers=CSRF))["token"]
    res = kf_web.publish("beta", {"title": "Fresh", "messageId": "fresh"})
    assert res.status_code in (200, 201)
    assert made not in json.dumps(ok(kf_web.api.get("/api/audit")))
    assert kf_web.inbound["beta"] not in json.dumps(ok(kf_web.api.get("/api/audit")))


def test_an_inbound_body_over_the_limit_is_refused_before_it_is_read(kf_web: Servers) -> None:
    name, port = _address(kf_web.url)
    declared = 300 * 1024 * 1024
    head = (f"POST /api/workflows/beta/topics/order/events HTTP/1.1\r\nHost: {name}:{port}"
            f"\r\nAuthorization: Bearer {kf_web.inbound['beta']}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {declared}\r\n\r\n").encode()
    first = b'{"title": "big", "payload": "'
    answer, sent = refused_before_read(kf_web.url, head,
                                       iter([first] + [b"a" * 65536] * 4800))
    assert answer.status == 413, answer.text[:200]
    assert json.loads(answer.body)["error"]["field"] == "payload"
    assert sent < 16 * 1024 * 1024, f"the server read {sent:,} bytes before refusing"
    # Chunked, without any Content-Length.
    chunked = head.replace(f"Content-Length: {declared}".encode(), b"Transfer-Encoding: chunked")
    piece = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
    answer, sent = refused_before_read(
        kf_web.url, chunked, iter([b"%x\r\n%s\r\n" % (len(first), first)] + [piece] * 4800))
    assert answer.status == 413
    assert sent < 16 * 1024 * 1024
    # Without the right token, nothing of the body is read at all.
    wrong = head.replace(kf_web.inbound["beta"].encode(), b"kfi_wrong")
    answer, sent = refused_before_read(kf_web.url, wrong, iter([]))
    assert answer.status == 401
    assert sent == 0
    assert kf_web.api.get("/api/health").status_code == 200


@pytest.mark.parametrize("depth", [65, 100, 500, 900, 950])
def test_a_payload_nested_deeper_than_a_script_may_publish_is_refused(kf_web: Servers,
                                                                      depth: int) -> None:
    """As deep as the sandbox lets a producer publish (64 levels), and no deeper: a deeper
    payload would exhaust the host's own encoders (a 500 from the store, an event no API
    answer could show)."""
    before = kf_web.stored()
    body = b'{"title": "deep", "messageId": "deep-%d", "payload": ' % depth \
        + b"[" * depth + b"]" * depth + b"}"
    res = kf_web.publish("beta", raw_body=body)
    assert res.status_code == 422, (depth, res.status_code, res.text[:300])
    assert res.json()["error"]["field"] == "payload"
    assert kf_web.stored() == before


def test_a_payload_as_deep_as_a_script_may_publish_is_kept_and_shown(kf_web: Servers) -> None:
    depth = 64
    nested = b'{"k": ' * (depth - 1) + b"[]" + b"}" * (depth - 1)
    res = kf_web.publish("beta", raw_body=b'{"title": "deep", "messageId": "deep-ok", '
                                          b'"payload": ' + nested + b"}")
    assert res.status_code in (200, 201), res.text[:300]
    detail = ok(kf_web.api.get("/api/workflows/beta/topics/order/events/deep-ok"))
    assert json.dumps(detail["payload"]).count("[") == 1
    assert kf_web.browser.get("/workflows/beta/topics/order/events/deep-ok").status_code == 200
    for body in (b'{"title": "x", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                 b"[" * 100_000):
        refused = kf_web.publish("beta", raw_body=body)
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] in ("$", "payload")


@pytest.mark.parametrize(("body", "field"), [
    (b'{"title": "a\\ud800b"}', "$.title"),
    (b'{"title": "ok", "messageId": "\\udfff"}', "$.messageId"),
    (b'{"title": "ok", "payload": {"note": "x\\ud83d"}}', "$.payload"),
    (b'{"title": "ok", "payload": {"\\ud800": 1}}', "$.payload"),
    (b'{"title": "ok", "payload": ["\\udc00\\ud800"]}', "$.payload"),
    (b'{"title": "nul\\u0000"}', "$.title"),
    (b'{"title": "ok", "messageId": "a\\u0000b"}', "$.messageId"),
    (b'{"title": "ok", "payload": {"a\\u0000": "b"}}', "$.payload"),
    (b'{"title": "ok", "\\ud800": 1}', "$"),
])
def test_text_the_store_cannot_keep_is_refused_naming_the_field(kf_web: Servers, body: bytes,
                                                                field: str) -> None:
    before = kf_web.stored()
    res = kf_web.publish("beta", raw_body=body)
    assert res.status_code == 422, (body, res.status_code, res.text[:300])
    error = res.json()["error"]
    assert error["field"].startswith(field), error
    assert "surrogate" in error["message"] or "NUL" in error["message"] \
        or "unknown event field" in error["message"]
    assert kf_web.stored() == before


def test_control_characters_and_raw_surrogate_bytes(kf_web: Servers) -> None:
    # UTF-8 bytes of a surrogate (CESU-8) and a lone NUL byte are not valid text.
    for body in (b'{"title": "\xed\xa0\x80"}', b'{"title": "a\x00b"}',
                 b'{"title": "\xc0\xaf"}'):
        res = kf_web.publish("beta", raw_body=body)
        assert res.status_code == 422, body
    # Other control characters are text: kept exactly, answered as escaped JSON, shown.
    title = "ctl \x01\x1b[31m\x7f\u2028\u202e end"
    res = kf_web.publish("beta", {"title": title, "messageId": "ctl-1"})
    assert res.status_code in (200, 201)
    detail = ok(kf_web.api.get("/api/workflows/beta/topics/order/events/ctl-1"))
    assert detail["title"] == title.strip()
    page = kf_web.browser.get("/workflows/beta/topics/order/events/ctl-1")
    assert page.status_code == 200
    assert "ctl " in page.text
    assert " end" in page.text


@pytest.mark.parametrize(("raw_body", "content_type", "field"), [
    (b"[]", "application/json", "$"), (b'"a string"', "application/json", "$"),
    (b"1", "application/json", "$"), (b"null", "application/json", "$"),
    (b"true", "application/json", "$"), (b"title=x", "application/x-www-form-urlencoded", "$"),
    (b"--b\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nx\r\n--b--\r\n",
     "multipart/form-data; boundary=b", "$"),
    (b'{"title": "x", "payload": Infinity}', "application/json", "$"),
    (b'{"title": "x", "messageId": "' + b"m" * 10_000 + b'"}', "application/json",
     "messageId"),
    (b'{"title": "' + b"t" * 10_000 + b'"}', "application/json", "title"),
    (b'{"title": "x", "messageId": true}', "application/json", "messageId"),
    (b'{"title": "x", "__proto__": {"title": "y"}}', "application/json", "__proto__"),
    (b'{"title": "x", "constructor": 1}', "application/json", "constructor"),
    (b"\xef\xbb\xbf{\"title\": \"bom\"}", "application/json", "$"),
])
def test_inbound_bodies_of_the_wrong_shape_are_refused(kf_web: Servers, raw_body: bytes,
                                                       content_type: str, field: str) -> None:
    before = kf_web.stored()
    res = kf_web.publish("beta", raw_body=raw_body, content_type=content_type)
    assert res.status_code == 422, (raw_body[:40], res.status_code, res.text[:300])
    assert res.json()["error"]["field"] == field
    assert kf_web.stored() == before


def test_duplicate_keys_store_what_the_answer_says(kf_web: Servers) -> None:
    res = kf_web.publish("beta", raw_body=b'{"messageId": "dup-a", "title": "first", '
                                          b'"messageId": "dup-b", "title": "second", '
                                          b'"payload": {"k": 1, "k": 2}}')
    assert res.status_code == 201, res.text
    answer = res.json()
    assert (answer["messageId"], answer["title"]) == ("dup-b", "second")  # the last one
    stored = ok(kf_web.api.get("/api/workflows/beta/topics/order/events/dup-b"))
    assert (stored["title"], stored["payload"]) == ("second", {"k": 2})
    assert kf_web.api.get("/api/workflows/beta/topics/order/events/dup-a").status_code == 404


@pytest.mark.parametrize("path", [
    "/api/workflows/alpha/topics/..%2F..%2Fbeta/events",
    "/api/workflows/beta%2F..%2Falpha/topics/order/events",
    "/api/workflows/alpha%2Ftopics%2Forder/topics/order/events",
    "/api/workflows/alpha/topics/order%2Fevents/events",
    "/api/workflows/alpha/../beta/topics/order/events",
    "/api/workflows/alpha/topics/order/events/../events",
    "/api/workflows/alpha/topics/order/events/",
    "/api/workflows/./alpha/topics/order/events",
    "/api/workflows/%2e%2e/topics/order/events",
    "/api/workflows/alpha/topics/%2e%2e/events",
    "/api/workflows/alpha/topics/order%00/events",
    "/api/workflows/alpha/topics/ord%C3%A9r/events",
    "//api/workflows/alpha/topics/order/events",
    "/api/workflows/alpha/topics/report/events",  # the control: alpha's token may publish
])
def test_inbound_paths_cannot_be_bent_to_another_workflow_or_route(kf_web: Servers,
                                                                   path: str) -> None:
    before = kf_web.stored()
    for token in (kf_web.inbound["alpha"], kf_web.inbound["beta"]):
        res = request(kf_web.url, "POST", path,
                      [("Authorization", f"Bearer {token}"),
                       ("Content-Type", "application/json")],
                      json.dumps({"title": "bent", "messageId": f"bent-{path}"[:200]}).encode())
        if path.endswith("/report/events") and token == kf_web.inbound["alpha"]:
            assert res.status == 201  # the control: a declared topic of its own workflow
            continue
        assert res.status in (400, 401, 403, 404, 405, 422), (path, res.status, res.text[:200])
    grown = kf_web.stored() - before
    assert grown == (1 if path.endswith("/report/events") else 0), path


def test_prototype_keys_in_a_payload_are_data_in_the_sandbox(kf_web: Servers) -> None:
    payload = {"__proto__": {"polluted": "yes"},
               "constructor": {"prototype": {"polluted": "yes"}}, "toString": "x", "n": 1}
    res = kf_web.publish("alpha", {"messageId": "proto-1", "title": "proto",
                                   "payload": payload})
    assert res.status_code == 201, res.text
    stored = ok(kf_web.api.get("/api/workflows/alpha/topics/order/events/proto-1"))
    assert stored["payload"] == payload  # kept as given, as plain data
    def reported() -> Any:
        res = kf_web.api.get("/api/workflows/alpha/topics/report/events/report-proto-1")
        return res.json() if res.status_code == 200 else None

    report = until(reported, "the consumer to report on the event")["payload"]
    assert report["polluted"] is False
    assert report["protoIsObject"] is True
    assert report["ownKeys"] == ["__proto__", "constructor", "n", "toString"]
    assert kf_web.status("alpha") == "active"


# ------------------------------------------------------------------------- what pages show

#: The headers every page sends (docs/security.md "What pages show is text").
PAGE_HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff",
                "referrer-policy": "same-origin", "cache-control": "no-store"}


def assert_safe_page(res: httpx.Response, where: str) -> None:
    html = res.text
    for marker in RAW:
        assert marker not in html, (where, marker)
    for name, value in PAGE_HEADERS.items():
        assert res.headers.get(name) == value, (where, name, res.headers.get(name))
    csp = res.headers["content-security-policy"]
    for part in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'",
                 "base-uri 'none'", "form-action 'self'"):
        assert part in csp, (where, part)
    assert "unsafe" not in csp
    for attr, url in re.findall(r'\b(href|action|src|formaction)="([^"]*)"', html):
        assert url == "data:," or url[:1] in ("/", "?", "#"), (where, attr, url)
        assert not url.startswith("//"), (where, attr, url)
    for tag in re.findall(r"<[a-zA-Z][^>]*>", html):  # no event-handler attribute
        assert not re.search(r"\son[a-z]+\s*=", re.sub(r'"[^"]*"', '""', tag)), (where, tag)
    assert "<script" not in html.replace('<script src="/static/keepflow.js" defer></script>',
                                         ""), where


def test_hostile_text_renders_as_text_on_every_page(kf_web: Servers) -> None:
    mid = "javascript:alert(1)//" + X
    assert kf_web.publish("beta", {"messageId": mid, "title": X,
                                   "payload": {"note": X, X: [X]}}).status_code in (200, 201)
    ok(kf_web.api.post("/api/workflows/beta/pause", params={"reason": X}, headers=CSRF))
    assert kf_web.publish("alpha", {"messageId": "fail-" + X[:40], "title": X,
                                    "payload": {"fail": X}}).status_code == 201
    failed = until(lambda: next((r for r in ok(kf_web.api.get("/api/workflows/alpha/runs"))
                                 if r["status"] == "failed"), None), "the hostile run to fail")
    try:
        quoted = quote(mid, safe="")
        pages = {
            "/": True, "/workflows/beta": True, "/workflows/alpha": False,
            "/workflows/beta/topics/order": True, f"/workflows/beta/topics/order/events/{quoted}":
            True, f"/runs/{failed['id']}": True, "/inbox": True, "/audit": True,
            "/notifications?status=all": False, "/workflows/alpha/runs": False,
            "/workflows/beta/topics/order?" + "title=" + quote(X, safe=""): True,
            "/audit?workflow=" + quote(X, safe=""): True,  # no such workflow: a 404 page
            "/confirm?" + "&".join([
                "action=skip_event", "target=%2Fui%2Fevents%2Fskip",
                "back=javascript%3Aalert(1)", "f.workflow=beta", "f.topic=order",
                "f.message_id=" + quoted, "f.csrf=" + quote(X, safe=""),
                "about=" + quote(X, safe="")]): True,
        }
        for path, shows in pages.items():
            res = kf_web.browser.get(path)
            assert res.status_code == (404 if path.startswith("/audit?") else 200), \
                (path, res.status_code, res.text[:300])
            assert_safe_page(res, path)
            if shows:
                assert "&lt;script&gt;" in res.text or "%3Cscript%3E" in res.text, path
        confirm = kf_web.browser.get(list(pages)[-1]).text
        assert 'name="back" value="/"' in confirm
        assert 'name="csrf" value="&lt;' not in confirm
        # The error of the failed run, escaped, where a person reads it.
        assert ESCAPED in kf_web.browser.get(f"/runs/{failed['id']}").text
        # A one-time message quoting hostile input, and a 404 naming a hostile path.
        skip = kf_web.browser.post("/ui/events/skip", data={
            "csrf": kf_web.csrf(), "workflow": "beta", "topic": "order", "message_id": X,
            "back": "/"})
        assert skip.status_code == 303
        flashed = kf_web.browser.get("/")
        assert_safe_page(flashed, "flash")
        assert "Not done" in flashed.text
        assert ESCAPED in flashed.text
        for path in ("/workflows/" + quote(X, safe=""), "/nothing/" + quote(X, safe=""),
                     "/runs/" + quote(X, safe="")):
            res = kf_web.browser.get(path)
            assert res.status_code == 404
            assert_safe_page(res, path)
    finally:
        ok(kf_web.api.post(f"/api/runs/{failed['id']}/resolve", params={"answer": "skip"},
                           headers=CSRF))
        ok(kf_web.api.post("/api/workflows/beta/resume", headers=CSRF))
    until(lambda: kf_web.status("alpha") == "active", "alpha to run again")


@pytest.mark.parametrize("back", [*OFFSITE[:-3], "/%0d%0a", "/\\", "/.\\evil"])
def test_the_confirmation_page_never_links_off_this_site(kf_web: Servers, back: str) -> None:
    res = kf_web.browser.get("/confirm", params={
        "action": "disable", "target": "/ui/workflows/beta/disable", "back": back})
    if res.status_code == 400:  # a control character the request refuses outright
        return
    assert res.status_code == 200, (back, res.status_code)
    assert_safe_page(res, back)
    values = re.findall(r'name="back" value="([^"]*)"', res.text)
    cancels = re.findall(r'class="button" href="([^"]*)"', res.text)
    assert values
    assert cancels
    for url in (*values, *cancels):
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        assert "\\" not in url, url
        assert urlsplit(url).scheme == "", url
        assert urlsplit(url).netloc == "", url


@pytest.mark.parametrize("target", [
    "https://evil.example/ui/workflows/beta/disable", "//evil.example/ui/workflows/beta/disable",
    "javascript:alert(1)//ui/workflows/beta/disable", "/ui/workflows/beta/../../x/disable",
    "/ui/workflows/beta%2F..%2F/disable", "/ui/workflows/beta/pause", "/ui/runs/nope/approve",
    "/ui/events/skip?x=1", "/api/workflows/beta/disable", " /ui/workflows/beta/disable",
])
def test_the_confirmation_page_posts_only_to_a_real_action(kf_web: Servers, target: str) -> None:
    res = kf_web.browser.get("/confirm", params={"action": "disable", "target": target})
    assert res.status_code == 404, (target, res.status_code)
    assert_safe_page(res, target)
    good = kf_web.browser.get("/confirm", params={"action": "disable",
                                                  "target": "/ui/workflows/beta/disable"})
    assert good.status_code == 200
    assert '<form method="post" action="/ui/workflows/beta/disable">' in good.text


def test_one_time_messages_cannot_be_planted(kf_web: Servers) -> None:
    session = Guard(TOKEN).session()

    def shown(flash: bytes) -> Answer:
        return request(kf_web.url, "GET", "/inbox",
                       [("Cookie", f"{SESSION_COOKIE}={session}; keepflow_flash=".encode()
                         + flash)])

    text = "Planted: click https://evil.example"
    with mock.patch("keepflow.web.security.time.time", return_value=time.time() - 3600):
        expired = Guard(TOKEN).seal(text)
    stamp, body, mac = Guard(TOKEN).seal(text).split(".")
    for flash in (OTHER.seal(text).encode(), expired.encode(),
                  f"{stamp}.{text.encode().hex()}.{'0' * 64}".encode(),
                  f"{stamp}.{body}.{_flip(mac)}".encode(),
                  f"{int(stamp) + 10**6}.{body}.{mac}".encode(),
                  f"{stamp}.{body}.".encode() + "é".encode() * 32,
                  b"1.\xe9\xe9.\xe9" + b"a" * 63, b"..", b"x" * 5000):
        res = shown(flash)
        assert res.status == 200, (flash[:60], res.status)
        assert "Planted" not in res.text, flash[:60]
    # The control: a message sealed under this server's key is shown, as text.
    res = shown(Guard(TOKEN).seal("Sealed <b>here</b>").encode())
    assert res.status == 200
    assert "Sealed &lt;b&gt;here&lt;/b&gt;" in res.text


def test_secrets_and_answers_are_never_cached(kf_web: Servers) -> None:
    made = kf_web.api.post("/api/workflows/beta/inbound-token", headers=CSRF)
    kf_web.inbound["beta"] = ok(made)["token"]
    for res in (made, kf_web.api.get("/api/workflows"), kf_web.api.get("/metrics"),
                kf_web.api.get("/api/nothing"), kf_web.browser.get("/login"),
                kf_web.browser.post("/login", data={"token": "wrong"})):
        assert res.headers.get("cache-control") == "no-store", res.request.url
        assert res.headers.get("x-content-type-options") == "nosniff", res.request.url
    with kf_web.anon() as client:
        assert client.get("/api/health").headers["cache-control"] == "no-store"  # a refusal
        static = client.get("/static/keepflow.css")
        assert static.status_code == 200
        assert static.headers["cache-control"] == "max-age=300"  # no secret in it
        assert client.get("/static/keepflow.js").status_code == 303  # behind the login


# ------------------------------------------------------------------------- /live


def _live_head(url: str, extra: str = "", target: str = "/live") -> bytes:
    name, port = _address(url)
    return (f"GET {target} HTTP/1.1\r\nHost: {name}:{port}\r\nAuthorization: Bearer {TOKEN}"
            f"\r\nAccept: text/event-stream\r\n{extra}\r\n").encode()


def test_live_needs_the_token_and_echoes_nothing_it_was_sent(kf_web: Servers) -> None:
    with kf_web.anon() as client:
        res = client.get("/live")
        assert res.status_code == 303
        assert res.headers["location"] == "/login?next=/live"
        forged = client.get("/live", headers={"Cookie": f"{SESSION_COOKIE}={OTHER.session()}"})
        assert forged.status_code == 303
        assert client.get("/live", headers={"Authorization": "Bearer x"}).status_code == 303
    evil = "x\r\nSet-Cookie: pwned=1\r\n\r\nevent: change\ndata: <script>alert(1)</script>"
    with kf_web.api.stream("GET", "/live", params={"since": evil},
                           headers={"Last-Event-ID": "pwned<script>"}) as live:
        assert live.status_code == 200
        assert live.headers["content-type"].startswith("text/event-stream")
        assert live.headers["cache-control"] == "no-store"
        assert "set-cookie" not in live.headers
        assert "pwned" not in str(live.headers)
        chunks = live.iter_text()
        assert next(chunks) == "retry: 2000\n\n"
        assert kf_web.publish("beta", {"title": "wake", "messageId": f"wake-{time.time()}"}
                              ).status_code == 201
        got = ""
        for chunk in chunks:
            got += chunk
            if "event: change" in got:
                break
        assert "pwned" not in got
        assert "<script>" not in got
        assert re.match(r"(: still here\n\n)*id: [^\n\r]+\nevent: change\ndata: \{\}\n\n", got), got


def _open_live(url: str) -> tuple[socket.socket, bytes]:
    """A /live stream and the start of its answer: the head and, for a 200, the first event
    (once it arrived, the stream counts against the cap)."""
    sock = socket.create_connection(_address(url), timeout=10)
    sock.sendall(_live_head(url))
    got = b""
    while not (got.startswith(b"HTTP/1.1 200") and b"retry: 2000" in got) \
            and b"retry: 30000" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return sock, got


def test_live_streams_are_capped(kf_web: Servers) -> None:
    time.sleep(0.6)  # streams of earlier tests notice their client left within 0.25 s
    socks: list[socket.socket] = []
    try:
        refused = None
        for _ in range(LIVE_STREAMS + 5):
            sock, got = _open_live(kf_web.url)
            socks.append(sock)
            if not got.startswith(b"HTTP/1.1 200"):
                refused = got
                break
        assert refused is not None, f"{len(socks)} streams open at once"
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        assert b"retry: 30000" in refused
        opened = len(socks) - 1
        assert LIVE_STREAMS - 2 <= opened <= LIVE_STREAMS, opened
        # Pages and the API answer on while the streams are full.
        assert kf_web.browser.get("/").status_code == 200
        assert kf_web.api.get("/api/health").status_code == 200
    finally:
        for sock in socks:
            sock.close()

    def opens() -> bool:
        sock, got = _open_live(kf_web.url)
        sock.close()
        return got.startswith(b"HTTP/1.1 200")

    until(opens, "a stream to open again once the others closed", timeout=10)


# ------------------------------------------------------------------------- errors and /metrics


def test_error_answers_never_hold_a_secret_or_a_stack_trace(kf_web: Servers) -> None:
    deep = b'{"title": "x", "payload": ' + b"[" * 980 + b"]" * 980 + b"}"
    answers = [
        kf_web.browser.get("/workflows/nope"), kf_web.browser.get("/nothing/here"),
        kf_web.browser.get("/workflows/alpha/topics/order?since=yesterday"),
        kf_web.browser.get("/confirm"), kf_web.browser.get("/confirm?action=x&target=/"),
        kf_web.browser.get("/static/..%2f..%2fetc%2fpasswd"),
        kf_web.browser.get("/audit?before=1e999"), kf_web.browser.get("/runs/%ff%fe"),
        kf_web.browser.post("/ui/workflows/alpha/nope", data={"csrf": kf_web.csrf()}),
        kf_web.browser.post("/ui/runs/nope/approve", data={"csrf": "0"}),
        kf_web.browser.put("/"), kf_web.browser.delete("/workflows/alpha"),
        kf_web.api.get("/api/runs/nope"), kf_web.api.get("/api/workflows/alpha/events?limit=0"),
        kf_web.api.get("/api/audit?before=99999999999999999999999"),
        kf_web.api.post("/api/runs/nope/resolve?answer=maybe", headers=CSRF),
        kf_web.api.get("/api/workflows/alpha/topics/order/events?after=%ff"),
        kf_web.api.get("/api/workflows/alpha%00"), kf_web.api.get("/api/status?workflow=%ed%a0%80"),
        kf_web.publish("beta", raw_body=deep), kf_web.publish("beta", raw_body=b"\xff\xfe"),
        kf_web.publish("beta", raw_body=b'{"title": '),
        kf_web.publish("beta", {"title": "x"}, topic="nope"),
    ]
    secrets = [TOKEN, Guard(TOKEN).session(), *kf_web.inbound.values()]
    for res in answers:
        where = (res.request.method, str(res.request.url)[:120], res.status_code)
        assert 400 <= res.status_code < 500, (*where, res.text[:300])
        for bad in ("Traceback", 'File "', "site-packages", "sqlalchemy", "Internal Server"):
            assert bad not in res.text, (*where, bad)
        for secret in secrets:
            assert secret not in res.text, where
            assert secret not in str(res.headers), where
        if res.headers["content-type"].startswith("application/json"):
            assert res.json()["error"]["message"], where
    log = kf_web.log.read_text(errors="replace")
    for secret in secrets:
        assert secret not in log
    assert "Traceback" not in log, log[-3000:]


def test_metrics_need_the_token_or_a_loopback_host(kf_web: Servers) -> None:
    """docs/security.md: with an access token every request carries it, /metrics included;
    on loopback without one it answers loopback names only."""
    with kf_web.anon() as client:
        res = client.get("/metrics")
        assert res.status_code == 401
        assert "keepflow_" not in res.text
    scraped = kf_web.api.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "keepflow_runs_in_progress" in scraped.text
    assert all(t not in scraped.text for t in (TOKEN, *kf_web.inbound.values()))
    _, port = _address(kf_web.loop_url)
    assert request(kf_web.loop_url, "GET", "/metrics", []).status == 200
    assert request(kf_web.loop_url, "GET", "/metrics", [], host=f"evil.example:{port}"
                   ).status == 403
    assert request(kf_web.loop_url, "POST", "/metrics", [("X-Keepflow-Request", "1")]
                   ).status == 405
