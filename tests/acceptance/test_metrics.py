"""``GET /metrics`` of a real `keepflow serve` (docs/operations.md#metrics), on both stores: after
a producer run and two consumer runs (one commits, one fails), the scrape shows what the API
shows — runs by status, the pending event per topic, a non-empty inbox — and the histogram has
timed every run the server finished."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.test_api_operations import CSRF, SCRIPT, ok, until
from tests.acceptance.test_serve import Server, cli, serve_env

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def api(tmp_path: Path, store_url: str) -> Iterator[httpx.Client]:
    env = serve_env(tmp_path, store_url)
    server = Server(env, tmp_path / "serve.log")
    try:
        script = tmp_path / "ops.js"
        script.write_text(SCRIPT, encoding="utf-8")
        res = cli(env, "deploy", str(script))  # to the running server
        assert res.returncode == 0, res.stderr
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client
    finally:
        server.stop()


def scrape(api: httpx.Client) -> Samples:
    res = api.get("/metrics")
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(res.text) for s in family.samples}


def of(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in found.items() if n == name}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def test_metrics_show_the_runs_events_and_inbox_of_the_server(api: httpx.Client) -> None:
    before = scrape(api)
    assert of(before, "keepflow_runs") == {}
    assert of(before, "keepflow_inbox_items") == {labels(): 0}
    assert of(before, "keepflow_run_duration_seconds_count") == {}

    # add publishes ok-1 and bad-1; work consumes ok-1, then fails on bad-1 (which stays
    # pending, reserved by the failed run) and the workflow needs action.
    ok(api.post("/api/workflows/ops/trigger/add", params={"wait": "true"}, headers=CSRF))
    until(lambda: ok(api.get("/api/workflows/ops"))["status"] == "needs_action",
          "the failing job to stop the workflow")
    runs = ok(api.get("/api/workflows/ops/runs"))
    by_status = Counter(r["status"] for r in runs)
    assert by_status == {"committed": 2, "failed": 1}

    found = until(lambda: (s := scrape(api)) and sum(
        of(s, "keepflow_run_duration_seconds_count").values()) == len(runs) and s,
        "the last run's end to be counted")
    assert of(found, "keepflow_runs") == {
        labels(workflow="ops", status="committed"): 2,
        labels(workflow="ops", status="failed"): 1}
    pending = ok(api.get("/api/workflows/ops/events", params={"status": "pending"}))
    assert [e["messageId"] for e in pending] == ["bad-1"]
    assert of(found, "keepflow_events_pending") == {labels(workflow="ops", topic="job"): 1}
    inbox = ok(api.get("/api/inbox"))
    assert inbox
    assert of(found, "keepflow_inbox_items") == {labels(): len(inbox)}
    # The failing job raised in mutate before any call: no mutation was recorded.
    assert of(found, "keepflow_mutations") == {}

    producer = labels(workflow="ops", kind="producer", status="committed")
    done = labels(workflow="ops", kind="consumer", status="committed")
    failed = labels(workflow="ops", kind="consumer", status="failed")
    assert of(found, "keepflow_run_duration_seconds_count") == {producer: 1, done: 1, failed: 1}
    assert of(found, "keepflow_runs_finished_total") == {producer: 1, done: 1, failed: 1}
    durations = of(found, "keepflow_run_duration_seconds_sum")
    assert all(0 < durations[k] < 60 for k in (producer, done, failed)), durations
    assert of(found, "keepflow_run_duration_seconds_bucket")[failed | {("le", "+Inf")}] == 1
    # The runs needed the sandbox: this server's worker (KEEPFLOW_SANDBOX_WORKERS=1) is up.
    assert of(found, "keepflow_sandbox_workers")[labels()] >= 1
    assert of(found, "keepflow_sandbox_pool_size") == {labels(): 1}
    assert of(found, "keepflow_runs_in_progress") == {labels(): 0}

    # Not part of the API's schema (docs/api.md lists the schema's routes).
    assert "/metrics" not in ok(api.get("/api/openapi.json"))["paths"]
