"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Frozen copies of the column types as they were at this revision (never import schema.py here:
# it evolves, migrations must not).
TS = sa.DateTime(timezone=True)
JSON_T = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=128), nullable=False),
        sa.Column("before", JSON_T, nullable=True),
        sa.Column("after", JSON_T, nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_target", ["target_type", "target_id"], unique=False)

    op.create_table(
        "workflows",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("current_version_id", sa.String(length=26), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("fence", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint("name", name=op.f("uq_workflows_name")),
    )
    op.create_table(
        "handler_state",
        sa.Column("workflow_id", sa.String(length=26), nullable=False),
        sa.Column("handler", sa.String(length=64), nullable=False),
        sa.Column("state", JSON_T, nullable=True),
        sa.Column("has_state", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("updated_by", sa.String(length=26), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("sleep_until", TS, nullable=True),
        sa.Column("sleep_watermark", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("fk_handler_state_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("workflow_id", "handler", name=op.f("pk_handler_state")),
    )
    op.create_table(
        "script_versions",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("workflow_id", sa.String(length=26), nullable=False),
        sa.Column("major", sa.Integer(), nullable=False),
        sa.Column("minor", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column("manifest", JSON_T, nullable=False),
        sa.Column("findings", JSON_T, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("fk_script_versions_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_script_versions")),
        sa.UniqueConstraint(
            "workflow_id", "major", "minor", name=op.f("uq_script_versions_workflow_id_major_minor")
        ),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("workflow_id", sa.String(length=26), nullable=False),
        sa.Column("version_id", sa.String(length=26), nullable=False),
        sa.Column("handler", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("suspend_reason", sa.String(length=32), nullable=True),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("prepared", JSON_T, nullable=True),
        sa.Column("mutation_result", JSON_T, nullable=True),
        sa.Column("failure", JSON_T, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"], ["script_versions.id"], name=op.f("fk_runs_version_id_script_versions")
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("fk_runs_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_status", ["status"], unique=False)
        batch_op.create_index("ix_runs_workflow_created", ["workflow_id", "id"], unique=False)

    op.create_table(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("workflow_id", sa.String(length=26), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=256), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("payload", JSON_T, nullable=True),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reserved_by", sa.String(length=26), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_by", sa.String(length=26), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"], ["runs.id"], name=op.f("fk_events_created_by_runs")
        ),
        sa.ForeignKeyConstraint(
            ["reserved_by"], ["runs.id"], name=op.f("fk_events_reserved_by_runs")
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("fk_events_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint(
            "workflow_id",
            "topic",
            "message_id",
            name=op.f("uq_events_workflow_id_topic_message_id"),
        ),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_ready",
            ["workflow_id", "topic", "id"],
            unique=False,
            postgresql_where=sa.text("status = 'pending' AND reserved_by IS NULL"),
            sqlite_where=sa.text("status = 'pending' AND reserved_by IS NULL"),
        )
        batch_op.create_index("ix_events_reserved_by", ["reserved_by"], unique=False)
        batch_op.create_index(
            "ix_events_workflow_topic_status",
            ["workflow_id", "topic", "status", "id"],
            unique=False,
        )

    op.create_table(
        "mutations",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=26), nullable=False),
        sa.Column("workflow_id", sa.String(length=26), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("connection", sa.String(length=64), nullable=False),
        sa.Column("connector_type", sa.String(length=64), nullable=False),
        sa.Column("tool", sa.String(length=64), nullable=False),
        sa.Column("params", JSON_T, nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("can_reconcile", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", JSON_T, nullable=True),
        sa.Column("error", JSON_T, nullable=True),
        sa.Column("reconcile_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_reconcile_at", TS, nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_mutations_run_id_runs")),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("fk_mutations_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mutations")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_mutations_idempotency_key")),
        sa.UniqueConstraint("run_id", "attempt", name=op.f("uq_mutations_run_id_attempt")),
    )
    with op.batch_alter_table("mutations", schema=None) as batch_op:
        batch_op.create_index("ix_mutations_status", ["status"], unique=False)

    op.create_table(
        "run_logs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=26), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=True),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_logs_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_logs")),
    )
    with op.batch_alter_table("run_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_logs_run_id"), ["run_id"], unique=False)

    op.create_table(
        "run_transitions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=26), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_transitions_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_transitions")),
    )
    with op.batch_alter_table("run_transitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_transitions_run_id"), ["run_id"], unique=False)

    op.create_table(
        "tool_calls",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=26), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("connection", sa.String(length=64), nullable=True),
        sa.Column("tool", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("params", JSON_T, nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("result", JSON_T, nullable=True),
        sa.Column("error", JSON_T, nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_tool_calls_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_calls")),
    )
    with op.batch_alter_table("tool_calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tool_calls_run_id"), ["run_id"], unique=False)

    op.create_table(
        "event_history",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=26), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name=op.f("fk_event_history_event_id_events")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_history")),
    )
    with op.batch_alter_table("event_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_event_history_event_id"), ["event_id"], unique=False)

    op.create_table(
        "reservations",
        sa.Column("run_id", sa.String(length=26), nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("reserved_at", TS, nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name=op.f("fk_reservations_event_id_events")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_reservations_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", "event_id", name=op.f("pk_reservations")),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_event", ["event_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_event")

    op.drop_table("reservations")
    with op.batch_alter_table("event_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_history_event_id"))

    op.drop_table("event_history")
    with op.batch_alter_table("tool_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tool_calls_run_id"))

    op.drop_table("tool_calls")
    with op.batch_alter_table("run_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_transitions_run_id"))

    op.drop_table("run_transitions")
    with op.batch_alter_table("run_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_logs_run_id"))

    op.drop_table("run_logs")
    with op.batch_alter_table("mutations", schema=None) as batch_op:
        batch_op.drop_index("ix_mutations_status")

    op.drop_table("mutations")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_workflow_topic_status")
        batch_op.drop_index("ix_events_reserved_by")
        batch_op.drop_index(
            "ix_events_ready",
            postgresql_where=sa.text("status = 'pending' AND reserved_by IS NULL"),
            sqlite_where=sa.text("status = 'pending' AND reserved_by IS NULL"),
        )

    op.drop_table("events")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_workflow_created")
        batch_op.drop_index("ix_runs_status")

    op.drop_table("runs")
    op.drop_table("script_versions")
    op.drop_table("handler_state")
    op.drop_table("workflows")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_target")

    op.drop_table("audit_log")
