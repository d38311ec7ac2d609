"""The JSON API of a real `keepflow serve` (docs/api.md): every listing and operating action
the CLI has, their refusals (404, 409, 403), and the OpenAPI schema that lists them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.test_first_hour import _env, kf
from tests.acceptance.test_serve import Server

pytestmark = pytest.mark.integration

SCRIPT = """
export default Keep.workflow({
  name: "ops",
  topics: { "job": {} },
  producers: {
    async add(ctx, state) {
      const n = (state?.n ?? 0) + 1;
      const job = (id, fail) => ({ messageId: id, title: `Job ${id}`, payload: { fail } });
      await ctx.publish("job", job(`ok-${n}`, false));
      await ctx.publish("job", job(`bad-${n}`, true));
      return { n };
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["job"],
      async prepare(ctx) {
        const [e] = await ctx.peek("job", { limit: 1 });
        if (!e) return { reservations: [] };
        return { reservations: [{ topic: "job", ids: [e.messageId] }], data: e.payload };
      },
      async mutate(ctx, prepared) {
        if (prepared.data.fail) throw new Error("this job always fails");
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""

CSRF = {"X-Keepflow-Request": "1"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    env = _env(KEEPFLOW_HOME=str(tmp_path / "home"))
    assert kf(env, "init").returncode == 0
    script = tmp_path / "ops.js"
    script.write_text(SCRIPT, encoding="utf-8")
    assert kf(env, "deploy", str(script)).returncode == 0
    server = Server(env, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client
    finally:
        server.stop()


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ok(res: httpx.Response) -> Any:
    assert res.status_code == 200, (res.status_code, res.text)
    return res.json()


def test_listings_and_actions_work_and_refuse_from_the_wrong_state(api: httpx.Client) -> None:
    ok(api.post("/api/workflows/ops/trigger/add", params={"wait": "true"}, headers=CSRF))
    [wf] = until(lambda: [w for w in ok(api.get("/api/workflows"))
                          if w["status"] == "needs_action"], "the failing job to stop the workflow")
    assert wf["name"] == "ops"
    runs = ok(api.get("/api/workflows/ops/runs"))
    failed = next(r for r in runs if r["status"] == "failed")
    detail = ok(api.get(f"/api/runs/{failed['id']}"))
    assert detail["failureClass"] == "logic"
    assert "this job always fails" in detail["failureMessage"]
    inbox = ok(api.get("/api/inbox"))
    assert any(failed["id"] in str(item) for item in inbox)
    assert ok(api.get("/api/notifications"))  # the workflow needs action
    assert ok(api.get("/api/policy", params={"workflow": "ops"}))  # the effective policy
    events = ok(api.get("/api/workflows/ops/events", params={"topic": "job"}))
    assert {e["messageId"] for e in events} == {"ok-1", "bad-1"}
    one = ok(api.get("/api/workflows/ops/topics/job/events/ok-1"))
    assert one["status"] == "consumed"
    assert one["payload"] == {"fail": False}

    # A failed run cannot be answered "it didn't happen" (that is for unknown outcomes): 409.
    res = api.post(f"/api/runs/{failed['id']}/resolve", params={"answer": "didnt_happen"},
                   headers=CSRF)
    assert res.status_code == 409, res.text
    assert res.json()["error"]["message"]
    before = len(detail["transitions"])
    assert ok(api.post(f"/api/runs/{failed['id']}/retry", headers=CSRF))["id"] == failed["id"]
    # The server carries the retried run on at once: it runs the failing job again, and fails.
    again = until(lambda: (d := ok(api.get(f"/api/runs/{failed['id']}")))["status"] == "failed"
                  and len(d["transitions"]) > before and d, "the retried run to fail again")
    assert again["failureMessage"] == detail["failureMessage"]
    assert again["transitions"][before]["from"] == "failed"
    # Give the failed run up: its event ends skipped and the workflow is active again.
    ok(api.post(f"/api/runs/{failed['id']}/resolve", params={"answer": "skip"}, headers=CSRF))
    until(lambda: ok(api.get("/api/workflows/ops/topics/job/events/bad-1"))["status"]
          == "skipped", "the given-up event to be skipped")

    # Pause, produce while paused (a manual trigger still runs), skip a pending event.
    paused = ok(api.post("/api/workflows/ops/pause", params={"reason": "checking"},
                         headers=CSRF))
    assert paused["status"] == "paused"
    assert paused["statusReason"] == "checking"
    ok(api.post("/api/workflows/ops/trigger/add", params={"wait": "true"}, headers=CSRF))
    pending = ok(api.get("/api/workflows/ops/events", params={"status": "pending"}))
    assert {e["messageId"] for e in pending} == {"ok-2", "bad-2"}
    skipped = ok(api.post("/api/workflows/ops/topics/job/events/bad-2/skip", headers=CSRF))
    assert skipped["status"] == "skipped"
    again = api.post("/api/workflows/ops/topics/job/events/bad-2/skip", headers=CSRF)
    assert again.status_code == 409, again.text
    assert ok(api.post("/api/workflows/ops/resume", headers=CSRF))["status"] == "active"
    until(lambda: ok(api.get("/api/workflows/ops/topics/job/events/ok-2"))["status"]
          == "consumed", "the resumed workflow to consume the pending event")
    assert ok(api.post("/api/workflows/ops/disable", headers=CSRF))["status"] == "disabled"


def test_refusals_are_classified(api: httpx.Client) -> None:
    assert api.get("/api/runs/01NOSUCHRUN").status_code == 404
    assert api.get("/api/workflows/nope/events").status_code == 404
    assert api.get("/api/workflows/ops/topics/job/events/nope").status_code == 404
    assert api.post("/api/workflows/ops/pause").status_code == 403  # no CSRF header
    assert api.post("/api/runs/x/resolve", params={"answer": "maybe"},
                    headers=CSRF).status_code == 422
    assert api.get("/api/workflows/ops/events", params={"status": "lost"}).status_code == 400
    assert api.get("/api/workflows/ops/events", params={"limit": 0}).status_code == 422


def test_the_openapi_schema_lists_every_route(api: httpx.Client) -> None:
    schema = ok(api.get("/api/openapi.json"))
    paths = set(schema["paths"])
    for path in ("/api/workflows", "/api/workflows/{name}/events", "/api/runs/{run_id}",
                 "/api/runs/{run_id}/resolve", "/api/inbox", "/api/notifications",
                 "/api/workflows/{name}/topics/{topic}/events/{message_id}/skip"):
        assert path in paths, path
