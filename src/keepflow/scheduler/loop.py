"""The asyncio loop around the scheduler: time, wake-ups, a bounded pool of run threads.

It sleeps until the next due time, a finished run, or a wake-up (an API trigger, a deploy
notice) — never a polling scan. The only periodic work is O(1): renewing the leases in bulk
and asking the store whether any workflow changed (one indexed ``max``). Side work on a timer
(notifications, SPEC §12) is registered with :meth:`SchedulerLoop.every` and runs in its own
threads, so a slow webhook never delays a run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keepflow.clock import SystemClock
from keepflow.errors import Cancelled, KeepflowError, LeaseLost
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.core import RunRequest
from keepflow.scheduler.dispatch import execute
from keepflow.scheduler.driver import Scheduler
from keepflow.scheduler.leases import RENEW_SECONDS, Leases, renewal_due

log = logging.getLogger("keepflow.scheduler")

CHANGE_POLL_SECONDS = 1.0
LEASE_RENEW_SECONDS = RENEW_SECONDS
MAX_SLEEP_SECONDS = 5.0
#: Pause after a scheduler step failed (the store was unreachable, say) before the next one.
STEP_RETRY_SECONDS = 1.0


def wait_seconds(until_side: float, due: datetime | None, now: datetime) -> float:
    """How long the loop may sleep (pure): until its next periodic work (``until_side``
    seconds from now), the scheduler's next due time, and never more than
    :data:`MAX_SLEEP_SECONDS`; a finished run or a wake-up ends the sleep earlier."""
    timeout = min(MAX_SLEEP_SECONDS, max(0.0, until_side))
    if due is not None:
        timeout = min(timeout, max(0.0, (due - now).total_seconds()))
    return timeout


def stop_log(request: RunRequest, exc: BaseException) -> tuple[int, str, tuple[object, ...]]:
    """How a run that ended with ``exc`` instead of an outcome is logged (pure): level,
    message, arguments. A lost lease and a stop (shutdown, a keepflow error) are warnings;
    anything else crashed inside the host."""
    if isinstance(exc, LeaseLost):
        return (logging.WARNING, "lost the lease of %s; another host runs it now",
                (request.workflow_name,))
    if not isinstance(exc, (Cancelled, KeepflowError)):
        return (logging.ERROR, "run of %s.%s crashed in the host: %r",
                (request.workflow_name, request.handler, exc))
    return (logging.WARNING, "run of %s.%s stopped: %s",
            (request.workflow_name, request.handler, exc))


class StoppableClock(SystemClock):
    """The service's clock: a backoff sleep ends early, with :class:`Cancelled`, on shutdown,
    so a run in progress stops at its last durable point (recovery resumes it)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def sleep(self, seconds: float) -> None:
        if self.stopping.wait(max(0.0, seconds)):
            raise Cancelled("the host is shutting down")


@dataclass
class Waiter:
    handler: str
    future: asyncio.Future[RunOutcome]


@dataclass
class Periodic:
    """A callback run every ``seconds`` off the loop; never two of the same at once."""

    seconds: float
    fn: Callable[[], None]
    name: str
    due: float = 0.0
    busy: asyncio.Future[None] | None = None


def _guarded(p: Periodic) -> None:
    try:
        p.fn()
    except Exception as exc:  # side work must never stop the scheduler; it runs again later
        log.error("%s failed: %s: %s", p.name, type(exc).__name__, exc)


@dataclass
class LoopStats:
    finished_at: list[datetime] = field(default_factory=list)  # for runs/min


class SchedulerLoop:
    def __init__(self, host: Host, *, concurrency: int = 8) -> None:
        self.host = host
        self.scheduler = Scheduler(host.store, host.clock.now)
        self.leases = Leases(host)
        self.concurrency = concurrency
        self.stats = LoopStats()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="keepflow-run")
        self._inflight: dict[asyncio.Future[RunOutcome], RunRequest] = {}
        self._waiters: dict[str, list[Waiter]] = {}
        self._last_change: datetime | None = None
        self._periodic: list[Periodic] = []
        self._side = ThreadPoolExecutor(4, thread_name_prefix="keepflow-side")

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self.leases.acquire_all()
        self._last_change = self.host.store.newest_change()
        self.scheduler.load(self.leases.held())

    def every(self, seconds: float, fn: Callable[[], None], name: str) -> None:
        """Run ``fn`` every ``seconds`` (first at start) in a side thread while the loop runs."""
        self._periodic.append(Periodic(seconds, fn, name))

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def trigger(self, workflow_id: str, handler: str) -> asyncio.Future[RunOutcome]:
        """Queue a manual run; the future resolves with its outcome."""
        self.scheduler.trigger(workflow_id, handler)
        future: asyncio.Future[RunOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(workflow_id, []).append(Waiter(handler, future))
        self.wake()
        return future

    def notify(self, workflow_id: str) -> None:
        """New events arrived for a workflow (e.g. over HTTP): its consumers may be ready."""
        self.scheduler.notify(workflow_id)
        self.wake()

    def refresh(self, workflow_id: str | None = None) -> None:
        """Re-read one workflow (or all) after a deploy, pause or resume."""
        self.leases.acquire_all()
        held = self.leases.held()
        ids = held if workflow_id is None else {workflow_id} & held
        self.scheduler.load(ids)
        self.wake()

    # ------------------------------------------------------------------ the loop

    async def run(self, on_idle_tick: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + CHANGE_POLL_SECONDS
        next_renew = loop.time() + LEASE_RENEW_SECONDS
        while not self._stop.is_set():
            try:
                self.scheduler.advance(self.host.clock.now())
                free = self.concurrency - len(self._inflight)
                for request in self.scheduler.take(free):
                    fence = self.leases.fence(request.workflow_id)
                    future = loop.run_in_executor(self._pool, execute, self.host, fence,
                                                  request)
                    self._inflight[future] = request
                if loop.time() >= next_poll:
                    next_poll = loop.time() + CHANGE_POLL_SECONDS
                    self._poll_changes()
                renew, next_renew = renewal_due(loop.time(), next_renew)
                if renew:
                    self.leases.renew()
                next_side = self._run_periodic(loop)
                if on_idle_tick is not None:
                    on_idle_tick()
                await self._wait(min(next_poll, next_renew, next_side) - loop.time())
                self._collect()
            except Exception as exc:  # e.g. the store is unreachable: log, pause, go on
                log.error("scheduler step failed: %s: %s; trying again in %gs",
                          type(exc).__name__, exc, STEP_RETRY_SECONDS)
                await asyncio.sleep(STEP_RETRY_SECONDS)

    def _run_periodic(self, loop: asyncio.AbstractEventLoop) -> float:
        """Start the side work that is due; returns when the next idle one is due (loop
        time). One still busy is looked at again on a later turn, never waited for."""
        idle: list[float] = []
        for p in self._periodic:
            if p.busy is not None and not p.busy.done():
                continue
            if loop.time() >= p.due:
                p.due = loop.time() + p.seconds
                p.busy = loop.run_in_executor(self._side, _guarded, p)
            idle.append(p.due)
        return min(idle, default=loop.time() + MAX_SLEEP_SECONDS)

    async def _wait(self, until_periodic: float) -> None:
        timeout = wait_seconds(until_periodic, self.scheduler.next_due(),
                               self.host.clock.now())
        wake = asyncio.ensure_future(self._wake.wait())
        waiting: set[asyncio.Future[object]] = {wake, *self._inflight}  # type: ignore[arg-type]
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        wake.cancel()
        self._wake.clear()

    def _collect(self) -> None:
        for future in [f for f in self._inflight if f.done()]:
            request = self._inflight.pop(future)
            outcome: RunOutcome | None = None
            exc = future.exception()
            if exc is None:
                outcome = future.result()
            else:
                level, message, args = stop_log(request, exc)
                log.log(level, message, *args)
            self.scheduler.finished(request, outcome)
            self.stats.finished_at.append(self.host.clock.now())
            self._resolve(request, outcome, exc)

    def _resolve(self, request: RunRequest, outcome: RunOutcome | None,
                 exc: BaseException | None) -> None:
        if request.trigger != "manual":
            return
        waiters = self._waiters.get(request.workflow_id, [])
        for w in [w for w in waiters if w.handler == request.handler]:
            waiters.remove(w)
            if w.future.done():
                continue
            if outcome is not None:
                w.future.set_result(outcome)
            else:
                w.future.set_exception(exc or KeepflowError("the run stopped"))

    def _poll_changes(self) -> None:
        """Deploys, pauses and resumes made by other processes take effect between runs."""
        newest = self.host.store.newest_change()
        if newest is None or (self._last_change is not None and newest <= self._last_change):
            return
        since, self._last_change = self._last_change, newest
        self.leases.acquire_all()  # new workflows
        held = self.leases.held()
        changed = set(self.host.store.changed_since(since)) if since else held
        self.scheduler.load(changed & held)

    async def shutdown(self, grace: float) -> int:
        """Stop starting runs; wait up to ``grace`` seconds for runs in progress to reach their
        next durable point. Returns how many did not (they resume on the next start)."""
        self.stop()
        clock = self.host.clock
        if isinstance(clock, StoppableClock):
            clock.stopping.set()
        busy: list[asyncio.Future[Any]] = [*self._inflight]
        busy += [p.busy for p in self._periodic if p.busy is not None and not p.busy.done()]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        self._collect()
        left = len(self._inflight)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
        if left == 0:
            self.leases.release_all()
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.future.done():
                    w.future.set_exception(KeepflowError("the host is shutting down"))
        return left

    def runs_per_minute(self) -> int:
        now = self.host.clock.now()
        recent = [t for t in self.stats.finished_at if (now - t).total_seconds() < 60]
        self.stats.finished_at = recent
        return len(recent)
