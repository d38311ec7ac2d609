"""Alembic environment: migrations run on the connection the host hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from keepflow.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite needs table rebuilds for most ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # command-line use by developers: `alembic -x url=... revision --autogenerate`
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database URL: alembic -x url=<sqlalchemy url> ...")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
