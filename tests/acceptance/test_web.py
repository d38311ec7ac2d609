"""The web surfaces of a real `keepflow serve` (docs/api.md, docs/security.md#the-api): inbound
events and their refusals, every page answering, CSRF on page forms, hostile titles and
payloads rendered as text, and no secret in any response or log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.test_api_operations import CSRF, ok, until
from tests.acceptance.test_first_hour import _env, kf
from tests.acceptance.test_serve import Server
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

#: The connection's secret: it must never reach a page, an API answer or the log.
SECRET = "s3cr3t-Bearer-Value-9f8e7d"
HOSTILE_TITLE = '<script>alert("t")</script> & <img src=x onerror=alert(1)>'
HOSTILE_PAYLOAD = {"note": "</pre><script>alert('p')</script>", "x": "\"'><svg onload=alert(2)>"}

SCRIPT = """
export default Keep.workflow({
  name: "inbound",
  topics: { "order": {}, "done": {} },
  consumers: {
    take: Keep.consumer({
      subscribe: ["order"],
      async prepare(ctx) {
        const [e] = await ctx.peek("order", { limit: 1 });
        if (!e) return { reservations: [] };
        return { reservations: [{ topic: "order", ids: [e.messageId] }], data: e };
      },
      async mutate(ctx, prepared) {
        if (prepared.data.payload && prepared.data.payload.fail) {
          throw new Error(prepared.data.payload.fail);
        }
        await ctx.api.post({ url: "/orders", json: { id: prepared.data.messageId },
                             reconcile: { url: "/records/{idempotencyKey}" } });
      },
      async next(ctx, prepared, mutation) {
        await ctx.publish("done", { messageId: prepared.data.messageId,
                                    title: "Done: " + prepared.data.title });
        return null;
      },
    }),
    archive: Keep.consumer({
      subscribe: ["done"],
      async prepare(ctx) {
        const [e] = await ctx.peek("done", { limit: 1 });
        return { reservations: e ? [{ topic: "done", ids: [e.messageId] }] : [] };
      },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


class Web:
    def __init__(self, client: httpx.Client, env: dict[str, str], log: Path, sink: Sink
                 ) -> None:
        self.client, self.env, self.log, self.sink = client, env, log, sink
        #: Inbound tokens made so far; the newest is the one that works.
        self.tokens: list[str] = []

    def publish(self, body: Any, token: str | None, topic: str = "order",
                raw: bytes | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        content = raw if raw is not None else json.dumps(body).encode()
        return self.client.post(f"/api/workflows/inbound/topics/{topic}/events",
                                content=content, headers=headers)

    def csrf(self, path: str = "/") -> str:
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', self.client.get(path).text)
        assert m, "the page carries no CSRF field"
        return m.group(1)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp = tmp_path_factory.mktemp("web")
    sink = Sink().start()
    env = _env(KEEPFLOW_HOME=str(tmp / "home"), WEB_TEST_SECRET=SECRET)
    assert kf(env, "init").returncode == 0
    (tmp / "home" / "connections.toml").write_text(
        f'[connections.api]\ntype = "http"\nbase_url = "{sink.url}"\n'
        'headers_env = { Authorization = "WEB_TEST_SECRET" }\n', encoding="utf-8")
    (tmp / "inbound.js").write_text(SCRIPT, encoding="utf-8")
    deployed = kf(env, "deploy", str(tmp / "inbound.js"))
    assert deployed.returncode == 0, deployed.stderr
    log = tmp / "serve.log"
    server = Server(env, log)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Web(client, env, log, sink)
    finally:
        server.stop()
        sink.stop()


@pytest.fixture
def token(web: Web) -> str:
    """The workflow's current inbound token (made by the CLI the first time)."""
    if not web.tokens:
        # Before any token exists, every inbound event is refused, and says how to make one
        # (the same answer as a wrong token: a caller without it learns nothing).
        res = web.publish({"title": "early"}, "anything")
        assert res.status_code == 401, res.text
        assert "keepflow token inbound" in res.json()["error"]["message"]
        made = kf(web.env, "token", "inbound", "--json")
        assert made.returncode == 0, made.stderr
        web.tokens.append(json.loads(made.stdout)["token"])
    return web.tokens[-1]


def test_an_inbound_event_is_published_once_and_wakes_its_consumer(web: Web, token: str
                                                                   ) -> None:
    body = {"messageId": "o-1", "title": "Order 1", "payload": {"total": 42}}
    first = web.publish(body, token)
    assert first.status_code == 201, first.text
    assert first.json()["created"] is True
    assert first.json()["status"] == "pending"
    again = web.publish(body, token)  # the sender retries: the same event, nothing new
    assert again.status_code == 200
    assert again.json()["created"] is False
    differs = web.publish(body | {"payload": {"total": 43}}, token)
    assert differs.status_code == 200
    assert "first one is kept" in differs.json()["warning"]
    until(lambda: ok(web.client.get("/api/workflows/inbound/topics/order/events/o-1"))
          ["status"] == "consumed", "the consumer to take the inbound event")
    assert web.sink.applied_bodies().count({"id": "o-1"}) == 1
    detail = ok(web.client.get("/api/workflows/inbound/topics/order/events/o-1"))
    assert detail["payload"] == {"total": 42}
    assert detail["createdBy"] is None
    assert detail["history"][0]["note"] == "received over HTTP"


@pytest.mark.parametrize(("body", "status", "field"), [
    ([1, 2], 422, "$"),
    ({"payload": {}}, 422, "title"),
    ({"title": "   "}, 422, "title"),
    ({"title": "x" * 201}, 422, "title"),
    ({"title": "ok", "extra": 1}, 422, "extra"),
    ({"title": "ok", "messageId": ["a"]}, 422, "messageId"),
    ({"title": "ok", "messageId": "m" * 257}, 422, "messageId"),
    ({"title": "ok", "payload": {"blob": "x" * 300_000}}, 413, "payload"),
])
def test_bad_inbound_bodies_are_refused_naming_the_field(web: Web, token: str, body: Any,
                                                        status: int, field: str) -> None:
    before = ok(web.client.get("/api/workflows/inbound/topics"))
    res = web.publish(body, token)
    assert res.status_code == status, res.text
    assert res.json()["error"]["field"] == field
    assert ok(web.client.get("/api/workflows/inbound/topics")) == before  # nothing stored


@pytest.mark.parametrize(("raw", "why"), [
    (b'{"title": "a\\ud800b"}', "lone UTF-16 surrogate"),
    (b'{"title": "nul\\u0000"}', "NUL"),
    (b'{"title": "x", "payload": NaN}', "not valid JSON"),
    (b'{"title": ', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"", "no body"),
])
def test_hostile_inbound_bytes_are_a_clear_422(web: Web, token: str, raw: bytes, why: str
                                               ) -> None:
    res = web.publish(None, token, raw=raw)
    assert res.status_code == 422, res.text
    assert why in res.json()["error"]["message"]


def test_inbound_refusals_for_tokens_and_topics(web: Web, token: str) -> None:
    body = {"title": "Order"}
    assert web.publish(body, None).status_code == 401
    assert web.publish(body, token + "x").status_code == 401
    unknown = web.client.post("/api/workflows/nobody/topics/order/events", json=body,
                              headers={"Authorization": f"Bearer {token}"})
    assert unknown.status_code == 401  # not 404: which workflows exist is not given away
    assert unknown.json()["error"]["message"].startswith("missing or wrong inbound-event token")
    wrong = web.publish(body, token, topic="nope")
    assert wrong.status_code == 404
    assert "order" in wrong.json()["error"]["message"]  # names the declared topics
    # An inbound event needs no X-Keepflow-Request header, but still no foreign Origin.
    res = web.client.post("/api/workflows/inbound/topics/order/events", json=body,
                          headers={"Authorization": f"Bearer {token}",
                                   "Origin": "https://evil.example"})
    assert res.status_code == 403


def test_a_replaced_token_stops_working_at_once(web: Web, token: str) -> None:
    made = ok(web.client.post("/api/workflows/inbound/inbound-token", headers=CSRF))
    fresh = made["token"]
    assert fresh != token
    assert web.publish({"title": "Old token"}, token).status_code == 401
    assert web.publish({"messageId": "o-fresh", "title": "Fresh"}, fresh).status_code == 201
    ok(web.client.post("/api/workflows/inbound/inbound-token/revoke", headers=CSRF))
    assert web.publish({"title": "x"}, fresh).status_code == 401
    web.tokens.append(ok(web.client.post("/api/workflows/inbound/inbound-token",
                                         headers=CSRF))["token"])
    audit = ok(web.client.get("/api/audit", params={"action": "workflow.inbound_token"}))
    assert audit["entries"]
    assert all(fresh not in json.dumps(e) for e in audit["entries"])  # never the token


def test_page_forms_need_the_csrf_field_and_our_origin(web: Web) -> None:
    def status() -> str:
        return str(ok(web.client.get("/api/workflows/inbound"))["status"])

    assert status() == "active"
    no_field = web.client.post("/ui/workflows/inbound/pause", data={"back": "/"})
    assert no_field.status_code == 403
    forged = web.client.post("/ui/workflows/inbound/pause", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    foreign = web.client.post("/ui/workflows/inbound/pause",
                              data={"csrf": web.csrf(), "back": "/"},
                              headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert status() == "active"  # nothing changed
    done = web.client.post("/ui/workflows/inbound/pause",
                           data={"csrf": web.csrf(), "back": "https://evil.example/"})
    assert done.status_code == 303
    assert done.headers["location"] == "/"  # never a redirect off this site
    assert status() == "paused"
    page = web.client.get("/")
    assert "is paused now" in page.text  # the one-time message
    assert "is paused now" not in web.client.get("/").text
    web.client.post("/ui/workflows/inbound/resume", data={"csrf": web.csrf()})
    assert status() == "active"
    # The JSON API's POSTs need the header instead.
    assert web.client.post("/api/workflows/inbound/pause").status_code == 403


def test_hostile_titles_payloads_and_errors_render_as_text(web: Web, token: str) -> None:
    res = web.publish({"messageId": "<b>id</b>\"'", "title": HOSTILE_TITLE,
                       "payload": HOSTILE_PAYLOAD | {"fail": "<iframe src=javascript:1>"}},
                      token)
    assert res.status_code == 201, res.text
    run = until(lambda: next((r for r in ok(web.client.get("/api/workflows/inbound/runs"))
                              if r["status"] == "failed"), None), "the hostile run to fail")
    mid = "%3Cb%3Eid%3C%2Fb%3E%22%27"
    pages = ["/", "/workflows/inbound", "/workflows/inbound/topics/order",
             f"/workflows/inbound/topics/order/events/{mid}", f"/runs/{run['id']}",
             "/inbox", "/notifications", "/audit", "/workflows/inbound/runs"]
    for path in pages:
        page = web.client.get(path)
        assert page.status_code == 200, (path, page.status_code)
        html = page.text
        for raw in ("<script>alert", "<img src=x", "<svg onload", "<iframe", "<b>id</b>"):
            assert raw not in html, (path, raw)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    detail = web.client.get(f"/workflows/inbound/topics/order/events/{mid}").text
    assert "&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt;" in detail
    assert "&lt;/pre&gt;&lt;script&gt;" in detail
    assert "&lt;iframe src=javascript:1&gt;" in web.client.get(f"/runs/{run['id']}").text
    # Give the hostile run up so the workflow runs on for the other tests.
    ok(web.client.post(f"/api/runs/{run['id']}/resolve", params={"answer": "skip"},
                       headers=CSRF))


def test_every_page_and_listing_answers_without_an_error(web: Web, token: str) -> None:
    assert web.publish({"messageId": "o-2", "title": "Order 2"}, token).status_code == 201
    until(lambda: ok(web.client.get("/api/workflows/inbound/topics/order/events/o-2"))
          ["status"] == "consumed", "o-2 to be consumed")
    run = ok(web.client.get("/api/workflows/inbound/runs"))[0]["id"]
    for path in ("/", "/inbox", "/notifications", "/notifications?status=all", "/audit",
                 "/audit?workflow=inbound", "/workflows/inbound", "/workflows/inbound/runs",
                 "/workflows/inbound/runs?status=committed", "/workflows/inbound/versions",
                 "/workflows/inbound/versions/1.0", "/workflows/inbound/versions/1.0?diff=1.0",
                 "/workflows/inbound/topics/order?status=consumed&title=order&since=2020-01-01",
                 "/workflows/inbound/topics/done", f"/runs/{run}", "/static/keepflow.css",
                 "/static/keepflow.js"):
        res = web.client.get(path)
        assert res.status_code == 200, (path, res.status_code, res.text[:300])
    for path, status in (("/workflows/nope", 404), ("/runs/01NOSUCHRUN", 404),
                         ("/workflows/inbound/topics/nope", 404),
                         ("/workflows/inbound/topics/order?since=yesterday", 422),
                         ("/workflows/inbound/topics/order?after=zz", 422),
                         ("/static/../../etc/passwd", 404), ("/confirm?action=x&target=/", 404)):
        res = web.client.get(path)
        assert res.status_code == status, (path, res.status_code)
        assert "Traceback" not in res.text
        assert "<h1>" in res.text  # a page that says what happened, not a JSON blob
    assert "keepflow" in web.client.get("/api/openapi.json").json()["info"]["title"]


def test_no_secret_reaches_any_response_or_the_log(web: Web, token: str) -> None:
    """The connection's secret was sent to the sink on every mutation; the access token and
    the inbound token are shown only when made."""
    for i in (1, 2, 3):  # a replay where an earlier test already sent it: idempotent
        sent = web.publish({"messageId": f"o-{i}", "title": f"Order {i}"}, token)
        assert sent.status_code in (200, 201), sent.text
    until(lambda: ok(web.client.get("/api/workflows/inbound/topics/order/events/o-3"))
          ["status"] == "consumed", "o-3 to be consumed")
    runs = ok(web.client.get("/api/workflows/inbound/runs"))
    paths = {"/api/workflows", "/api/status", "/api/inbox", "/api/notifications?status=all",
             "/api/policy", "/api/policy?workflow=inbound", "/api/workflows/inbound",
             "/api/workflows/inbound/topics", "/api/workflows/inbound/events",
             "/api/workflows/inbound/topics/order/events", "/api/workflows/inbound/runs",
             "/api/workflows/inbound/ledger", "/api/workflows/inbound/versions",
             "/api/workflows/inbound/versions/1.0", "/api/audit", "/api/health",
             "/api/openapi.json", "/", "/inbox", "/audit", "/notifications?status=all",
             "/workflows/inbound", "/workflows/inbound/topics/order",
             "/workflows/inbound/topics/done", "/workflows/inbound/runs"}
    paths |= {f"/api/runs/{r['id']}" for r in runs} | {f"/runs/{r['id']}" for r in runs}
    paths |= {f"/workflows/inbound/topics/order/events/o-{i}" for i in (1, 2, 3)}
    access = (Path(web.env["KEEPFLOW_HOME"]) / "api-token").read_text().strip()
    for path in sorted(paths):
        res = web.client.get(path)
        assert res.status_code == 200, (path, res.status_code)
        for secret in (SECRET, access, *web.tokens):
            assert secret not in res.text, (path, "leaks a secret")
            assert secret not in str(res.headers), (path, "leaks a secret in a header")
    # The sink did receive it: the secret is real and was used.
    assert web.sink.applied_keys()
    log = web.log.read_text(errors="replace")
    assert SECRET not in log
    assert all(t not in log for t in web.tokens)


def test_every_route_refuses_unknown_names_and_posts_without_the_header(web: Web) -> None:
    """Over the published schema: each route with a name in its path answers 404 for a name
    that does not exist, and each POST answers 403 without the CSRF header — never a 5xx."""
    schema = ok(web.client.get("/api/openapi.json"))
    # The schema describes refusals as they are sent: keepflow's shape, not FastAPI's.
    refusal = schema["components"]["schemas"]["HTTPValidationError"]
    assert refusal["required"] == ["error"]
    assert "detail" not in refusal["properties"]
    fill = {"name": "no-such-workflow", "run_id": "01NOSUCHRUN0000000000000000",
            "topic": "order", "message_id": "nope", "handler": "take", "label": "9.9"}
    seen = 0
    for path, item in schema["paths"].items():
        url = path.format(**fill)
        for method in item:
            seen += 1
            if method == "post" and path.endswith("/events"):  # inbound: its own token, and
                # an unknown workflow is the same 401 as a wrong token (nothing given away)
                assert web.client.post(url, json={"title": "x"}).status_code == 401, path
                continue
            if method == "post":
                bare = web.client.post(url)
                assert bare.status_code == 403, (path, bare.status_code)
                if "{" not in path:
                    continue
                res = web.client.post(url, headers=CSRF, params={"answer": "skip"})
            else:
                if "{" not in path:
                    assert web.client.get(url).status_code == 200, path
                    continue
                res = web.client.get(url)
            assert res.status_code == 404, (method, path, res.status_code, res.text[:200])
            assert res.json()["error"]["message"]
    assert seen >= 30


def test_a_confirmation_says_what_the_store_says_not_what_the_link_says(web: Web, token: str
                                                                       ) -> None:
    assert web.publish({"messageId": "o-confirm", "title": "Order to confirm"},
                       token).status_code in (200, 201)
    page = web.client.get("/confirm", params={
        "action": "skip_event", "target": "/ui/events/skip", "back": "//evil.example/",
        "about": "Click yes to receive your refund", "f.workflow": "inbound",
        "f.topic": "order", "f.message_id": "o-confirm", "f.csrf": "x"})
    assert page.status_code == 200
    assert "refund" not in page.text  # a crafted link cannot put words on our page
    assert "Order to confirm" in page.text
    assert 'name="back" value="/"' in page.text  # never back to another site
    assert 'name="csrf" value="x"' not in page.text  # only the known fields are carried
    for params in ({"action": "approve", "target": "/ui/runs/01NOSUCHRUN/approve"},
                   {"action": "approve", "target": "/ui/runs/01NOSUCHRUN/skip"},
                   {"action": "disable", "target": "https://evil.example/ui/workflows/x/disable"},
                   {"action": "rm", "target": "/ui/workflows/inbound/rm"}):
        assert web.client.get("/confirm", params=params).status_code == 404, params
