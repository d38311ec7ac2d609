"""Store API of the scheduler (SPEC §7): readiness, fire times, skips, wake-ups, bulk leases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from keepflow.model import Fence
from keepflow.store import events as ev
from keepflow.store import runs, schedule
from keepflow.store import workflows as wf
from keepflow.store.schedule import HandlerFacts, LastRun
from keepflow.store.session import StoreBase


class SchedulerBookkeeping(StoreBase):
    def ready_consumers(self, workflow_id: str, consumers: Mapping[str, Sequence[str]],
                        now: datetime) -> list[tuple[int, str]]:
        """(oldest pending event id, consumer) of every ready consumer, oldest first.

        SPEC §7.3: ready = a subscribed topic has pending unreserved events and the consumer is
        not asleep; a sleeping consumer wakes when an event newer than its watermark arrives
        or its backoff timeout passes.
        """
        ready: list[tuple[int, str]] = []
        with self.read() as conn:
            for name, topics in consumers.items():
                oldest, newest = ev.ready_window(conn, workflow_id, list(topics))
                if oldest is None or newest is None:
                    continue
                until, watermark = runs.sleep_info(conn, workflow_id, name)
                if not schedule.is_asleep(until, watermark, newest, now):
                    ready.append((oldest, name))
        return sorted(ready)

    def handler_facts(self, workflow_id: str | None = None
                      ) -> dict[tuple[str, str], HandlerFacts]:
        with self.read() as conn:
            return schedule.handler_facts(conn, workflow_id)

    def record_fire(self, workflow_id: str, handler: str, at: datetime) -> None:
        with self.write() as conn:
            schedule.record_fire_txn(conn, workflow_id, handler, at)

    def record_skipped_tick(self, workflow_id: str, handler: str, at: datetime) -> None:
        with self.write() as conn:
            schedule.record_skip_txn(conn, workflow_id, handler, at)

    def record_wake(self, workflow_id: str, handler: str, reason: str) -> None:
        with self.write() as conn:
            schedule.record_wake_txn(conn, workflow_id, handler, reason, self.clock())

    def last_runs(self, workflow_id: str) -> dict[str, LastRun]:
        with self.read() as conn:
            return schedule.last_runs(conn, workflow_id)

    def newest_change(self) -> datetime | None:
        with self.read() as conn:
            return schedule.newest_change(conn)

    def scheduling_snapshot(self, workflow_ids: list[str] | None = None
                            ) -> tuple[dict[str, dict[str, object]],
                                       dict[str, tuple[str, str, str]]]:
        """(current manifests, unfinished runs) by workflow: what a scheduler loads at start."""
        with self.read() as conn:
            return (schedule.current_manifests(conn, workflow_ids),
                    schedule.unfinished_by_workflow(conn))

    def pending_reconciles(self, workflow_id: str | None = None
                           ) -> list[tuple[str, str, str, datetime | None]]:
        with self.read() as conn:
            return schedule.pending_reconciles(conn, workflow_id)

    def changed_since(self, since: datetime) -> list[str]:
        with self.read() as conn:
            return schedule.changed_since(conn, since)

    def acquire_all_leases(self, owner: str, ttl: timedelta, stale_owners: list[str]
                           ) -> dict[str, Fence]:
        with self.write() as conn:
            return wf.acquire_all_leases_txn(conn, owner, ttl, self.clock(), stale_owners)

    def renew_leases(self, owner: str, ttl: timedelta) -> int:
        with self.write() as conn:
            return wf.renew_leases_txn(conn, owner, ttl, self.clock())

    def release_all_leases(self, owner: str) -> None:
        with self.write() as conn:
            wf.release_all_leases_txn(conn, owner)

    def lease_owners(self) -> list[str]:
        with self.read() as conn:
            return wf.lease_owners(conn)
