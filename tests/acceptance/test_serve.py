"""The real `keepflow serve` process: deploy while it runs, producers fire on an interval,
consumers commit, SIGTERM, restart — no run lost or repeated (SPEC §7, §5.5)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
export default Keep.workflow({
  name: "ticker",
  topics: { "tick": {} },
  producers: {
    every: {
      schedule: { interval: "1s" },
      async handler(ctx, state) {
        const n = (state?.n ?? 0) + 1;
        await ctx.publish("tick", { messageId: "t" + n, title: "Tick " + n, payload: { n } });
        return { n };
      },
    },
  },
  consumers: {
    count: Keep.consumer({
      subscribe: ["tick"],
      async prepare(ctx) {
        const [e] = await ctx.peek("tick", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "tick", ids: [e.messageId] }], data: e.payload };
      },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return { last: prepared.data.n }; },
    }),
  },
});
"""


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keepflow.cli", "serve", "--port", "0", "--log-format",
                 "json"], env=env, stdout=subprocess.DEVNULL, stderr=out)
        self.url = wait_for(lambda: _url(log), 30, "the server to listen")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _url(log: Path) -> str | None:
    m = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
    return m.group(1) if m else None


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def env(tmp_path: Path, store_url: str) -> dict[str, str]:
    return serve_env(tmp_path, store_url)


def serve_env(tmp_path: Path, store_url: str) -> dict[str, str]:
    """The environment of `keepflow` processes on a home under ``tmp_path`` and this store."""
    e = {**os.environ, "KEEPFLOW_HOME": str(tmp_path / "home"),
         "KEEPFLOW_DATABASE_URL": store_url, "KEEPFLOW_SANDBOX_WORKERS": "1"}
    e.pop("KEEPFLOW_FAULTS", None)
    # The ticker fires every second: below the default minimum interval, allowed here.
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "policy.toml").write_text("[limits]\nmin_interval_seconds = 1\n")
    return e


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def cli_json(env: dict[str, str], *args: str) -> Any:
    res = cli(env, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def consumed(env: dict[str, str]) -> int:
    """The ticker's events consumed so far."""
    return stored_events(env, "ticker", "consumed")


def stored_events(env: dict[str, str], workflow: str, status: str | None = None) -> int:
    """How many events of ``workflow`` (with ``status``) there are, read from the store itself:
    the waits poll this every 0.1 s, and through the CLI each poll would start a `keepflow`
    process (~1 s of CPU). What the tests assert is still read through the CLI."""
    import sqlalchemy as sa

    sql = ("SELECT COUNT(*) FROM events e JOIN workflows w ON w.id = e.workflow_id"
           " WHERE w.name = :workflow" + (" AND e.status = :status" if status else ""))
    engine = sa.create_engine(env["KEEPFLOW_DATABASE_URL"], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), {"workflow": workflow, "status": status}
                                    ).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.mark.slow  # tens of seconds of ticks: started first (tests/conftest.py)
def test_serve_runs_schedules_survives_restart_and_loses_nothing(
        env: dict[str, str], tmp_path: Path, servers: list[Server]) -> None:
    log = tmp_path / "serve.log"
    servers.append(Server(env, log))
    script = tmp_path / "ticker.js"
    script.write_text(SCRIPT, encoding="utf-8")
    assert cli(env, "deploy", str(script)).returncode == 0  # deployed to the running host
    wait_for(lambda: consumed(env) >= 3, 30, "three ticks consumed")
    status = cli_json(env, "status", "ticker")
    assert status["server"]["url"] == servers[0].url
    assert status["workflows"][0]["producers"][0]["schedule"] == "every 1s"
    # a manual trigger goes through the server (it holds the leases) and reports the run
    trig = cli_json(env, "trigger", "ticker", "every")
    assert trig["status"] == "committed"
    assert cli(env, "drain").returncode == 1  # the server drains by itself
    assert servers[0].stop() == 0
    assert "stopped" in log.read_text()
    first_round = consumed(env)
    runs = cli_json(env, "runs", "ticker", "--limit", "10000")
    assert all(r["status"] in ("committed",) for r in runs)  # shutdown left nothing half-done

    servers.append(Server(env, log))
    wait_for(lambda: consumed(env) >= first_round + 3, 30, "ticks after the restart")
    # pausing takes effect without a restart; resuming too
    assert cli(env, "pause", "ticker").returncode == 0
    time.sleep(1.5)  # let any run that was already going finish
    paused_at = len(cli_json(env, "events", "ticker"))
    time.sleep(2.5)
    assert len(cli_json(env, "events", "ticker")) == paused_at  # no ticks while paused
    assert cli(env, "resume", "ticker").returncode == 0
    wait_for(lambda: stored_events(env, "ticker") > paused_at, 30, "resumed ticks")
    assert servers[1].stop() == 0

    events = cli_json(env, "events", "ticker", "--limit", "10000")
    runs = cli_json(env, "runs", "ticker", "--limit", "10000")
    producer_runs = [r for r in runs if r["kind"] == "producer" and r["status"] == "committed"]
    consumer_runs = [r for r in runs if r["kind"] == "consumer" and r["status"] == "committed"
                     and r["transitions"][1]["note"] != "nothing to do"]
    numbers = sorted(int(e["messageId"][1:]) for e in events)
    assert numbers == list(range(1, len(numbers) + 1))  # no tick lost, none repeated
    assert len(producer_runs) == len(numbers)
    pending = [e for e in events if e["status"] != "consumed"]
    assert len(consumer_runs) == len(numbers) - len(pending)  # each event consumed once
    assert not [r for r in runs if r["status"] not in ("committed",)]
    assert "run.end" in log.read_text()  # JSON lines logs


def test_a_public_bind_requires_the_access_token_made_on_first_start(
        env: dict[str, str], tmp_path: Path) -> None:
    """docs/security.md#the-api: the first start makes the token, shows it once and keeps it
    (mode 0600); bound beyond loopback, nothing answers without it."""
    import httpx

    log = tmp_path / "public.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keepflow.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        url = wait_for(lambda: _url(log), 30, "the server to listen")
        local = url.replace("0.0.0.0", "127.0.0.1")
        token_file = Path(env["KEEPFLOW_HOME"]) / "api-token"
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert log.read_text().count(token) == 1  # shown once, never logged again
        assert httpx.get(f"{local}/api/health").status_code == 401
        assert httpx.get(f"{local}/api/health",
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = httpx.get(f"{local}/api/health", headers={"Authorization": f"Bearer {token}"})
        assert good.status_code == 200
        page = httpx.get(f"{local}/inbox")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/inbox"
        with httpx.Client(base_url=local) as browser:
            assert browser.post("/login", data={"token": "nope", "next": "/inbox"}
                                ).status_code == 401
            signed = browser.post("/login", data={"token": token, "next": "/inbox"})
            assert signed.status_code == 303
            assert signed.headers["location"] == "/inbox"
            assert token not in signed.headers["set-cookie"]  # the cookie is an HMAC of it
            assert browser.get("/inbox").status_code == 200
        # The CLI finds the token in the home and talks to the server with it.
        assert cli(env, "status").returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log.write_text("")
    again = Server(env, log)  # a restart keeps the token and does not show it again
    try:
        assert token_file.read_text().strip() == token
        assert token not in log.read_text()
    finally:
        again.stop()


def test_a_stop_asked_for_right_after_listening_is_never_lost(env: dict[str, str],
                                                              tmp_path: Path) -> None:
    """SIGTERM the moment "listening on" is printed — before uvicorn has its own signal
    handlers — still stops the server, cleanly (exit 0)."""
    for i in range(3):
        log = tmp_path / f"serve-{i}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "keepflow.cli", "serve", "--port",
                                     "0"], env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                assert proc.poll() is None, log.read_text(errors="replace")
                time.sleep(0.001)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


BACKOFF = """
export default Keep.workflow({
  name: "orders",
  topics: { "order": {} },
  producers: {
    seed: async (ctx) => { await ctx.publish("order", { messageId: "o1", title: "Order 1" }); },
  },
  consumers: {
    send: Keep.consumer({
      subscribe: ["order"],
      async prepare(ctx) {
        const [e] = await ctx.peek("order", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "order", ids: [e.messageId] }], data: {} };
      },
      async mutate(ctx, prepared) {
        await ctx.api.post({ url: "/orders", json: { id: 1 },
                             reconcile: { url: "/records/{idempotencyKey}" } });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def test_shutdown_interrupts_a_backoff_and_the_run_resumes_after_restart(
        env: dict[str, str], tmp_path: Path, servers: list[Server]) -> None:
    """Graceful stop is bounded: a run waiting 60 s to retry stops at its durable point."""
    from tests.support.sink import Sink

    sink = Sink().start()
    home = Path(env["KEEPFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "connections.toml").write_text(
        f'[connections.api]\ntype = "http"\nbase_url = "{sink.url}"\n', encoding="utf-8")
    (home / "policy.toml").write_text("[retry]\nbase_seconds = 60\njitter = 0\n",
                                      encoding="utf-8")
    script = tmp_path / "orders.js"
    script.write_text(BACKOFF, encoding="utf-8")
    assert cli(env, "deploy", str(script)).returncode == 0
    log = tmp_path / "serve.log"
    servers.append(Server(env, log))
    sink.set_plan("unavailable_503")
    cli(env, "trigger", "orders", "seed")
    wait_for(lambda: sum(1 for r in sink.requests if r[0] == "POST") == 1, 30,
             "the first (refused) attempt")
    time.sleep(0.5)  # the run is now sleeping 60 s before re-executing mutate
    t0 = time.monotonic()
    assert servers[0].stop() == 0
    assert time.monotonic() - t0 < 15
    [run] = [r for r in cli_json(env, "runs", "orders") if r["handler"] == "send"]
    assert run["status"] == "mutating"
    assert [m["status"] for m in run["mutations"]] == ["failed"]
    servers.append(Server(env, log))  # recovery re-executes mutate (attempt 2)
    wait_for(lambda: stored_events(env, "orders", "consumed") == 1, 30,
             "the event consumed after the restart")
    assert [e["status"] for e in cli_json(env, "events", "orders")] == ["consumed"]
    assert servers[1].stop() == 0
    [run] = [r for r in cli_json(env, "runs", "orders") if r["handler"] == "send"]
    assert [m["status"] for m in run["mutations"]] == ["failed", "applied"]
    assert len(sink.applied) == 1
    sink.stop()
