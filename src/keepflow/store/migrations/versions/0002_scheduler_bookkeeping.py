"""scheduler bookkeeping

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)  # frozen copy of the column type at this revision

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("handler_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_fired_at", TS, nullable=True))
        batch_op.add_column(
            sa.Column("skipped_ticks", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("last_skipped_at", TS, nullable=True))
        batch_op.add_column(sa.Column("woken_at", TS, nullable=True))
        batch_op.add_column(sa.Column("wake_reason", sa.String(length=64), nullable=True))

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_workflow_handler", ["workflow_id", "handler", "id"], unique=False
        )

    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.create_index("ix_workflows_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index("ix_workflows_updated_at")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_workflow_handler")

    with op.batch_alter_table("handler_state", schema=None) as batch_op:
        batch_op.drop_column("wake_reason")
        batch_op.drop_column("woken_at")
        batch_op.drop_column("last_skipped_at")
        batch_op.drop_column("skipped_ticks")
        batch_op.drop_column("last_fired_at")
