"""Every table of the store, defined once (SQLAlchemy Core).

Dialect differences stay behind a few hooks: JSON becomes JSONB on PostgreSQL, timestamps are
always UTC-aware in Python, partial indexes are declared for both dialects. Alembic migrations
in ``migrations/`` must produce exactly this schema (``tests/integration/test_migrations.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite's INTEGER PRIMARY KEY is the rowid alias only for exactly "INTEGER".
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(name: str, nullable: bool = False) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=nullable)


workflows = Table(
    "workflows",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text),
    Column("current_version_id", String(26)),
    # SPEC §13: a workflow is leased by one host at a time; ``fence`` grows on every takeover
    # and is checked in every commit so a host that lost its lease can never commit.
    Column("lease_owner", String(64)),
    _ts("lease_expires_at", nullable=True),
    Column("fence", BigInteger, nullable=False, server_default=text("0")),
    # Bytes the workflow makes the store keep (events, states, run logs and tool calls),
    # charged at each commit against policy limits.workflow_storage_bytes.
    Column("stored_bytes", BigInteger, nullable=False, server_default=text("0")),
    _ts("created_at"),
    _ts("updated_at"),
    # A running host notices deploys, pauses and resumes by the newest updated_at (SPEC §7).
    Index("ix_workflows_updated_at", "updated_at"),
)

script_versions = Table(
    "script_versions",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("workflow_id", String(26), ForeignKey("workflows.id"), nullable=False),
    Column("major", Integer, nullable=False),
    Column("minor", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("manifest", JsonType, nullable=False),
    Column("findings", JsonType, nullable=False),
    Column("created_by", String(64), nullable=False),
    _ts("created_at"),
    UniqueConstraint("workflow_id", "major", "minor"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("workflow_id", String(26), ForeignKey("workflows.id"), nullable=False),
    Column("version_id", String(26), ForeignKey("script_versions.id"), nullable=False),
    Column("handler", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("suspend_reason", String(32)),
    Column("trigger", String(32), nullable=False),
    Column("prepared", JsonType),
    # What ``next`` receives: {"status": "applied", "result": ...} | none | skipped (SPEC §5.3).
    Column("mutation_result", JsonType),
    Column("failure", JsonType),
    # SPEC §6 step 1: a mutation whose permission requires approval waits here:
    # {"mutation": {connection, tool, params, description}, "status": pending|approved|rejected,
    #  "by", "at"}.
    Column("approval", JsonType),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("finished_at", nullable=True),
    # A person asked to retry this failed run (SPEC §7.4): it counts as unfinished until the
    # host carries it on — here, in a running server, or on the next start. Every durable
    # write of the run clears it.
    _ts("retry_requested_at", nullable=True),
    Index("ix_runs_workflow_created", "workflow_id", "id"),
    Index("ix_runs_workflow_handler", "workflow_id", "handler", "id"),
    Index("ix_runs_status", "status"),
)

run_transitions = Table(
    "run_transitions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(26), ForeignKey("runs.id"), nullable=False, index=True),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    _ts("at"),
    Column("note", Text),
)

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),  # append order (SPEC §3)
    Column("workflow_id", String(26), ForeignKey("workflows.id"), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("title", String(200), nullable=False),
    Column("payload", JsonType),
    Column("payload_sha256", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reserved_by", String(26), ForeignKey("runs.id")),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("created_by", String(26), ForeignKey("runs.id")),
    _ts("created_at"),
    _ts("updated_at"),
    UniqueConstraint("workflow_id", "topic", "message_id"),
    Index("ix_events_workflow_topic_status", "workflow_id", "topic", "status", "id"),
    # The events page: a topic's events newest first, whatever their status, by keyset.
    Index("ix_events_workflow_topic_id", "workflow_id", "topic", "id"),
    # peek: pending, unreserved events in append order, without scanning history.
    Index(
        "ix_events_ready",
        "workflow_id",
        "topic",
        "id",
        postgresql_where=text("status = 'pending' AND reserved_by IS NULL"),
        sqlite_where=text("status = 'pending' AND reserved_by IS NULL"),
    ),
    Index("ix_events_reserved_by", "reserved_by"),
)

event_history = Table(
    "event_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", BigId, ForeignKey("events.id"), nullable=False, index=True),
    _ts("at"),
    Column("status", String(16), nullable=False),
    Column("run_id", String(26)),
    Column("note", Text),
)

reservations = Table(
    "reservations",
    metadata,
    Column("run_id", String(26), ForeignKey("runs.id"), primary_key=True),
    Column("event_id", BigId, ForeignKey("events.id"), primary_key=True),
    Column("attempt", Integer, nullable=False),  # the event's attempt when reserved (SPEC §3)
    _ts("reserved_at"),
    Column("outcome", String(16)),  # consumed | skipped | released, when the run ends
    _ts("ended_at", nullable=True),
    Index("ix_reservations_event", "event_id"),
)

handler_state = Table(
    "handler_state",
    metadata,
    Column("workflow_id", String(26), ForeignKey("workflows.id"), primary_key=True),
    Column("handler", String(64), primary_key=True),
    Column("state", JsonType),
    Column("has_state", Boolean, nullable=False, server_default=text("false")),
    Column("updated_by", String(26)),
    _ts("updated_at"),
    # SPEC §7.3: after empty reservations a consumer sleeps until a newer event than
    # ``sleep_watermark`` arrives, ``sleep_until`` passes, or a person triggers it.
    _ts("sleep_until", nullable=True),
    Column("sleep_watermark", BigInteger),
    # SPEC §7.2: producers fire from the last stored fire time; ticks that found the workflow
    # busy are skipped and counted. Wake-ups are recorded for "why isn't it running?".
    _ts("last_fired_at", nullable=True),
    Column("skipped_ticks", Integer, nullable=False, server_default=text("0")),
    _ts("last_skipped_at", nullable=True),
    _ts("woken_at", nullable=True),
    Column("wake_reason", String(64)),
)

mutations = Table(
    "mutations",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(26), ForeignKey("runs.id"), nullable=False),
    Column("workflow_id", String(26), ForeignKey("workflows.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("connection", String(64), nullable=False),
    Column("connector_type", String(64), nullable=False),
    Column("tool", String(64), nullable=False),
    Column("params", JsonType),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("can_reconcile", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", JsonType),
    Column("error", JsonType),
    Column("reconcile_attempts", Integer, nullable=False, server_default=text("0")),
    _ts("next_reconcile_at", nullable=True),
    Column("resolved_by", String(64)),
    _ts("created_at"),
    _ts("updated_at"),
    UniqueConstraint("run_id", "attempt"),
    Index("ix_mutations_status", "status"),
)

tool_calls = Table(
    "tool_calls",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(26), ForeignKey("runs.id"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("target", String(16), nullable=False),
    Column("connection", String(64)),
    Column("tool", String(64)),
    Column("kind", String(16)),
    Column("params", JsonType),
    Column("ok", Boolean, nullable=False),
    Column("result", JsonType),
    Column("error", JsonType),
    _ts("started_at"),
    Column("duration_ms", Float, nullable=False),
)

run_logs = Table(
    "run_logs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(26), ForeignKey("runs.id"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("phase", String(16)),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
    _ts("at"),
)

#: The per-workflow token that authenticates inbound events (docs/api.md#inbound-events): only
#: its SHA-256 is kept, the token itself is shown once when it is made.
inbound_tokens = Table(
    "inbound_tokens",
    metadata,
    Column("workflow_id", String(26), ForeignKey("workflows.id"), primary_key=True),
    Column("token_sha256", String(64), nullable=False),
    _ts("created_at"),
    Column("created_by", String(64), nullable=False),
)

#: Connection secrets (docs/security.md#secrets): Fernet tokens under the home's key, each
#: sealing its own name with its value, so a row copied under another name does not open.
credentials = Table(
    "credentials",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("ciphertext", Text, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    Column("updated_by", String(64), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target_type", String(32), nullable=False),
    Column("target_id", Text, nullable=False),  # e.g. workflow/topic/messageId
    Column("before", JsonType),
    Column("after", JsonType),
    Column("detail", Text),
    Index("ix_audit_target", "target_type", "target_id"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # needs_action | stale_events | repeated_failures
    Column("workflow_id", String(26), ForeignKey("workflows.id"), nullable=False),
    # One problem gives one notification: (kind, workflow, key) is unique while it is open.
    Column("key", String(256), nullable=False),
    Column("title", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),  # open | resolved
    _ts("created_at"),
    _ts("resolved_at", nullable=True),
    Column("webhook_status", String(16), nullable=False),  # none | pending | delivered | failed
    Column("webhook_attempts", Integer, nullable=False, server_default=text("0")),
    _ts("webhook_next_at", nullable=True),
    Column("webhook_error", Text),
    Index("ix_notifications_open", "kind", "workflow_id", "key", unique=True,
          postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'")),
    Index("ix_notifications_webhook", "webhook_status", "webhook_next_at"),
)
