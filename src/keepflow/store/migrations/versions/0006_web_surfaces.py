"""retry requests, the events page index, inbound-event tokens

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen copies of the column types as they were at this revision.
TS = sa.DateTime(timezone=True)

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retry_requested_at", TS, nullable=True))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_workflow_topic_id", ["workflow_id", "topic", "id"],
                              unique=False)
    op.create_table(
        "inbound_tokens",
        sa.Column("workflow_id", sa.String(length=26), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"],
                                name=op.f("fk_inbound_tokens_workflow_id_workflows")),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_inbound_tokens")),
    )


def downgrade() -> None:
    op.drop_table("inbound_tokens")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_workflow_topic_id")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("retry_requested_at")
