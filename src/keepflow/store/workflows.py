"""Every SQL statement about workflows, script versions, leases and the audit log."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, or_, select, update

from keepflow.errors import LeaseLost, NotFound, QuotaExceeded
from keepflow.ids import new_id
from keepflow.model import Fence, VersionRecord, WorkflowRecord, WorkflowStatus
from keepflow.store import convert
from keepflow.store.schema import audit_log, script_versions, workflows


def get(conn: Connection, name_or_id: str) -> WorkflowRecord:
    row = conn.execute(
        select(workflows).where(or_(workflows.c.name == name_or_id, workflows.c.id == name_or_id))
    ).mappings().first()
    if row is None:
        raise NotFound(f"no workflow named '{name_or_id}' (see `keepflow workflows`)")
    return convert.workflow(row)


def find(conn: Connection, name: str) -> WorkflowRecord | None:
    row = conn.execute(select(workflows).where(workflows.c.name == name)).mappings().first()
    return convert.workflow(row) if row else None


def list_all(conn: Connection) -> list[WorkflowRecord]:
    return [convert.workflow(r) for r in conn.execute(
        select(workflows).order_by(workflows.c.name)).mappings()]


def create_txn(conn: Connection, name: str, now: datetime) -> WorkflowRecord:
    wid = new_id()
    conn.execute(insert(workflows).values(
        id=wid, name=name, status=WorkflowStatus.ACTIVE.value, fence=0,
        created_at=now, updated_at=now))
    return get(conn, wid)


def add_version_txn(
    conn: Connection, workflow_id: str, *, source: str, source_sha256: str,
    manifest: dict[str, Any], findings: list[dict[str, Any]], created_by: str, bump: str,
    now: datetime,
) -> VersionRecord:
    """A new script version; ``bump`` is ``major`` (Planner / person) or ``minor`` (repair)."""
    latest = conn.execute(
        select(script_versions.c.major, script_versions.c.minor)
        .where(script_versions.c.workflow_id == workflow_id)
        .order_by(script_versions.c.major.desc(), script_versions.c.minor.desc()).limit(1)
    ).first()
    if latest is None:
        major, minor = 1, 0
    elif bump == "minor":
        major, minor = latest.major, latest.minor + 1
    else:
        major, minor = latest.major + 1, 0
    vid = new_id()
    conn.execute(insert(script_versions).values(
        id=vid, workflow_id=workflow_id, major=major, minor=minor, source=source,
        source_sha256=source_sha256, manifest=manifest, findings=findings,
        created_by=created_by[:ACTOR_MAX], created_at=now))
    conn.execute(update(workflows).where(workflows.c.id == workflow_id)
                 .values(current_version_id=vid, updated_at=now))
    return version(conn, vid)


def version(conn: Connection, version_id: str) -> VersionRecord:
    row = conn.execute(
        select(script_versions).where(script_versions.c.id == version_id)).mappings().first()
    if row is None:
        raise NotFound(f"no script version {version_id}")
    return convert.version(row)


def versions(conn: Connection, workflow_id: str) -> list[VersionRecord]:
    q = select(script_versions).where(script_versions.c.workflow_id == workflow_id) \
        .order_by(script_versions.c.major, script_versions.c.minor)
    return [convert.version(r) for r in conn.execute(q).mappings()]


def touch_txn(conn: Connection, workflow_id: str, now: datetime) -> None:
    conn.execute(update(workflows).where(workflows.c.id == workflow_id).values(updated_at=now))


def set_status_txn(conn: Connection, workflow_id: str, status: WorkflowStatus,
                   reason: str | None, now: datetime) -> None:
    conn.execute(update(workflows).where(workflows.c.id == workflow_id)
                 .values(status=status.value, status_reason=reason, updated_at=now))


# ------------------------------------------------------------------------------ leases (§13)


def acquire_lease_txn(conn: Connection, workflow_id: str, owner: str, ttl: timedelta,
                      now: datetime, *, stale_owner: str | None = None) -> Fence | None:
    """Take the workflow's lease if it is free, expired, already ours, or held by
    ``stale_owner`` (a process known to be dead); bump the fence."""
    free = [workflows.c.lease_owner.is_(None), workflows.c.lease_owner == owner,
            workflows.c.lease_expires_at < now]
    if stale_owner is not None:
        free.append(workflows.c.lease_owner == stale_owner)
    n = conn.execute(
        update(workflows)
        .where(workflows.c.id == workflow_id, or_(*free))
        .values(lease_owner=owner, lease_expires_at=now + ttl, fence=workflows.c.fence + 1)
    ).rowcount
    if n != 1:
        return None
    token = conn.execute(select(workflows.c.fence).where(workflows.c.id == workflow_id)).scalar()
    return Fence(workflow_id=workflow_id, owner=owner, token=int(token or 0))


def acquire_all_leases_txn(conn: Connection, owner: str, ttl: timedelta, now: datetime,
                           stale_owners: list[str]) -> dict[str, Fence]:
    """Take every lease that is free, expired, ours, or held by a dead process, in one
    statement (a host starting with 10,000 workflows must not pay 10,000 commits)."""
    # Leases we already hold keep their fence: bumping it would fail our own runs' commits.
    free = [workflows.c.lease_owner.is_(None), workflows.c.lease_expires_at < now]
    if stale_owners:
        free.append(workflows.c.lease_owner.in_(stale_owners))
    conn.execute(update(workflows).where(or_(*free))
                 .values(lease_owner=owner, lease_expires_at=now + ttl,
                         fence=workflows.c.fence + 1))
    rows = conn.execute(select(workflows.c.id, workflows.c.fence)
                        .where(workflows.c.lease_owner == owner))
    return {r.id: Fence(workflow_id=r.id, owner=owner, token=int(r.fence)) for r in rows}


def renew_leases_txn(conn: Connection, owner: str, ttl: timedelta, now: datetime) -> int:
    return int(conn.execute(update(workflows).where(workflows.c.lease_owner == owner)
                            .values(lease_expires_at=now + ttl)).rowcount)


def release_all_leases_txn(conn: Connection, owner: str) -> None:
    conn.execute(update(workflows).where(workflows.c.lease_owner == owner)
                 .values(lease_owner=None, lease_expires_at=None))


def lease_owners(conn: Connection) -> list[str]:
    q = select(workflows.c.lease_owner).where(workflows.c.lease_owner.is_not(None)).distinct()
    return [r.lease_owner for r in conn.execute(q)]


def lease_owner(conn: Connection, workflow_id: str) -> str | None:
    owner: str | None = conn.execute(
        select(workflows.c.lease_owner).where(workflows.c.id == workflow_id)).scalar()
    return owner


#: Built once: every durable point of every run executes it (SPEC §13).
_RENEW_FENCED = (
    update(workflows)
    .where(workflows.c.id == bindparam("b_id"), workflows.c.fence == bindparam("b_fence"),
           workflows.c.lease_owner == bindparam("b_owner"))
    .values(lease_expires_at=bindparam("b_expires"))
)


def check_fence_txn(conn: Connection, fence: Fence, ttl: timedelta, now: datetime) -> None:
    """Refuse the commit unless we still hold the lease; renews it (SPEC §13).

    On PostgreSQL the UPDATE also locks the workflow row until commit, so a takeover waits for
    an in-progress commit and never interleaves with it.
    """
    n = conn.execute(_RENEW_FENCED, {
        "b_id": fence.workflow_id, "b_fence": fence.token, "b_owner": fence.owner,
        "b_expires": now + ttl}).rowcount
    if n != 1:
        raise LeaseLost(
            f"this host lost the lease of workflow {fence.workflow_id}; its commit was refused"
        )


#: Who did something, as the store keeps it (a longer KEEPFLOW_ACTOR is cut).
ACTOR_MAX = 40

_CHARGE = (
    update(workflows).where(workflows.c.id == bindparam("b_id"))
    .values(stored_bytes=workflows.c.stored_bytes + bindparam("b_n"))
)
_CHARGE_WITHIN = _CHARGE.where(
    workflows.c.stored_bytes + bindparam("b_n") <= bindparam("b_quota"))


def charge_storage_txn(conn: Connection, workflow_id: str, n: int, quota: int | None) -> None:
    """Add ``n`` bytes to the workflow's storage; with a ``quota``, refuse (QuotaExceeded, so
    the transaction rolls back) if the total would pass it."""
    if quota is None:
        conn.execute(_CHARGE, {"b_id": workflow_id, "b_n": n})
        return
    if conn.execute(_CHARGE_WITHIN, {"b_id": workflow_id, "b_n": n, "b_quota": quota}).rowcount:
        return
    used = conn.execute(select(workflows.c.stored_bytes)
                        .where(workflows.c.id == workflow_id)).scalar_one()
    raise QuotaExceeded(
        f"the workflow keeps {used:,} bytes and this run would add {n:,}, more than its "
        f"storage quota of {quota:,} bytes (policy limits.workflow_storage_bytes); nothing of "
        "the run was committed. Events are never deleted: raise the quota for this workflow "
        "in policy.toml, then retry the run (docs/security.md#limits)",
        used=used, adding=n, quota=quota)


def release_lease_txn(conn: Connection, fence: Fence) -> None:
    conn.execute(
        update(workflows)
        .where(workflows.c.id == fence.workflow_id, workflows.c.fence == fence.token,
               workflows.c.lease_owner == fence.owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


# ------------------------------------------------------------------------------ audit (§12)


def audit_txn(conn: Connection, *, actor: str, action: str, target_type: str, target_id: str,
              before: Any = None, after: Any = None, detail: str | None = None,
              now: datetime) -> None:
    conn.execute(insert(audit_log).values(
        at=now, actor=actor[:ACTOR_MAX], action=action, target_type=target_type,
        target_id=target_id, before=before, after=after, detail=detail))


def audit_entries(conn: Connection, target_type: str | None = None,
                  target_id: str | None = None) -> list[dict[str, Any]]:
    q = select(audit_log).order_by(audit_log.c.id)
    if target_type:
        q = q.where(audit_log.c.target_type == target_type)
    if target_id:
        q = q.where(audit_log.c.target_id == target_id)
    return [
        {"at": r["at"].isoformat(), "actor": r["actor"], "action": r["action"],
         "targetType": r["target_type"], "targetId": r["target_id"], "before": r["before"],
         "after": r["after"], "detail": r["detail"]}
        for r in conn.execute(q).mappings()
    ]


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(workflows)).scalar() or 0)
