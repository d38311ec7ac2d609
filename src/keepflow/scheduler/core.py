"""The scheduler's decisions (SPEC §7): pure functions of plain records and an instant.

Nothing here reads or writes the store, sleeps, or starts a thread (``make lint`` checks that
this module imports no store). The driver, :class:`keepflow.scheduler.driver.Scheduler`
(stepped by ``loop.py`` in production and by ``inline.py`` in tests, with a fake clock),
gathers the facts from the store, calls these functions, and performs what they decide:

* :func:`load_slot` — a workflow's slot and its due times at start-up or after a (re)deploy:
  producer ticks (ticks missed while the host was down collapse into one), wake-ups of
  sleeping consumers, the end of a crash backoff; :func:`reconcile_dues` — the background
  reconciliations of suspended runs;
* :func:`decide_tick` — a producer's tick: when it fires next and whether it is due now,
  skipped because the workflow is busy (counted, visible) or ignored (the workflow is not
  active);
* :func:`choose_run` — what a workflow runs next, at most one run: after a crash only a
  person's trigger; else a run to carry on, a due reconciliation, manual consumer triggers,
  ready consumers (oldest pending event first), manual producer triggers, due producers;
* :func:`after_run` — a run ended: one that crashed inside the host (no outcome) holds its
  workflow back with exponential backoff (:func:`crash_backoff`), so one broken workflow never
  spins the host; manual triggers still go through;
* :func:`check_trigger`, :func:`unfinished_block`, :func:`sleeping_until` — the small ones.

Fairness across workflows (a FIFO of runnable workflows, a workflow goes to the back after
each run) and the heap of due times are the driver's bookkeeping. Nothing polls: 10,000 idle
workflows are 10,000 heap entries and no work until one is due.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from keepflow.errors import Conflict, NotFound
from keepflow.model import RunKind, RunStatus, WorkflowRecord, WorkflowStatus
from keepflow.policies import backoff
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler import timing
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


class HandlerTimes(Protocol):
    """What the decisions need of a handler's stored facts (``store.schedule.HandlerFacts``)."""

    @property
    def last_fired_at(self) -> datetime | None: ...

    @property
    def sleep_until(self) -> datetime | None: ...


DueKind = Literal["tick", "wake", "retry", "reconcile"]


@dataclass(frozen=True)
class Due:
    """Something of one workflow that becomes due at ``at`` (an entry of the driver's heap)."""

    at: datetime
    kind: DueKind  # a producer tick, a sleeping consumer's wake-up, the end of a crash
    #                backoff, a suspended run's background reconciliation
    handler: str = ""  # tick: the producer; wake, reconcile: the consumer
    run_id: str | None = None  # reconcile: the suspended run


# ---------------------------------------------------------------------------- loading


def unfinished_block(unfinished: tuple[str, str, str] | None
                     ) -> tuple[str | None, tuple[str, str] | None]:
    """``(blocked, resume)`` of a workflow with this unfinished run ``(id, handler, status)``.

    A suspended run blocks its workflow (SPEC §15 scenario 15); any other unfinished run was
    moved on by a person's answer and is carried on next."""
    if unfinished is None:
        return None, None
    run_id, handler, status = unfinished
    if status == RunStatus.SUSPENDED.value:
        return f"run {run_id} ({handler}) is {status}", None
    return None, (run_id, handler)


def sleeping_until(facts: HandlerTimes | None, now: datetime) -> datetime | None:
    """When a consumer that is asleep at ``now`` wakes by its backoff timeout (SPEC §7.3)."""
    until = facts.sleep_until if facts is not None else None
    return until if until is not None and until > now else None


def load_slot(wf: WorkflowRecord, manifest: WorkflowManifest | None,
              unfinished: tuple[str, str, str] | None,
              facts: Mapping[tuple[str, str], HandlerTimes], old: Slot | None,
              now: datetime) -> tuple[Slot, list[Due]]:
    """The slot of ``wf`` as (re)loaded at ``now``, and what of it becomes due when.

    A reload keeps what only this scheduler knows (its run in progress, queued triggers, due
    producers, the crash backoff) and bumps the generation, so due times of the old slot go
    stale. A producer's first tick is :func:`timing.first_due`: however many ticks were missed,
    they collapse into one."""
    slot = Slot(wf.id, wf.name, wf.status, manifest,
                generation=(old.generation + 1) if old else 0)
    if old is not None:
        slot.busy, slot.manual = old.busy, dict(old.manual)
        slot.due_producers = dict(old.due_producers)
        slot.crashes, slot.held_until = old.crashes, old.held_until
    dues: list[Due] = []
    if slot.held_until is not None:
        dues.append(Due(slot.held_until, "retry"))
    if slot.busy is None:  # else the unfinished run in the store is ours
        slot.blocked, slot.resume = unfinished_block(unfinished)
    if manifest is not None:
        for name, producer in manifest.producers.items():
            if producer.schedule is None:
                continue
            fact = facts.get((wf.id, name))
            last = fact.last_fired_at if fact else None
            dues.append(Due(timing.first_due(producer.schedule, last, now), "tick", name))
        for name in manifest.consumers:
            until = sleeping_until(facts.get((wf.id, name)), now)
            if until is not None:
                dues.append(Due(until, "wake", name))
    return slot, dues


def reconcile_dues(pending: Iterable[tuple[str, str, str, datetime | None]],
                   workflow_ids: Iterable[str], now: datetime) -> list[tuple[str, Due]]:
    """``(workflow id, due)`` of each pending reconciliation ``(workflow, run, handler, next
    attempt)`` of the given workflows; one without a next attempt time is due now."""
    wanted = set(workflow_ids)
    return [(wid, Due(at or now, "reconcile", handler, run_id))
            for wid, run_id, handler, at in pending if wid in wanted]


# ---------------------------------------------------------------------------- time


TickAction = Literal["due", "skip", "ignore"]


@dataclass(frozen=True)
class TickDecision:
    next_at: datetime  # the producer's next tick, always after ``now``
    action: TickAction  # due: runs when its turn comes; skip: counted; ignore: not active
    because: str = ""  # skip: why, for the ``tick.skipped`` log


def decide_tick(slot: Slot, handler: str, due: datetime, now: datetime) -> TickDecision:
    """The tick of producer ``handler`` that was due at ``due`` is processed at ``now``."""
    assert slot.manifest is not None
    schedule = slot.manifest.producers[handler].schedule
    assert schedule is not None
    following = timing.following(schedule, due, now)  # late: no burst of catch-up ticks
    if not slot.active:
        return TickDecision(following, "ignore")  # SPEC §7.1: paused etc. run nothing
    if slot.busy is not None or slot.blocked is not None:
        # SPEC §7.1: a tick that finds the workflow busy is skipped, counted, visible.
        because = slot.blocked or f"{slot.busy.handler if slot.busy else ''} is running"
        return TickDecision(following, "skip", because)
    return TickDecision(following, "due")


# ---------------------------------------------------------------------------- triggers


def check_trigger(slot: Slot | None, workflow_id: str, handler: str) -> None:
    """Refuse a manual run (SPEC §7.1) that cannot be queued: unknown workflow or handler, a
    disabled workflow, another run unfinished. A busy or paused workflow may be triggered."""
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


# ---------------------------------------------------------------------------- dispatch


@dataclass(frozen=True)
class RunChoice:
    """What a workflow runs next, and what the driver records for it."""

    request: RunRequest | None = None
    #: Which consumers are ready must be looked up (oldest pending event first) to choose.
    ask_ready: bool = False
    #: No consumer is ready: the slot is clean until something may make one ready.
    no_consumer_ready: bool = False
    #: Queued manual triggers of handlers the current version no longer has: dropped.
    dropped: tuple[str, ...] = ()
    #: Why the chosen consumer woke, for the store (a manual trigger of a consumer).
    wake_reason: str | None = None


def _request(slot: Slot, handler: str, kind: RunKind, trigger: Trigger,
             fired: datetime | None = None, run_id: str | None = None) -> RunRequest:
    return RunRequest(slot.id, slot.name, handler, kind, trigger, fired, run_id)


def choose_run(slot: Slot, ready: Sequence[str] | None = None) -> RunChoice:
    """The run ``slot`` starts now, if any. ``ready``: the ready consumers, oldest pending event
    first, once looked up — a choice with ``ask_ready`` needs them (nothing was chosen)."""
    if slot.held_until is not None:  # after a crash only a person's trigger runs
        return _choose_manual(slot)
    if slot.resume is not None:
        run_id, handler = slot.resume
        return RunChoice(_request(slot, handler, RunKind.CONSUMER, "resume", run_id=run_id))
    if slot.reconcile_due:
        run_id, handler = next(iter(slot.reconcile_due.items()))
        return RunChoice(_request(slot, handler, RunKind.CONSUMER, "reconcile", run_id=run_id))
    if slot.blocked is not None or slot.manifest is None:
        return RunChoice()  # SPEC §15 scenario 15: nothing else runs while a run is unfinished
    m = slot.manifest
    for handler in slot.manual:
        if handler in m.consumers:
            return RunChoice(_request(slot, handler, RunKind.CONSUMER, "manual"),
                             wake_reason="manual trigger")
    none_ready = False
    if slot.active and slot.dirty:
        if ready is None:
            return RunChoice(ask_ready=True)
        if ready:
            return RunChoice(_request(slot, ready[0], RunKind.CONSUMER, "event"))
        none_ready = True
    dropped: list[str] = []
    for handler in slot.manual:  # no consumer among them: producers, or gone handlers
        if handler in m.producers:
            return RunChoice(_request(slot, handler, RunKind.PRODUCER, "manual"),
                             no_consumer_ready=none_ready, dropped=tuple(dropped))
        dropped.append(handler)
    if slot.active and slot.due_producers:
        handler, fired = min(slot.due_producers.items(), key=lambda kv: kv[1])
        return RunChoice(_request(slot, handler, RunKind.PRODUCER, "schedule", fired),
                         no_consumer_ready=none_ready, dropped=tuple(dropped))
    return RunChoice(no_consumer_ready=none_ready, dropped=tuple(dropped))


def _choose_manual(slot: Slot) -> RunChoice:
    m = slot.manifest
    if m is None or slot.blocked is not None or not slot.manual:
        return RunChoice()
    handler = next(iter(slot.manual))
    kind = RunKind.CONSUMER if handler in m.consumers else RunKind.PRODUCER
    return RunChoice(_request(slot, handler, kind, "manual"))


# ---------------------------------------------------------------------------- run ends


@dataclass(frozen=True)
class RunEnd:
    """What a run's end means for its workflow."""

    crashes: int  # crashes in a row, after this run
    hold_until: datetime | None  # it crashed: hold the workflow back until then
    refresh: bool  # it failed or was suspended (or crashed): re-read the workflow's status
    check_sleep: bool  # a committed consumer run: did the consumer go to sleep?
    status: str  # the run's status, or "error" when it crashed


def after_run(slot: Slot, request: RunRequest, outcome: RunOutcome | None,
              now: datetime) -> RunEnd:
    """A run of ``slot`` ended at ``now``; ``outcome`` is None when it crashed in the host."""
    if outcome is None:
        crashes = slot.crashes + 1
        return RunEnd(crashes, now + timedelta(seconds=crash_backoff(crashes)), refresh=True,
                      check_sleep=False, status="error")
    committed = outcome.status is RunStatus.COMMITTED
    return RunEnd(0, None, refresh=not committed,
                  check_sleep=committed and request.kind is RunKind.CONSUMER,
                  status=outcome.status.value)
