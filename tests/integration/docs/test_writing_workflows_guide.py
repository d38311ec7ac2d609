"""docs/writing-workflows.md cannot rot: every complete example in it is deployed through the
real deploy pipeline into a fresh keepflow home, with the connections it names pointing at a
real loopback HTTP service and a real SQLite database, and run — each producer, then the
consumers until none is ready, then each consumer once more with nothing to do — and every run
must commit, every event end consumed and every mutation be applied.

Every ```js block of the guide must be marked either as such an example or as a fragment
(tests/support/guide.py describes the markers), so no untested example slips in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from keepflow import service
from keepflow.model import RunStatus, WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.conftest import IN_CI
from tests.support import guide
from tests.support.sink import JsonHandler, start_server, stop_server

pytestmark = pytest.mark.integration

TICKETS = [
    {"id": 1, "from": "alice@example.com", "subject": "Printer on fire"},
    {"id": 2, "from": "bob@example.com", "subject": "Invoice 4711 is wrong"},
    {"id": 3, "from": "carol@example.com", "subject": "Password reset"},
]
ORDERS = [
    (1, "ACME GmbH", 120.0, "open"),
    (2, "Globex", 75.5, "cancelled"),
    (3, "Initech", 310.0, "open"),
]


# ------------------------------------------------------------------ the examples' world


@dataclass
class TicketService:
    """The `api` service of the guide: GET /tickets?since=N, POST /<collection> recorded by
    Idempotency-Key, GET /<collection>/by-key/<key> (200 if received, 404 if not)."""

    received: dict[str, tuple[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> TicketService:
        world = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if parts == ["tickets"]:
                    since = int(parse_qs(url.query).get("since", ["0"])[0])
                    self._reply(200, {"tickets": [t for t in TICKETS if t["id"] > since]})
                elif len(parts) == 3 and parts[1] == "by-key":
                    with world.lock:
                        got = world.received.get(parts[2])
                    if got is None or got[0] != parts[0]:
                        self._reply(404, {"error": "no such request"})
                    else:
                        self._reply(200, {"key": parts[2], "body": got[1]})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                key = self.headers.get("Idempotency-Key") or ""
                collection = urlsplit(self.path).path.strip("/")
                with world.lock:
                    world.received.setdefault(key, (collection, body))
                    number = list(world.received).index(key) + 1
                self._reply(201, {"id": number, "key": key})

        self.server = start_server(Handler)
        return self

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)


def shop_database(path: Path) -> str:
    """The `shop` database of the guide."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                   "amount REAL NOT NULL, status TEXT NOT NULL DEFAULT 'open')")
        db.execute("CREATE TABLE invoices (order_id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                   "amount REAL NOT NULL)")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", ORDERS)
    db.close()
    return f"sqlite:///{path}"


@pytest.fixture
def api() -> Iterator[TicketService]:
    world = TicketService().start()
    yield world
    world.stop()


#: connection name -> its connections.toml section, given the test's world.
CONNECTIONS: dict[str, Callable[[TicketService, Path], str]] = {
    "api": lambda api, tmp: f'type = "http"\nbase_url = "{api.url}"\n',
    "shop": lambda api, tmp: f'type = "sql"\nurl = "{shop_database(tmp / "shop.db")}"\n',
}
#: connection name -> its declaration type in keepflow.d.ts.
CONNECTION_TYPES = {"api": "keepflow.HttpConnection", "shop": "keepflow.SqlConnection"}


# ------------------------------------------------------------------ the guide's blocks


def test_every_js_block_is_an_example_or_a_fragment() -> None:
    unmarked = [b.line for b in guide.js_blocks()
                if not guide.is_fragment(b) and guide.example_of(b) is None]
    assert unmarked == [], (
        f"docs/writing-workflows.md: the ```js blocks at lines {unmarked} are neither marked "
        "<!-- example: NAME connections=... --> (deployed and run by this test) nor "
        "<!-- fragment -->")


def test_examples_are_named_uniquely_and_need_known_connections() -> None:
    found = guide.examples()
    assert len(found) >= 3
    names = [e.name for e in found]
    assert len(names) == len(set(names)), names
    unknown = {c for e in found for c in e.connections} - set(CONNECTIONS)
    assert unknown == set(), f"examples name connections this test cannot provide: {unknown}"


def test_markers_are_parsed() -> None:
    text = ("<!-- example: demo connections=api,shop warnings=no-reconcile -->\n"
            "```js\nexport default 1;\n```\n"
            "<!-- fragment -->\n```js\nx\n```\n```js\ny\n```\n")
    first, second, third = guide.js_blocks(text)
    example = guide.example_of(first)
    assert example is not None
    assert (example.name, example.connections, example.warnings, example.source) == (
        "demo", ("api", "shop"), ("no-reconcile",), "export default 1;\n")
    assert guide.is_fragment(second)
    assert guide.example_of(third) is None
    assert not guide.is_fragment(third)


@pytest.mark.parametrize("example", guide.examples(), ids=lambda e: e.name)
def test_example_deploys_and_runs(example: guide.Example, tmp_path: Path, pool: SandboxPool,
                                  api: TicketService) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, database_url=f"sqlite:///{tmp_path / 'keepflow.db'}")
    service.init(settings)
    sections = [f"[connections.{name}]\n{CONNECTIONS[name](api, tmp_path)}"
                for name in example.connections]
    settings.connections_file.write_text("\n".join(sections), encoding="utf-8")
    script = tmp_path / f"{example.name}.js"
    script.write_text(example.source, encoding="utf-8")

    with Host(settings, pool=pool) as host:
        deployed = service.deploy(host, script)
        assert deployed.status == "created"
        findings = sorted((f.severity, f.rule) for f in deployed.findings)
        assert findings == sorted(("warning", w) for w in example.warnings), (
            f"the example at line {example.line} deploys with other findings than its marker "
            f"says: {[f.to_dict() for f in deployed.findings]}")
        wf = deployed.workflow.name
        version = host.store.get_version(deployed.workflow.current_version_id or "")
        manifest = version.manifest
        assert manifest["producers"], "an example shows at least one producer"

        outcomes = [service.trigger(host, wf, p) for p in manifest["producers"]]
        report = service.drain(host, wf)
        assert report.blocked == {}
        outcomes += report.runs
        # Once more with nothing pending: prepare reserves nothing, next gets {status: "none"}.
        outcomes += [service.trigger(host, wf, c) for c in manifest["consumers"]]

        failed = [(o.handler, o.status.value, o.failure) for o in outcomes
                  if o.status is not RunStatus.COMMITTED]
        assert failed == [], f"the example at line {example.line} has runs that did not commit"
        events = service.list_events(host, wf)
        assert events, "an example publishes events"
        assert {e["status"] for e in events} == {"consumed"}
        assert any(o.handler in manifest["consumers"] for o in report.runs)
        mutations = [m for o in outcomes for m in service.show_run(host, o.run_id)["mutations"]]
        assert {m["status"] for m in mutations} <= {"applied"}
        if example.connections:
            assert mutations, "an example with connections makes a mutation"
        assert host.store.get_workflow(wf).status is WorkflowStatus.ACTIVE
    # The service received each mutation once (one request per idempotency key).
    assert len(api.received) == sum(m["connection"] == "api" for m in mutations)


# ------------------------------------------------------------------ the examples type-check

#: Mistakes keepflow.d.ts must catch (a check that catches nothing proves nothing).
MISTAKES = """
export default Keep.workflow({
  name: "mistakes",
  topics: { t: {} },
  producers: {
    p: { schedule: { every: "5m" }, async handler(ctx) { await ctx.peek("t"); } },
  },
  consumers: {
    c: Keep.consumer({
      subscribe: ["t"],
      async prepare(ctx) { return { reservations: [] }; },
      async mutate(ctx, prepared) { await ctx.shop.insert({ table: "invoices" }); },
      async next(ctx, prepared, mutation) {
        if (mutation.status === "done") await ctx.api.get({ url: "/" });
      },
    }),
  },
});
"""


def _tsc() -> str | None:
    return os.environ.get("KEEPFLOW_TSC") or shutil.which("tsc")


def _typecheck(directory: Path, tsc: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tsc, "-p", str(directory)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.skipif(_tsc() is None and not IN_CI,
                    reason="no TypeScript compiler (set KEEPFLOW_TSC or put tsc on PATH, e.g. "
                    "`apt install node-typescript`; .ci/run installs it)")
def test_examples_typecheck_against_keepflow_dts(tmp_path: Path) -> None:
    from importlib import resources

    tsc = _tsc()
    assert tsc is not None
    dts = resources.files("keepflow").joinpath("keepflow.d.ts").read_text(encoding="utf-8")
    (tmp_path / "keepflow.d.ts").write_text(dts, encoding="utf-8")
    members = "".join(f"  {n}: {t};\n" for n, t in CONNECTION_TYPES.items())
    (tmp_path / "connections.d.ts").write_text(
        f"interface KeepflowConnections {{\n{members}}}\n", encoding="utf-8")
    for example in guide.examples():
        (tmp_path / f"{example.name}.js").write_text(example.source, encoding="utf-8")
    # The jsconfig the guide recommends (docs/writing-workflows.md#types-for-your-editor).
    [config] = [b.source for b in guide.blocks() if b.lang == "json" and "checkJs" in b.source]
    (tmp_path / "tsconfig.json").write_text(config, encoding="utf-8")
    done = _typecheck(tmp_path, tsc)
    assert done.returncode == 0, done.stdout + done.stderr

    (tmp_path / "mistakes.js").write_text(MISTAKES, encoding="utf-8")
    done = _typecheck(tmp_path, tsc)
    found = re.findall(r"mistakes\.js\((\d+),\d+\): error (TS\d+)", done.stdout)
    # TypeScript before 5.0 reports an unknown property of an object literal as TS2322.
    errors = {(line, "TS2353" if (line, code) == ("6", "TS2322") else code)
              for line, code in found}
    assert done.returncode != 0
    assert errors == {
        ("6", "TS2353"),   # schedule: unknown key `every`
        ("6", "TS2349"),   # ctx.peek in a producer
        ("12", "TS2345"),  # sql insert without `key`
        ("14", "TS2367"),  # a mutation status that does not exist
        ("14", "TS2339"),  # a tool call in next
    }, done.stdout
