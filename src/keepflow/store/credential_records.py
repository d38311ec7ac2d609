"""Rows of ``credentials``: sealed connection secrets (``keepflow.credentials`` seals and
opens them; this module only keeps them). The ciphertext never leaves through a listing."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from keepflow.store.schema import credentials
from keepflow.store.workflows import ACTOR_MAX


def put_txn(conn: Connection, name: str, ciphertext: str, actor: str, now: datetime) -> bool:
    """Insert or replace; True when a credential of this name existed."""
    changed = conn.execute(update(credentials).where(credentials.c.name == name).values(
        ciphertext=ciphertext, updated_at=now, updated_by=actor[:ACTOR_MAX])).rowcount
    if not changed:
        conn.execute(insert(credentials).values(name=name, ciphertext=ciphertext, created_at=now,
                                                updated_at=now, updated_by=actor[:ACTOR_MAX]))
    return bool(changed)


def ciphertext(conn: Connection, name: str) -> str | None:
    row = conn.execute(select(credentials.c.ciphertext).where(credentials.c.name == name)
                       ).first()
    return None if row is None else str(row.ciphertext)


def delete_txn(conn: Connection, names: list[str]) -> list[str]:
    """Delete these credentials; the names that existed."""
    found = [r.name for r in conn.execute(select(credentials.c.name)
                                          .where(credentials.c.name.in_(names)))]
    if found:
        conn.execute(delete(credentials).where(credentials.c.name.in_(found)))
    return sorted(found)


def listing(conn: Connection, prefix: str = "") -> list[dict[str, Any]]:
    """Name and times of every credential (never the ciphertext)."""
    q = select(credentials.c.name, credentials.c.created_at, credentials.c.updated_at,
               credentials.c.updated_by).order_by(credentials.c.name)
    if prefix:
        q = q.where(credentials.c.name.startswith(prefix, autoescape=True))
    return [dict(r._mapping) for r in conn.execute(q)]


def marker(conn: Connection) -> str:
    """Changes whenever a credential is set or removed (the connections reload on it): a
    digest of every name and ciphertext — a Fernet token is new on every sealing, so even two
    writes within one tick of the clock tell apart. Only the digest leaves this function."""
    digest = hashlib.sha256()
    for row in conn.execute(select(credentials.c.name, credentials.c.ciphertext)
                            .order_by(credentials.c.name)):
        digest.update(f"{row.name}\0{row.ciphertext}\0".encode())
    return digest.hexdigest()
