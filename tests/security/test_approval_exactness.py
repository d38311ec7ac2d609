"""What a person approved is exactly what is sent (docs/security.md#approvals).

Approval compares the declaration with what was shown as canonical JSON with types: Python's
``==`` says ``1 == True`` and ``0 == False``, so a script whose mutate declared
``{amount: 1, notify: 0}`` when the person looked, and ``{amount: true, notify: false}`` when
it ran again after the approval, must not get the second one sent on the strength of the first.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from keepflow import service
from keepflow.model import RunStatus
from keepflow.policies import ApprovalPolicy, PolicyBook
from keepflow.runtime.host import Host
from keepflow.runtime.ledger import DeclaredMutation, approved
from tests.support.sink import Sink
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

# mutate reads a row of the user's database by id and declares its POST from it; between the
# person's look and the approval the row changes.
MUTATE = """
const row = (await ctx.db.get({ table: "rows", key: { k: "mode" } })).row;
const body = JSON.parse(row.v);
await ctx.api.post({ url: "/orders", json: body });"""


def _set_mode(target_db: str, body: str) -> None:
    with sqlite3.connect(target_db.split("///", 1)[1]) as db:
        db.execute("INSERT OR REPLACE INTO rows (k, v) VALUES ('mode', ?)", (body,))


@pytest.fixture
def approving(host: Host) -> Host:
    host.policies = PolicyBook(quick_policy().model_copy(
        update={"approvals": ApprovalPolicy(require=("api.post",))}))
    return host


@pytest.mark.parametrize(("shown", "sent"), [
    ('{"amount": 1, "notify": 0}', '{"amount": true, "notify": false}'),
    ('{"amount": 1}', '{"amount": 1.5}'),
    ('{"amount": 1}', '{"amount": "1"}'),
    ('{"to": ["a"]}', '{"to": "a"}'),
    ('{"amount": 1}', '{"amount": 1, "extra": null}'),
    ('{"amount": null}', '{}'),
], ids=["int-vs-bool", "int-vs-float", "int-vs-string", "list-vs-scalar", "extra-null-key",
        "null-vs-missing"])
def test_a_different_declaration_is_never_sent_on_an_earlier_approval(
        approving: Host, tmp_path: Path, sink: Sink, target_db: str, shown: str, sent: str
) -> None:
    host = approving
    _set_mode(target_db, shown)
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                              consumers=consumer_js(mutate=MUTATE)))
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    assert run_detail(host, out.run_id)["approval"]["mutation"]["params"]["json"] == \
        json.loads(shown)

    _set_mode(target_db, sent)  # the world changed after the person looked
    again = service.approve(host, out.run_id, True, actor="ivy")

    assert sink.requests == []  # nothing reached the external system
    assert again is not None
    assert again.status is RunStatus.SUSPENDED  # a new approval request, for what is new
    detail = run_detail(host, out.run_id)
    assert detail["suspendReason"] == "awaiting_approval"
    assert detail["approval"]["status"] == "pending"
    assert detail["approval"]["mutation"]["params"]["json"] == json.loads(sent)
    assert detail["mutations"] == []

    done = service.approve(host, out.run_id, True, actor="ivy")  # approving what is shown now
    assert done is not None
    assert done.status is RunStatus.COMMITTED
    assert sink.applied_bodies() == [json.loads(sent)]


def test_the_same_declaration_is_sent_once_approved(
        approving: Host, tmp_path: Path, sink: Sink, target_db: str) -> None:
    host = approving
    _set_mode(target_db, '{"amount": 1, "notify": false, "tags": ["x", 2]}')
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                              consumers=consumer_js(mutate=MUTATE)))
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    done = service.approve(host, out.run_id, True, actor="ivy")
    assert done is not None
    assert done.status is RunStatus.COMMITTED
    assert sink.applied_bodies() == [{"amount": 1, "notify": False, "tags": ["x", 2]}]


@pytest.mark.parametrize(("shown", "declared", "same"), [
    ({"a": 1}, {"a": True}, False),
    ({"a": 0}, {"a": False}, False),
    ({"a": 1}, {"a": 1.0}, False),  # the sandbox never sends 1.0 for 1; anything else differs
    ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}, True),
    ({"b": 1, "a": 2}, {"a": 2, "b": 1}, True),  # key order is not meaning
    ({"a": "é"}, {"a": "e\u0301"}, False),  # no Unicode normalisation: bytes are what is sent
])
def test_approval_comparison_is_canonical_json_with_types(shown: dict, declared: dict,
                                                          same: bool) -> None:
    approval = {"status": "approved",
                "mutation": {"connection": "api", "tool": "post", "params": shown}}
    assert approved(approval, DeclaredMutation("api", "post", declared)) is same
    assert approved(approval, DeclaredMutation("api", "put", shown)) is False
    assert approved(approval, DeclaredMutation("other", "post", shown)) is False
