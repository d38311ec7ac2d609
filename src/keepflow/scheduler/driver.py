"""The scheduler's driver: the store's facts in, the pure decisions of ``core`` applied.

:class:`Scheduler` keeps one :class:`~keepflow.scheduler.core.Slot` per workflow, a heap of due
times (producer ticks, consumer wake-ups, ends of crash backoffs, background reconciliations)
and a FIFO of runnable workflows. Every decision is a function of ``core``; this class gathers
what they need from the store, calls them, and performs what they decide — the store writes
(fire times, skipped ticks, wake-ups), the bookkeeping and the structured events. A loop
(``loop.py`` in production, ``inline.py`` in tests, with a fake clock) calls:

* :meth:`Scheduler.advance` with the current time: due ticks fire (or are skipped because the
  workflow is busy, and counted), sleeping consumers whose backoff expired become candidates;
* :meth:`Scheduler.take` to get runs to start: at most one per workflow, workflows served in
  FIFO order (fair: a busy workflow goes to the back after each run);
* :meth:`Scheduler.finished` when a run ends.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from datetime import datetime

from keepflow.errors import KeepflowError
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler import core
from keepflow.scheduler.core import Counters, Due, RunRequest, Slot
from keepflow.store.store import Store
from keepflow.workflow import WorkflowManifest


class Scheduler:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now
        self.slots: dict[str, Slot] = {}
        self._heap: list[tuple[datetime, int, str, int, Due]] = []
        self._seq = itertools.count()
        self._runnable: deque[str] = deque()
        self.counters = Counters()
        #: Observers of scheduling decisions (structured logs, tests): (event, fields).
        self.listeners: list[Callable[[str, dict[str, object]], None]] = []
        #: workflow id → when its run in progress was taken (``run.end`` reports the duration).
        self._started: dict[str, datetime] = {}

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
            slot, dues = core.load_slot(wf, manifest, unfinished.get(wf.id), facts,
                                        self.slots.get(wf.id), self.now())
            self.slots[wf.id] = slot
            for due in dues:
                self._push(slot, due)
            self._enqueue(slot)
        pending = self.store.pending_reconciles(records[0].id if len(records) == 1 else None)
        for wid, due in core.reconcile_dues(pending, (w.id for w in records), self.now()):
            self._push(self.slots[wid], due)

    def forget(self, workflow_id: str) -> None:
        self.slots.pop(workflow_id, None)

    def _refresh_block(self, slot: Slot) -> None:
        if slot.busy is not None:
            return  # the unfinished run in the store is ours
        active = self.store.active_runs(slot.id)
        slot.blocked, slot.resume = core.unfinished_block(active[0] if active else None)
        pending = self.store.pending_reconciles(slot.id)
        for _, due in core.reconcile_dues(pending, (slot.id,), self.now()):
            self._push(slot, due)

    # ------------------------------------------------------------------ time

    def _push(self, slot: Slot, due: Due) -> None:
        heapq.heappush(self._heap, (due.at, next(self._seq), slot.id, slot.generation, due))

    def next_due(self) -> datetime | None:
        while self._heap:
            at, _, wid, gen, _ = self._heap[0]
            slot = self.slots.get(wid)
            if slot is None or slot.generation != gen:
                heapq.heappop(self._heap)  # stale: the workflow was reloaded or removed
                continue
            return at
        return None

    def advance(self, now: datetime) -> None:
        """Fire everything due at ``now``."""
        while (at := self.next_due()) is not None and at <= now:
            _, _, wid, _, due = heapq.heappop(self._heap)
            slot = self.slots[wid]
            if due.kind == "tick":
                self._tick(slot, due.handler, at, now)
            elif due.kind == "reconcile":
                assert due.run_id is not None
                slot.reconcile_due[due.run_id] = due.handler
                self._enqueue(slot)
            elif due.kind == "retry":  # the backoff after a crash is over
                slot.held_until = None
                slot.dirty = True
                self._enqueue(slot)
            else:  # a sleeping consumer's backoff timeout (SPEC §7.3)
                slot.dirty = True
                self.store.record_wake(slot.id, due.handler, "backoff timeout")
                self._emit("consumer.woken", slot, handler=due.handler,
                           reason="backoff timeout")
                self._enqueue(slot)

    def _tick(self, slot: Slot, handler: str, at: datetime, now: datetime) -> None:
        decision = core.decide_tick(slot, handler, at, now)
        self._push(slot, Due(decision.next_at, "tick", handler))
        if decision.action == "skip":
            self.counters.skipped_ticks += 1
            self.store.record_skipped_tick(slot.id, handler, at)
            self._emit("tick.skipped", slot, handler=handler, because=decision.because)
        elif decision.action == "due":
            slot.due_producers.setdefault(handler, at)
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
        core.check_trigger(slot, workflow_id, handler)
        assert slot is not None
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
            request = self._choose(slot)
            if request is None:
                continue
            slot.busy = request
            self._started[slot.id] = self.now()
            self.counters.started += 1
            self._emit("run.start", slot, handler=request.handler, trigger=request.trigger)
            out.append(request)
        return out

    def _choose(self, slot: Slot) -> RunRequest | None:
        """:func:`core.choose_run`, with the ready consumers looked up when it needs them;
        then the choice is taken off the slot and recorded."""
        choice = core.choose_run(slot)
        if choice.ask_ready:
            assert slot.manifest is not None
            consumers = {n: c.subscribe for n, c in slot.manifest.consumers.items()}
            ready = self.store.ready_consumers(slot.id, consumers, self.now())
            choice = core.choose_run(slot, [handler for _, handler in ready])
        if choice.no_consumer_ready:
            slot.dirty = False
        for handler in choice.dropped:
            slot.manual.pop(handler, None)
        request = choice.request
        if request is None:
            return None
        if request.trigger == "resume":
            slot.resume = None
        elif request.trigger == "reconcile":
            assert request.run_id is not None
            slot.reconcile_due.pop(request.run_id, None)
        elif request.trigger == "manual":
            slot.manual.pop(request.handler, None)
        elif request.trigger == "schedule":
            slot.due_producers.pop(request.handler, None)
        if choice.wake_reason is not None:
            self.store.record_wake(slot.id, request.handler, choice.wake_reason)
        if request.trigger == "schedule":
            assert request.fired_at is not None
            self.store.record_fire(slot.id, request.handler, request.fired_at)
        return request

    def finished(self, request: RunRequest, outcome: RunOutcome | None) -> None:
        """A run ended (``outcome`` is None when it crashed inside the host)."""
        self.counters.finished += 1
        started = self._started.pop(request.workflow_id, None)
        seconds = (max(0.0, (self.now() - started).total_seconds()) if started is not None
                   else 0.0)
        slot = self.slots.get(request.workflow_id)
        if slot is None:
            return
        end = core.after_run(slot, request, outcome, self.now())
        slot.busy = None
        slot.dirty = True  # a commit may have published to a subscribed topic
        slot.crashes = end.crashes
        if end.hold_until is not None:
            slot.held_until = end.hold_until
            self._push(slot, Due(end.hold_until, "retry"))
            self._emit("workflow.held", slot, handler=request.handler,
                       until=end.hold_until.isoformat(), crashes=slot.crashes)
        if end.refresh:
            # The run failed or was suspended: the workflow's status may have changed.
            try:
                slot.status = self.store.get_workflow(slot.id).status
                self._refresh_block(slot)
            except KeepflowError as exc:  # the store is unavailable: keep what we know
                self._emit("store.unavailable", slot, error=exc.message)
        elif end.check_sleep:
            facts = self.store.handler_facts(slot.id).get((slot.id, request.handler))
            until = core.sleeping_until(facts, self.now())
            if until is not None:
                self._push(slot, Due(until, "wake", request.handler))
                self._emit("consumer.sleeping", slot, handler=request.handler,
                           until=until.isoformat())
        self._emit("run.end", slot, handler=request.handler, status=end.status,
                   run=outcome.run_id if outcome else None, kind=request.kind.value,
                   duration=round(seconds, 6))
        self._enqueue(slot)

    # ------------------------------------------------------------------ observing

    def idle(self) -> bool:
        return not self._runnable and all(s.busy is None for s in self.slots.values())

    def running(self) -> int:
        return sum(1 for s in self.slots.values() if s.busy is not None)

    def _emit(self, event: str, slot: Slot, **fields: object) -> None:
        for listener in self.listeners:
            listener(event, {"workflow": slot.name, **fields})
