"""A synchronous driver of the scheduler: runs execute inline, time comes from the host's
clock. Deterministic: used by tests (with a fake clock) and by ``keepflow drain``-like tools."""

from __future__ import annotations

from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.core import RunRequest
from keepflow.scheduler.dispatch import execute
from keepflow.scheduler.driver import Scheduler
from keepflow.scheduler.leases import Leases


class InlineDriver:
    def __init__(self, host: Host, *, concurrency: int = 4) -> None:
        self.host = host
        self.scheduler = Scheduler(host.store, host.clock.now)
        self.leases = Leases(host)
        self.concurrency = concurrency
        self.history: list[tuple[RunRequest, RunOutcome]] = []

    def start(self) -> None:
        self.leases.acquire_all()
        self.scheduler.load(self.leases.held())

    def step(self) -> list[tuple[RunRequest, RunOutcome]]:
        """Fire what is due now, then start (and finish) one batch of runs."""
        self.scheduler.advance(self.host.clock.now())
        done = []
        for request in self.scheduler.take(self.concurrency):
            outcome = execute(self.host, self.leases.fence(request.workflow_id), request)
            self.scheduler.finished(request, outcome)
            done.append((request, outcome))
        self.history.extend(done)
        return done

    def run_until_idle(self, max_steps: int = 10_000) -> list[tuple[RunRequest, RunOutcome]]:
        done: list[tuple[RunRequest, RunOutcome]] = []
        for _ in range(max_steps):
            batch = self.step()
            if not batch:
                return done
            done.extend(batch)
        raise RuntimeError("the scheduler did not become idle")

    def stop(self) -> None:
        self.leases.release_all()
