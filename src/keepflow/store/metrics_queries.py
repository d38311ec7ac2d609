"""The grouped counts behind ``GET /metrics`` (docs/operations.md#metrics): one aggregate query
per family, read at scrape time in one read transaction, labelled by workflow *name*.

Each query is a single ``GROUP BY`` over its table, so a scrape costs three statements whatever
the number of workflows; nothing here is kept between scrapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from keepflow.model import EventStatus
from keepflow.store.schema import events, mutations, runs, workflows


@dataclass(frozen=True)
class MutationCounts:
    """The mutations (ledger entries) of one workflow in one ledger status."""

    count: int
    #: The sum of their ``reconcile_attempts``.
    reconcile_attempts: int


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the store holds now, counted for the metrics endpoint. A combination of labels
    with nothing in it is absent (never a zero entry)."""

    #: (workflow, run status) → runs.
    runs: Mapping[tuple[str, str], int]
    #: (workflow, topic) → events in status ``pending`` (reserved by a run or not).
    pending_events: Mapping[tuple[str, str], int]
    #: (workflow, ledger status) → the mutations in it and their reconcile attempts.
    mutations: Mapping[tuple[str, str], MutationCounts]


def run_counts(conn: Connection) -> dict[tuple[str, str], int]:
    q = (select(workflows.c.name, runs.c.status, func.count())
         .join(workflows, workflows.c.id == runs.c.workflow_id)
         .group_by(workflows.c.name, runs.c.status))
    return {(name, status): int(n) for name, status, n in conn.execute(q)}


def pending_event_counts(conn: Connection) -> dict[tuple[str, str], int]:
    q = (select(workflows.c.name, events.c.topic, func.count())
         .join(workflows, workflows.c.id == events.c.workflow_id)
         .where(events.c.status == EventStatus.PENDING.value)
         .group_by(workflows.c.name, events.c.topic))
    return {(name, topic): int(n) for name, topic, n in conn.execute(q)}


def mutation_counts(conn: Connection) -> dict[tuple[str, str], MutationCounts]:
    q = (select(workflows.c.name, mutations.c.status, func.count(),
                func.coalesce(func.sum(mutations.c.reconcile_attempts), 0))
         .join(workflows, workflows.c.id == mutations.c.workflow_id)
         .group_by(workflows.c.name, mutations.c.status))
    return {(name, status): MutationCounts(int(n), int(attempts))
            for name, status, n, attempts in conn.execute(q)}


def metrics_snapshot(conn: Connection) -> MetricsSnapshot:
    return MetricsSnapshot(runs=run_counts(conn), pending_events=pending_event_counts(conn),
                           mutations=mutation_counts(conn))
