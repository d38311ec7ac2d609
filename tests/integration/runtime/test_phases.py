"""Phase rules enforced at the ctx boundary (SPEC §4, §5, §15 scenario 13).

Static validation would reject most of these scripts at deploy, so each call is made through
a computed name the static checks cannot see: this tests the runtime enforcement itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.model import RunStatus
from tests.support.sink import Sink
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    events_of,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

# `c(ctx)` returns ctx through a helper so that static checks cannot see which handler calls what.
HELPER = "function c(x) { return x; }\n"
POST = 'await c(ctx).api.post({ url: "/orders", json: {} });'
PEEK = 'return { reservations: [], data: await c(ctx).peek("items", { limit: 1 }) };'

CASES = {
    "mutation in prepare": (
        "prepare", POST, "ctx.api.post (a mutation) is not allowed in prepare"),
    "publish in prepare": (
        "prepare", 'await c(ctx).publish("items", { title: "x" });',
        "ctx.publish is not allowed in prepare"),
    "list read in mutate": (
        "mutate", 'await c(ctx).api.get({ url: "/x" });',
        "ctx.api.get (a list/search read) is not allowed in mutate"),
    "peek in mutate": (
        "mutate", 'await c(ctx).peek("items", { limit: 1 });',
        "ctx.peek is not allowed in mutate"),
    "publish in mutate": (
        "mutate", 'await c(ctx).publish("items", { title: "x" });',
        "ctx.publish is not allowed in mutate"),
    "peek in next": (
        "next", 'await c(ctx).peek("items", { limit: 1 });', "ctx.peek is not allowed in next"),
    "tool call in next": (
        "next", 'await c(ctx).api.get({ url: "/x" });',
        "ctx.api.get (a list/search read) is not allowed in next"),
    "mutation in next": (
        "next", POST, "ctx.api.post (a mutation) is not allowed in next"),
    "second mutation": (
        "mutate", 'c(ctx).api.post({ url: "/a", json: {} }); '
                  'c(ctx).api.post({ url: "/b", json: {} });',
        "a second mutation"),
    "read after the terminal mutation": (
        "mutate", 'c(ctx).api.post({ url: "/a", json: {} }); c(ctx).db.get({ table: "rows", '
                  'key: { k: "a" } });',
        "after the terminal mutation"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_phase_violation_aborts_the_run_as_logic(host, tmp_path: Path, sink: Sink,
                                                 case: str) -> None:
    phase, code, needle = CASES[case]
    kwargs = {"prepare": None, "mutate": "", "next_": "return null;"}
    kwargs["next_" if phase == "next" else phase] = code
    src = HELPER + workflow_js(producers=seed_producer(["a"]),
                               consumers=consumer_js(**kwargs))  # type: ignore[arg-type]
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED, case
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert out.failure["phase"] == phase
    assert needle in out.failure["message"]
    assert sink.applied == []  # nothing external happened
    assert events_of(host)[0]["status"] == "pending"


@pytest.mark.parametrize(("code", "needle"), [
    (POST, "ctx.api.post (a mutation) is not allowed in producer"),
    ('await c(ctx).peek("items", { limit: 1 });', "ctx.peek is not allowed in producer"),
    ('await c(ctx).getByIds("items", ["a"]);', "ctx.getByIds is not allowed in producer"),
])
def test_producer_phase_violations(host, tmp_path: Path, sink: Sink, code: str, needle: str
                                   ) -> None:
    src = HELPER + workflow_js(producers=f"bad: async (ctx) => {{ {code} }},",
                               consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    out = service.trigger(host, "wf", "bad")
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert needle in out.failure["message"]
    assert sink.applied == []


def test_peek_of_an_unsubscribed_topic_is_refused(host, tmp_path: Path) -> None:
    src = HELPER + workflow_js(topics=("items", "other"), producers=seed_producer(["a"]),
                               consumers=consumer_js(
                                   prepare='await c(ctx).peek("other", { limit: 1 });')
                               + consumer_js("o", topic="other"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.failure is not None
    assert "does not subscribe" in out.failure["message"]


def test_by_id_read_allowed_in_mutate(host, tmp_path: Path) -> None:
    src = workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        mutate='const r = await ctx.db.get({ table: "rows", key: { k: "zz" } });',
        next_="return null;"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    assert service.trigger(host, "wf", "work").status is RunStatus.COMMITTED
