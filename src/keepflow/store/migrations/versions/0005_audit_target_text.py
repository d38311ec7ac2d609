"""audit targets of any length

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An event's audit target is workflow/topic/messageId: up to 26 + 64 + 256 characters.
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("target_id", type_=sa.Text(), existing_type=sa.String(128),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("target_id", type_=sa.String(128), existing_type=sa.Text(),
                           existing_nullable=False)
