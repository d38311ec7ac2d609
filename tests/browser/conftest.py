"""Browser tests: Debian's chromium, driven by Playwright, against a real `keepflow serve`.

One server per test module (on its own home, SQLite store, and a loopback HTTP sink standing
in for the external system the scripts post to); each test deploys its own workflows under
its own names. The browser is never downloaded: without ``/usr/bin/chromium`` the tests skip,
except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.test_first_hour import _env, kf
from tests.acceptance.test_serve import Server
from tests.conftest import IN_CI
from tests.support.sink import Sink

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
CSRF = {"X-Keepflow-Request": "1"}
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

#: Short timings so an uncertain outcome reaches the person within about a second: a call may
#: take 1 s (the sink hangs 2 s on "apply_then_timeout"), one background reconcile attempt.
POLICY = """
[retry]
max_attempts = 2
base_seconds = 0.05
jitter = 0

[reconcile]
max_attempts = 1
base_seconds = 0.2

[timeouts]
tool_call_seconds = 1
reconcile_call_seconds = 1

[connectors.api.timeouts]
tool_call_seconds = 1
reconcile_call_seconds = 1
"""

#: What a page must never show.
BROKEN = ("Traceback (most recent call last)", "Internal Server Error")


def screenshot_dir() -> Path:
    d = Path(os.environ.get("KEEPFLOW_SCREENSHOTS") or ROOT / "build" / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class Keepflow:
    """A running `keepflow serve` with its home, its sink and a JSON API client."""

    url: str
    env: dict[str, str]
    home: Path
    sink: Sink
    api: httpx.Client
    scripts: Path

    def deploy(self, name: str, source: str) -> dict[str, Any]:
        path = self.scripts / f"{name}.js"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        res = kf(self.env, "deploy", str(path), "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)  # type: ignore[no-any-return]

    def post(self, path: str, **params: Any) -> Any:
        res = self.api.post(path, params=params, headers=CSRF)
        assert res.status_code in (200, 202), (res.status_code, res.text)
        return res.json()

    def get(self, path: str, **params: Any) -> Any:
        res = self.api.get(path, params=params)
        assert res.status_code == 200, (res.status_code, res.text)
        return res.json()

    def trigger(self, workflow: str, handler: str) -> Any:
        return self.post(f"/api/workflows/{workflow}/trigger/{handler}", wait="true")

    def inbox_item(self, workflow: str, kind: str, timeout: float = 20) -> dict[str, Any]:
        return until(lambda: next((i for i in self.get("/api/inbox")
                                   if i["workflow"] == workflow and i["kind"] == kind), None),
                     f"a {kind} item of {workflow} in the inbox", timeout)

    def run(self, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/runs/{run_id}")  # type: ignore[no-any-return]

    def applied(self, message_id: str) -> list[Any]:
        """What the external system applied for the event ``message_id`` (its own record)."""
        return [b for b in self.sink.applied_bodies() if b == {"id": message_id}]


def until(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def keepflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keepflow]:
    tmp = tmp_path_factory.mktemp("kf-browser")
    home = tmp / "home"
    env = _env(KEEPFLOW_HOME=str(home))
    assert kf(env, "init").returncode == 0
    sink = Sink(hang_seconds=2.0).start()
    (home / "connections.toml").write_text(
        f'[connections.api]\ntype = "http"\nbase_url = "{sink.url}"\n', encoding="utf-8")
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    scripts = tmp / "scripts"
    scripts.mkdir()
    server = Server(env, tmp / "serve.log")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield Keepflow(server.url, env, home, sink, client, scripts)
    finally:
        if server.proc.poll() is None:
            server.stop()
        sink.stop()
        log = (tmp / "serve.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


# ---------------------------------------------------------------------------- the browser


@pytest.fixture
def browser() -> Iterator[Any]:
    """One chromium per test (≈ 0.3 s): Playwright's sync API keeps an asyncio loop running in
    this thread while it is open, and under `-n 2` the other tests of this worker run between
    browser tests — one of them calling asyncio.run() would fail."""
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required in CI (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI runs these")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@dataclass
class Watch:
    """What went wrong in a browser context: console errors, page errors, 5xx answers."""

    problems: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> Any:
        page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error on {page.url}: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error on {page.url}: {e}"))
        page.on("response", lambda r: r.status >= 500 and self.problems.append(
            f"{r.status} from {r.url}"))
        return page


def new_page(browser: Any, base_url: str, watch: Watch, *, viewport: dict[str, int] = DESKTOP,
             dark: bool = False) -> tuple[Any, Any]:
    phone = viewport["width"] < 600
    context = browser.new_context(base_url=base_url, viewport=viewport,
                                  color_scheme="dark" if dark else "light",
                                  is_mobile=phone, has_touch=phone)
    context.set_default_timeout(10_000)
    return context, watch.attach(context.new_page())


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Any, keepflow: Keepflow, watch: Watch) -> Iterator[Any]:
    """A desktop page on the module's server; the test fails on any console error."""
    context, p = new_page(browser, keepflow.url, watch)
    try:
        yield p
    finally:
        context.close()
    assert not watch.problems, watch.problems
