"""A run at its mutation, against an in-memory store, with a scripted connector: enough of the
host for the ledger procedure (``runtime/ledger.py``) and a person's answers
(``runtime/actions.py``) to be exercised without a sandbox, a worker process or a network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keepflow.clock import FakeClock
from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.config import Connections
from keepflow.connectors.limits import Throttle
from keepflow.model import (
    EventClaim,
    EventDraft,
    LedgerStatus,
    Reservation,
    RunKind,
    RunStatus,
)
from keepflow.policies import Policy, PolicyBook
from keepflow.runtime.bridge import DeclaredMutation, RunBuffers, RunScope
from keepflow.runtime.ledger import MutationOutcome, perform
from keepflow.store.convert import sha256_json
from keepflow.store.store import Store
from tests.support import runs

S = RunStatus


class Scripted(Connector):
    """One mutating tool, ``post``: its call returns ``does`` (or raises it, an exception);
    each reconcile pops the next of ``answers`` (an exception is raised)."""

    type_name = "scripted"
    tools = {"post": ToolSpec("post", ToolKind.MUTATE, "http.write", RiskTier.MEDIUM,
                              "post something", reconcile=True,
                              reconcile_strategy="the scripted answers")}

    def __init__(self, does: Any = None, answers: list[Any] | None = None, *,
                 reconcilable: bool = True) -> None:
        super().__init__(ConnectionConfig("api", "scripted"))
        self.does = does
        self.answers = list(answers or [])
        self.reconcilable = reconcilable
        self.calls: list[ToolCall] = []
        self.asked: list[ToolCall] = []
        #: Seen during the call: the ledger as the store holds it (in_flight must be durable).
        self.ledger_during_call: list[LedgerStatus] = []
        self.on_call: Callable[[], list[LedgerStatus]] | None = None

    def can_reconcile(self, call: ToolCall) -> bool:
        return self.reconcilable

    def describe(self, call: ToolCall) -> str:
        return f"POST https://api.example/{call.params.get('n')}"

    def call(self, call: ToolCall) -> Any:
        self.calls.append(call)
        if self.on_call is not None:
            self.ledger_during_call = self.on_call()
        if isinstance(self.does, BaseException):
            raise self.does
        return self.does

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        self.asked.append(call)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, ReconcileResult)
        return answer


def answer(outcome: ReconcileOutcome, result: Any = None, detail: str = "") -> ReconcileResult:
    return ReconcileResult(outcome, result, detail)


class OneConnection(Connections):
    def __init__(self, connector: Connector) -> None:
        super().__init__(())
        self.connector = connector

    def names(self) -> list[str]:
        return [self.connector.name]

    def get(self, name: str) -> Connector:
        assert name == self.connector.name
        return self.connector

    def throttle(self, name: str) -> Throttle:
        assert name == self.connector.name
        return self._throttles.get(name, self.connector.default_limits)


@dataclass
class World:
    store: Store
    clock: FakeClock
    workflow_id: str
    version_id: str
    policy: Policy = field(default_factory=Policy)

    def scope(self, connector: Connector, handler: str = "h") -> RunScope:
        run = runs.draft(self.workflow_id, self.version_id, self.clock.now(), S.MUTATING,
                         kind=RunKind.CONSUMER, handler=handler,
                         prepared={"reservations": [{"topic": "items", "ids": ["a"]}],
                                   "data": {}})
        connector_policy = self.policy
        return RunScope(
            run=run, version=self.store.get_version(self.version_id), fence=None,
            store=self.store, connections=OneConnection(connector), policy=connector_policy,
            policies=PolicyBook(connector_policy), workflow_name="wf", clock=self.clock,
            declared_topics=frozenset({"items"}), subscribed=frozenset({"items"}),
            buffers=RunBuffers(reserved_titles=["Item a"]))

    def perform(self, connector: Scripted, params: dict[str, Any] | None = None
                ) -> tuple[RunScope, MutationOutcome]:
        scope = self.scope(connector)
        connector.on_call = lambda: [m.status for m in self.store.mutations_of(scope.run.id)]
        out = perform(scope, DeclaredMutation("api", "post", params or {"n": 1}), 1, CLAIM)
        return scope, out


CLAIM = EventClaim((Reservation("items", ("a",)),), ("items",))


def world(store: Store, clock: FakeClock, policy: Policy | None = None) -> World:
    wf = store.create_workflow("wf", "test")
    v = store.add_version(wf.id, source="x", source_sha256="0" * 64, manifest={"format": 1},
                          findings=[], created_by="test")
    draft = EventDraft("items", "a", "Item a", 1, sha256_json(1))
    store.commit_producer_run(runs.draft(wf.id, v.id, clock.now(), S.COMMITTED), None,
                              [draft], None)
    return World(store, clock, wf.id, v.id, policy or Policy())


def everything(store: Store) -> dict[str, Any]:
    """All of the store a refused transition or answer could have touched."""
    out: dict[str, Any] = {}
    for w in store.list_workflows():
        out[w.id] = (w.status, w.status_reason,
                     [(s.run, s.transitions, s.mutations) for s in store.run_list(w.id)],
                     store.event_list(w.id), store.pending_reconciles(w.id))
    out["audit"] = store.audit_entries()
    return out
