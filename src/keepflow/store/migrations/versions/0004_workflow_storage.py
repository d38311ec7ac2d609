"""workflow storage accounting

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Bytes each workflow makes the store keep (policy limits.workflow_storage_bytes).
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger(), server_default=sa.text("0"),
                                   nullable=False))
    # Existing events count from the start; run logs written before this revision do not.
    size = ("octet_length(CAST(e.payload AS TEXT)) + octet_length(e.title) + "
            "octet_length(e.message_id)")
    if op.get_bind().dialect.name == "sqlite":
        size = "length(CAST(e.payload AS BLOB)) + length(CAST(e.title AS BLOB)) + " \
               "length(CAST(e.message_id AS BLOB))"
    # No user input: a fixed expression per dialect.
    op.execute(
        f"UPDATE workflows SET stored_bytes = COALESCE((SELECT SUM({size}) FROM events e "  # noqa: S608
        "WHERE e.workflow_id = workflows.id), 0)")


def downgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("stored_bytes")
