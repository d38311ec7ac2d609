"""The corpus of hostile scripts (docs/security.md#how-the-guarantees-are-tested).

Every ``corpus/*.js`` file is a workflow written to attack keepflow, with its expected outcome
in a leading ``/* keepflow-attack {json} */`` block:

* ``attack``: what it tries, in words;
* ``deploy``: ``"ok"``, ``"refused"`` (then ``finding``: text the refusal must contain), or
  ``"unchecked"``: the static checks would refuse it, so the case deploys it past them (the
  load-time rules still apply) to prove the runtime holds on its own when a check is evaded;
* ``trigger``: handlers run by hand, in order (consumers also run through ``drain``);
* ``run``: the expected last run of ``run.handler`` — ``status``, and for a failure its
  ``class``, ``code`` and texts the ``message`` must contain; ``logs``: texts some log line
  must contain; ``no_logs``: texts no log line may contain;
* ``sent``: how many requests reached the external system (the loopback sink's own record);
* ``ledger``: the ledger statuses of that run's mutation attempts;
* ``events``: how many events the workflow holds afterwards;
* ``policy``: limits for this workflow (e.g. a small storage quota);
* ``never_stored``: texts that must appear nowhere in what the store shows (a secret row).

Connections: ``api`` (the loopback sink, its base_url), the default ``http`` (no base_url:
public addresses only), ``db`` (a SQLite database with a ``rows`` table) and ``shop`` (a
SQLite database whose ``tables`` allow-list names ``orders`` but not ``secrets``). In a
script, ``__SINK_URL__`` and ``__SINK_PORT__`` stand for the sink's address.

Each case runs on SQLite and PostgreSQL next to a healthy *canary* workflow, and checks the
external system's record, the store (everything readable, the failure explained), and that the
canary still ran — one hostile workflow never stops another.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.errors import ScriptInvalid
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.manifest_rules import check_manifest
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.workflow import build_manifest
from tests.support.sink import Sink
from tests.support.workflows import deploy_source, quick_policy

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).parent / "corpus"
SECRET_ROW = "TOPSECRET-4242"
_BLOCK = re.compile(r"/\*\s*keepflow-attack\s*(\{.*?\})\s*\*/", re.DOTALL)

CANARY = """
export default Keep.workflow({
  name: "canary",
  topics: { "pings": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("pings", { messageId: "p1", title: "Ping 1", payload: { n: 1 } });
      return { runs: (state?.runs ?? 0) + 1 };
    },
  },
  consumers: {
    deliver: Keep.consumer({
      subscribe: ["pings"],
      async prepare(ctx) {
        const [e] = await ctx.peek("pings", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "pings", ids: [e.messageId] }],
                 data: { id: e.messageId } };
      },
      async mutate(ctx, prepared) {
        await ctx.api.post({ url: "/canary", json: { id: prepared.data.id } });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


@dataclass(frozen=True)
class Case:
    path: Path
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.js")):
        m = _BLOCK.search(path.read_text(encoding="utf-8"))
        assert m, f"{path.name} has no /* keepflow-attack {{...}} */ block"
        cases.append(Case(path, json.loads(m.group(1))))
    return cases


CASES = load_cases()


@pytest.fixture
def corpus_host(request: pytest.FixtureRequest, store_url: str, tmp_path: Path,
                pool: SandboxPool, sink: Sink, target_db: str) -> Iterator[Host]:
    case: Case = request.param
    shop = tmp_path / "shop.db"
    with sqlite3.connect(shop) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        db.execute("INSERT INTO orders VALUES (1, 'book')")
        db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, token TEXT)")
        db.execute(f"INSERT INTO secrets VALUES (1, '{SECRET_ROW}')")
    connections = Connections([
        ConnectionConfig("http", "http", {}),
        ConnectionConfig("api", "http", {"base_url": sink.url}),
        ConnectionConfig("db", "sql", {"url": target_db}),
        ConnectionConfig("shop", "sql", {"url": f"sqlite:///{shop}", "tables": ["orders"]}),
    ])
    overrides = {"attack": case.spec["policy"]} if "policy" in case.spec else {}
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=FakeClock(),
             connections=connections, pool=pool,
             policies=PolicyBook(quick_policy(), overrides))
    yield h
    h.close()
    connections.close()


def _texts(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


@pytest.mark.parametrize("corpus_host", CASES, ids=[c.name for c in CASES], indirect=True)
def test_hostile_script(corpus_host: Host, tmp_path: Path, sink: Sink,
                        request: pytest.FixtureRequest) -> None:
    host = corpus_host
    case: Case = request.node.callspec.params["corpus_host"]
    spec = case.spec
    deploy_source(host, tmp_path, CANARY, name="canary.js")
    service.trigger(host, "canary", "seed")
    port = sink.url.rsplit(":", 1)[1]
    source = case.path.read_text(encoding="utf-8").replace("__SINK_URL__", sink.url) \
        .replace("__SINK_PORT__", port)

    mode = spec.get("deploy", "ok")
    if mode == "unchecked":
        _deploy_unchecked(host, source)
    if mode == "refused":
        with pytest.raises(ScriptInvalid) as info:
            deploy_source(host, tmp_path, source, name="attack.js")
        shown = info.value.message + " " + " ".join(f.message for f in info.value.findings)
        for text in _texts(spec.get("finding")):
            assert text in shown, shown
        assert host.store.find_workflow("attack") is None  # nothing was deployed
    else:
        if mode == "ok":
            deploy_source(host, tmp_path, source, name="attack.js")
        for handler in spec.get("trigger", []):
            service.trigger(host, "attack", handler)
        service.drain(host)
        _check_run(host, spec)

    # The external system's own record: only what the case expects reached it.
    attack_requests = [r for r in sink.requests if r[1] != "/canary"]
    assert len(attack_requests) == spec.get("sent", 0), attack_requests
    # The canary ran to the end next to the attack.
    service.drain(host)
    [canary_run] = [r for r in service.list_runs(host, "canary") if r["handler"] == "deliver"]
    assert canary_run["status"] == "committed", canary_run
    assert [p for _, p, _ in sink.requests].count("/canary") == 1
    # Everything in the store is readable and storable text (no crash in any surface).
    shown = _readable(host)
    for text in _texts(spec.get("never_stored")):
        assert text not in shown


def _deploy_unchecked(host: Host, source: str) -> None:
    """Deploy without the static stage (SPEC §11.3 stage 2): what a script that evades the
    static checks gets. The engine's manifest and the load-time rules still apply."""
    raw = host.pool.describe(source)
    assert not [f for f in check_manifest(raw, source) if f.severity == "error"]
    wf = host.store.create_workflow("attack", "test")
    host.store.add_version(wf.id, source=source, source_sha256=sha256(source.encode()).hexdigest(),
                           manifest=build_manifest(raw).to_dict(), findings=[],
                           created_by="test")


def _check_run(host: Host, spec: dict[str, Any]) -> None:
    expected = spec.get("run")
    runs = service.list_runs(host, "attack")
    if expected is not None:
        mine = [r for r in runs if r["handler"] == expected["handler"]]
        assert mine, f"no run of {expected['handler']}: {runs}"
        run = service.show_run(host, mine[0]["id"])  # newest first
        assert run["status"] == expected["status"], run
        failure = run["failure"] or {}
        for key in ("class", "code"):
            if key in expected:
                assert failure.get(key) == expected[key], failure
        for text in _texts(expected.get("message")):
            assert text in (failure.get("message") or ""), failure
        lines = [lg["message"] for lg in run["logs"]]
        for text in _texts(expected.get("logs")):
            assert any(text in line for line in lines), lines
        for text in _texts(expected.get("no_logs")):
            assert not any(text in line for line in lines), lines
        if "ledger" in spec:
            assert [m["status"] for m in run["mutations"]] == spec["ledger"], run["mutations"]
    if "events" in spec:
        assert len(service.list_events(host, "attack")) == spec["events"]


def _readable(host: Host) -> str:
    """Every surface's view of the store, as one text (each must encode as UTF-8)."""
    parts = []
    for wf in ("canary", "attack"):
        if host.store.find_workflow(wf) is None:
            continue
        for r in service.list_runs(host, wf):
            parts.append(_utf8(service.show_run(host, r["id"])))
        for e in service.list_events(host, wf):
            parts.append(_utf8(service.show_event(host, wf, e["topic"], e["messageId"])))
    parts += [_utf8(service.status(host)), _utf8(service.inbox(host)),
              _utf8(service.list_workflows(host))]
    return "\n".join(parts)


def _utf8(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str)
    text.encode("utf-8")  # raises if something unstorable reached the store
    return text
