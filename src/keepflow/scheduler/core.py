"""The scheduler's decisions (SPEC §7), without threads or sleeps.

The core keeps one :class:`Slot` per workflow and a heap of due times (producer ticks, consumer
wake-ups). A driver (``loop.py`` in production, tests step it by hand with a fake clock) calls:

* :meth:`Scheduler.advance` with the current time: due ticks fire (or are skipped because the
  workflow is busy, and counted), sleeping consumers whose backoff expired become candidates;
* :meth:`Scheduler.take` to get runs to start: at most one per workflow, workflows served in
  FIFO order (fair: a busy workflow goes to the back after each run), and within a workflow
  manual consumer triggers, then ready consumers (oldest pending event first), then producers;
* :meth:`Scheduler.finished` when a run ends. A run that crashed inside the host (no outcome)
  holds its workflow back with exponential backoff, so one broken workflow never spins the
  host; manual triggers still go through.

Nothing polls: 10,000 idle workflows are 10,000 heap entries and no work until one is due.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from keepflow.errors import Conflict, KeepflowError, NotFound
from keepflow.model import RunKind, RunStatus, WorkflowRecord, WorkflowStatus
from keepflow.policies import backoff
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler import timing
from keepflow.store.schedule import HandlerFacts
from keepflow.store.store import Store
from keepflow.workflow import WorkflowManifest

Trigger = Literal["schedule", "event", "manual", "resume", "reconcile"]

#: Backoff after a run crashed inside the host: 1 s, 2 s, 4 s … at most 5 minutes.
CRASH_BACKOFF_SECONDS = 1.0
CRASH_BACKOFF_MAX_SECONDS = 300.0


def crash_backoff(crashes: int) -> float:
    """Seconds a workflow is held back after its ``crashes``-th crash in a row (pure)."""
    return backoff(CRASH_BACKOFF_SECONDS, 2.0, crashes, CRASH_BACKOFF_MAX_SECONDS)


@dataclass(frozen=True)
class RunRequest:
    workflow_id: str
    workflow_name: str
    handler: str
    kind: RunKind
    trigger: Trigger
    fired_at: datetime | None = None  # the tick a scheduled producer run belongs to
    run_id: str | None = None  # resume / reconcile an existing run instead of a new one


@dataclass
class Slot:
    """Everything the scheduler knows about one workflow."""

    id: str
    name: str
    status: WorkflowStatus
    manifest: WorkflowManifest | None
    generation: int = 0  # heap entries of an older generation are stale
    busy: RunRequest | None = None  # the run in progress, started by this scheduler
    blocked: str | None = None  # an unfinished run not ours (suspended): nothing else runs
    dirty: bool = True  # a consumer may be ready: check the store
    manual: dict[str, None] = field(default_factory=dict)  # queued triggers, coalesced
    due_producers: dict[str, datetime] = field(default_factory=dict)
    #: An unfinished, not suspended run to carry on (e.g. after a person's answer).
    resume: tuple[str, str] | None = None
    #: Suspended runs whose background reconciliation is due (SPEC §6 step 5): run → handler.
    reconcile_due: dict[str, str] = field(default_factory=dict)
    queued: bool = False
    #: Runs in a row that crashed inside the host, and until when the workflow is held back.
    crashes: int = 0
    held_until: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status is WorkflowStatus.ACTIVE

    def has_work(self) -> bool:
        if self.held_until is not None:
            return bool(self.manual)
        return (bool(self.manual) or self.resume is not None or bool(self.reconcile_due)
                or (self.active and (self.dirty or bool(self.due_producers))))


@dataclass
class Counters:
    started: int = 0
    finished: int = 0
    skipped_ticks: int = 0


class Scheduler:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now
        self.slots: dict[str, Slot] = {}
        self._heap: list[tuple[datetime, int, str, int, str, str]] = []
        self._seq = itertools.count()
        self._runnable: deque[str] = deque()
        self.counters = Counters()
        #: Observers of scheduling decisions (structured logs, tests): (event, fields).
        self.listeners: list[Callable[[str, dict[str, object]], None]] = []

    # ------------------------------------------------------------------ loading

    def load(self, workflow_ids: set[str] | None = None) -> None:
        """(Re)read workflows from the store; ``None`` means all (start-up). A handful of
        queries whatever the number of workflows."""
        records = [w for w in self.store.list_workflows()
                   if workflow_ids is None or w.id in workflow_ids]
        if not records:
            return
        ids = None if workflow_ids is None else [w.id for w in records]
        manifests, unfinished = self.store.scheduling_snapshot(ids)
        facts = self.store.handler_facts() if workflow_ids is None or len(records) > 1 \
            else self.store.handler_facts(records[0].id)
        for wf in records:
            raw = manifests.get(wf.id)
            manifest = WorkflowManifest.from_dict(raw) if raw is not None else None
            self._load_one(wf, manifest, unfinished.get(wf.id), facts)
        wanted = {w.id for w in records}
        for wid, run_id, handler, due in self.store.pending_reconciles(
                records[0].id if len(records) == 1 else None):
            if wid in wanted:
                self._push(due or self.now(), self.slots[wid], "reconcile", f"{run_id}:{handler}")

    def forget(self, workflow_id: str) -> None:
        self.slots.pop(workflow_id, None)

    def _load_one(self, wf: WorkflowRecord, manifest: WorkflowManifest | None,
                  unfinished: tuple[str, str, str] | None,
                  facts: Mapping[tuple[str, str], HandlerFacts]) -> None:
        old = self.slots.get(wf.id)
        slot = Slot(wf.id, wf.name, wf.status, manifest,
                    generation=(old.generation + 1) if old else 0)
        if old is not None:
            slot.busy, slot.manual, slot.due_producers = old.busy, old.manual, old.due_producers
            slot.crashes, slot.held_until = old.crashes, old.held_until
        self.slots[wf.id] = slot
        if slot.held_until is not None:
            self._push(slot.held_until, slot, "retry", "")
        if slot.busy is None:
            self._set_unfinished(slot, unfinished)
        now = self.now()
        if manifest is not None:
            for name, producer in manifest.producers.items():
                if producer.schedule is None:
                    continue
                fact = facts.get((wf.id, name))
                last = fact.last_fired_at if fact else None
                self._push(timing.first_due(producer.schedule, last, now), slot, "tick", name)
            for name in manifest.consumers:
                fact = facts.get((wf.id, name))
                until = fact.sleep_until if fact else None
                if until is not None and until > now:
                    self._push(until, slot, "wake", name)
        self._enqueue(slot)

    def _refresh_block(self, slot: Slot) -> None:
        if slot.busy is not None:
            return  # the unfinished run in the store is ours
        active = self.store.active_runs(slot.id)
        self._set_unfinished(slot, active[0] if active else None)
        for _, run_id, handler, due in self.store.pending_reconciles(slot.id):
            self._push(due or self.now(), slot, "reconcile", f"{run_id}:{handler}")

    @staticmethod
    def _set_unfinished(slot: Slot, unfinished: tuple[str, str, str] | None) -> None:
        """A suspended run blocks its workflow (SPEC §15 scenario 15); any other unfinished
        run was moved on by a person's answer and is carried on next."""
        slot.blocked, slot.resume = None, None
        if unfinished is None:
            return
        run_id, handler, status = unfinished
        if status == "suspended":
            slot.blocked = f"run {run_id} ({handler}) is {status}"
        else:
            slot.resume = (run_id, handler)

    # ------------------------------------------------------------------ time

    def _push(self, due: datetime, slot: Slot, kind: str, handler: str) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), slot.id, slot.generation, kind,
                                    handler))

    def next_due(self) -> datetime | None:
        while self._heap:
            due, _, wid, gen, _, _ = self._heap[0]
            slot = self.slots.get(wid)
            if slot is None or slot.generation != gen:
                heapq.heappop(self._heap)  # stale: the workflow was reloaded or removed
                continue
            return due
        return None

    def advance(self, now: datetime) -> None:
        """Fire everything due at ``now``."""
        while (due := self.next_due()) is not None and due <= now:
            _, _, wid, _, kind, handler = heapq.heappop(self._heap)
            slot = self.slots[wid]
            if kind == "tick":
                self._tick(slot, handler, due, now)
            elif kind == "reconcile":
                run_id, _, consumer = handler.partition(":")
                slot.reconcile_due[run_id] = consumer
                self._enqueue(slot)
            elif kind == "retry":  # the backoff after a crash is over
                slot.held_until = None
                slot.dirty = True
                self._enqueue(slot)
            else:  # a sleeping consumer's backoff timeout (SPEC §7.3)
                slot.dirty = True
                self.store.record_wake(slot.id, handler, "backoff timeout")
                self._emit("consumer.woken", slot, handler=handler, reason="backoff timeout")
                self._enqueue(slot)

    def _tick(self, slot: Slot, handler: str, due: datetime, now: datetime) -> None:
        assert slot.manifest is not None
        schedule = slot.manifest.producers[handler].schedule
        assert schedule is not None
        self._push(timing.following(schedule, due, now), slot, "tick", handler)
        if not slot.active:
            return  # SPEC §7.1: paused / needs-action / disabled workflows run nothing
        if slot.busy is not None or slot.blocked is not None:
            # SPEC §7.1: a tick that finds the workflow busy is skipped, counted, visible.
            self.counters.skipped_ticks += 1
            self.store.record_skipped_tick(slot.id, handler, due)
            self._emit("tick.skipped", slot, handler=handler,
                       because=slot.blocked or f"{slot.busy.handler if slot.busy else ''} "
                                              "is running")
            return
        slot.due_producers.setdefault(handler, due)
        self._enqueue(slot)

    # ------------------------------------------------------------------ wake-ups

    def notify(self, workflow_id: str) -> None:
        """Something happened that may make a consumer ready (a publish, a deploy)."""
        slot = self.slots.get(workflow_id)
        if slot is not None:
            slot.dirty = True
            self._enqueue(slot)

    def trigger(self, workflow_id: str, handler: str) -> None:
        """A manual run (SPEC §7.1): queued while busy, coalesced, works when paused (not when
        disabled, nor while another run is unfinished)."""
        slot = self.slots.get(workflow_id)
        if slot is None or slot.manifest is None:
            raise NotFound(f"workflow {workflow_id} has no deployed version")
        m = slot.manifest
        if handler not in m.producers and handler not in m.consumers:
            known = ", ".join(sorted([*m.producers, *m.consumers]))
            raise NotFound(f"workflow '{slot.name}' has no handler '{handler}' "
                           f"(handlers: {known})")
        if slot.status is WorkflowStatus.DISABLED:
            raise Conflict(f"workflow '{slot.name}' is disabled; resume it first")
        if slot.blocked is not None:
            raise Conflict(f"workflow '{slot.name}' has an unfinished {slot.blocked}; nothing "
                           "else of it runs until that run is resolved")
        slot.manual.setdefault(handler, None)
        self._emit("trigger.queued", slot, handler=handler)
        self._enqueue(slot)

    def _enqueue(self, slot: Slot) -> None:
        if not slot.queued and slot.busy is None and slot.has_work():
            slot.queued = True
            self._runnable.append(slot.id)

    # ------------------------------------------------------------------ dispatch

    def take(self, limit: int) -> list[RunRequest]:
        """Runs to start now: at most ``limit``, one per workflow, FIFO across workflows."""
        out: list[RunRequest] = []
        rounds = len(self._runnable)
        while self._runnable and len(out) < limit and rounds > 0:
            rounds -= 1
            slot = self.slots.get(self._runnable.popleft())
            if slot is None:
                continue
            slot.queued = False
            if slot.busy is not None:
                continue
            request = self._decide(slot)
            if request is None:
                continue
            slot.busy = request
            self.counters.started += 1
            self._emit("run.start", slot, handler=request.handler, trigger=request.trigger)
            out.append(request)
        return out

    def _decide(self, slot: Slot) -> RunRequest | None:
        if slot.held_until is not None:  # after a crash only a person's trigger runs
            return self._decide_manual(slot)
        if slot.resume is not None:
            run_id, handler = slot.resume
            slot.resume = None
            return RunRequest(slot.id, slot.name, handler, RunKind.CONSUMER, "resume",
                              run_id=run_id)
        if slot.reconcile_due:
            run_id, handler = next(iter(slot.reconcile_due.items()))
            del slot.reconcile_due[run_id]
            return RunRequest(slot.id, slot.name, handler, RunKind.CONSUMER, "reconcile",
                              run_id=run_id)
        if slot.blocked is not None or slot.manifest is None:
            return None  # SPEC §15 scenario 15: nothing else runs while a run is unfinished
        m = slot.manifest
        for handler in list(slot.manual):
            if handler in m.consumers:
                del slot.manual[handler]
                self.store.record_wake(slot.id, handler, "manual trigger")
                return self._request(slot, handler, RunKind.CONSUMER, "manual")
        if slot.active and slot.dirty:
            consumers = {n: c.subscribe for n, c in m.consumers.items()}
            ready = self.store.ready_consumers(slot.id, consumers, self.now())
            if ready:
                return self._request(slot, ready[0][1], RunKind.CONSUMER, "event")
            slot.dirty = False
        for handler in list(slot.manual):
            del slot.manual[handler]
            if handler in m.producers:
                return self._request(slot, handler, RunKind.PRODUCER, "manual")
        if slot.active and slot.due_producers:
            handler, fired = min(slot.due_producers.items(), key=lambda kv: kv[1])
            del slot.due_producers[handler]
            self.store.record_fire(slot.id, handler, fired)
            return self._request(slot, handler, RunKind.PRODUCER, "schedule", fired)
        return None

    def _decide_manual(self, slot: Slot) -> RunRequest | None:
        m = slot.manifest
        if m is None or slot.blocked is not None or not slot.manual:
            return None
        handler = next(iter(slot.manual))
        del slot.manual[handler]
        kind = RunKind.CONSUMER if handler in m.consumers else RunKind.PRODUCER
        return self._request(slot, handler, kind, "manual")

    def _request(self, slot: Slot, handler: str, kind: RunKind, trigger: Trigger,
                 fired: datetime | None = None) -> RunRequest:
        return RunRequest(slot.id, slot.name, handler, kind, trigger, fired)

    def finished(self, request: RunRequest, outcome: RunOutcome | None) -> None:
        """A run ended (``outcome`` is None when it crashed inside the host)."""
        self.counters.finished += 1
        slot = self.slots.get(request.workflow_id)
        if slot is None:
            return
        slot.busy = None
        slot.dirty = True  # a commit may have published to a subscribed topic
        if outcome is None:
            slot.crashes += 1
            slot.held_until = self.now() + timedelta(seconds=crash_backoff(slot.crashes))
            self._push(slot.held_until, slot, "retry", "")
            self._emit("workflow.held", slot, handler=request.handler,
                       until=slot.held_until.isoformat(), crashes=slot.crashes)
        else:
            slot.crashes = 0
        if outcome is None or outcome.status is not RunStatus.COMMITTED:
            # The run failed or was suspended: the workflow's status may have changed.
            try:
                slot.status = self.store.get_workflow(slot.id).status
                self._refresh_block(slot)
            except KeepflowError as exc:  # the store is unavailable: keep what we know
                self._emit("store.unavailable", slot, error=exc.message)
        elif request.kind is RunKind.CONSUMER:
            facts = self.store.handler_facts(slot.id).get((slot.id, request.handler))
            if facts and facts.sleep_until and facts.sleep_until > self.now():
                self._push(facts.sleep_until, slot, "wake", request.handler)
                self._emit("consumer.sleeping", slot, handler=request.handler,
                           until=facts.sleep_until.isoformat())
        self._emit("run.end", slot, handler=request.handler,
                   status=outcome.status.value if outcome else "error",
                   run=outcome.run_id if outcome else None)
        self._enqueue(slot)

    # ------------------------------------------------------------------ observing

    def idle(self) -> bool:
        return not self._runnable and all(s.busy is None for s in self.slots.values())

    def running(self) -> int:
        return sum(1 for s in self.slots.values() if s.busy is not None)

    def _emit(self, event: str, slot: Slot, **fields: object) -> None:
        for listener in self.listeners:
            listener(event, {"workflow": slot.name, **fields})
