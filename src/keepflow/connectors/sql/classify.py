"""Translate SQLAlchemy / DB-API exceptions into keepflow's typed errors (SPEC §8).

This module is the boundary: nothing above the ``sql`` connector imports ``sqlalchemy.exc``.
The decisive input besides the error itself is *when* it happened:

* before COMMIT was sent, the database rolls the transaction back whatever went wrong
  (PostgreSQL aborts an uncommitted transaction when the connection drops; SQLite is
  in-process and atomic), so every failure is definite: ``TransientError`` if trying again
  can help (busy, locked, deadlock, connection lost, timeout), otherwise a permanent class;
* during COMMIT, a lost connection means nobody can say whether the commit happened:
  ``UncertainOutcome``, and the host reconciles by key (SPEC §6). Errors the server reports
  *as an answer* to COMMIT (serialization failure, deferred constraint) are still definite.

PostgreSQL errors are classified by SQLSTATE. Connection-time failures carry no SQLSTATE in
psycopg, so for those (and for SQLite's generic ``SQLITE_ERROR``) the server's message is the
only evidence; the patterns below are the single place where text is inspected.
"""

from __future__ import annotations

import re

from sqlalchemy import exc as sa_exc

from keepflow.connectors.secret import Redactor
from keepflow.connectors.sql.allow import shown
from keepflow.connectors.sql.limits import ResultLimits
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

_PG_AUTH = re.compile(
    r"password authentication failed|role \".*\" does not exist|no pg_hba\.conf entry|"
    r"(peer|ident|scram|gss|sspi|cert) authentication failed|password is missing|"
    r"fe_sendauth", re.IGNORECASE)
_PG_NO_DATABASE = re.compile(r"database \".*\" does not exist", re.IGNORECASE)
_PG_TRANSIENT_STATES = ("40", "53", "55P03", "57014", "57P", "08", "HV")
_SQLITE_NO_TABLE = re.compile(r"no such table: (.+)")
#: The error keepflow's own guard around a PostgreSQL query raises once the rows sent so far
#: exceed ``max_bytes`` (sql/query.py): a failed cast whose text carries this marker.
PG_TOO_LARGE_MARKER = "keepflow_max_bytes_exceeded"
#: Longest part of a database's own error message kept in keepflow's message.
MAX_REASON = 500
_PG_TOO_LARGE = re.compile(rf'"{PG_TOO_LARGE_MARKER} (at row \d+|in one row of (\d+))"')


def sqlite_missing_table(exc: BaseException) -> str | None:
    """The name in SQLite's "no such table: X" error, if that is what ``exc`` is (SQLite
    gives no other way to tell; used so a missing table outside the allow-list is refused
    like an existing one)."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    m = _SQLITE_NO_TABLE.match(str(orig).strip())
    return m.group(1) if m else None


def translate(exc: BaseException, *, what: str, sqlite: bool, committing: bool = False,
              read_only: bool = False, redact: Redactor | None = None,
              limits: ResultLimits | None = None,
              value_limit: int | None = None) -> ConnectorError:
    """The typed error for ``exc``, raised while doing ``what`` (used in the message).

    ``limits`` and ``value_limit`` (the per-value limit SQLite was given for this call, if
    any) turn the database's "too big" answers into errors that name the limit."""
    if isinstance(exc, ConnectorError):
        return exc
    redact = redact or Redactor(())
    if isinstance(exc, sa_exc.NoSuchTableError):
        return PreconditionError(f"{what}: table {exc} does not exist")
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else None
    if orig is None:
        if isinstance(exc, sa_exc.StatementError):  # e.g. a value a column type refuses
            cause = exc.orig if exc.orig is not None else exc
            return PermanentError(f"{what}: {_reason(cause, redact)}")
        return PermanentError(f"{what}: {_reason(exc, redact)}")
    reason = _reason(orig, redact)
    message = f"{what}: {reason}"
    if sqlite and getattr(orig, "sqlite_errorname", None) == "SQLITE_TOOBIG" and not committing:
        if limits is not None and value_limit is not None:
            return limits.value_too_large(what, value_limit)
        return PermanentError(f"{message} (a value is larger than SQLite allows)",
                              sqlite_error="SQLITE_TOOBIG")
    if not sqlite and limits is not None and getattr(orig, "sqlstate", None) == "22P02" and (
            m := _PG_TOO_LARGE.search(str(orig))) is not None:
        where = f"one row alone has {m.group(2)} bytes" if m.group(2) else \
            f"reading stopped {m.group(1)}"
        return limits.too_large(what, where)
    if sqlite:
        return _sqlite(orig, message, committing=committing, read_only=read_only)
    invalidated = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    return _postgres(orig, message, committing=committing, invalidated=invalidated,
                     operational=isinstance(exc, (sa_exc.OperationalError,
                                                  sa_exc.InterfaceError)))


def _reason(exc: BaseException, redact: Redactor) -> str:
    """The first line of the database's message, redacted, escaped and cut short: the
    server's text is untrusted too (``CAST(repeat('x', 20000000) AS int)`` makes PostgreSQL
    quote 20 MB of it back), and it travels to the script, the ledger and the UI."""
    text = str(exc)[:MAX_REASON * 4].strip()  # cut first: no copy of a huge message
    first = text.splitlines()[0] if text else type(exc).__name__
    return shown(redact.text(first), MAX_REASON)


def _postgres(orig: BaseException, message: str, *, committing: bool, invalidated: bool,
              operational: bool) -> ConnectorError:
    state: str = getattr(orig, "sqlstate", None) or ""
    text = str(orig)
    if committing:
        if state.startswith("40"):
            return TransientError(f"{message} (the commit was refused; nothing was written)",
                                  sqlstate=state)
        if state and not state.startswith(("08", "57P", "XX")) and not invalidated:
            return PermanentError(f"{message} (the commit was refused)", sqlstate=state)
        return UncertainOutcome(
            f"{message}: the connection failed during COMMIT; the change may or may not have "
            "been committed", sqlstate=state or None)
    if state.startswith("28") or (not state and _PG_AUTH.search(text)):
        return AuthError(f"{message}: check the connection's credentials", sqlstate=state or None)
    if state == "3D000" or (not state and _PG_NO_DATABASE.search(text)):
        return PreconditionError(message, sqlstate=state or None)
    if state in ("42P01", "3F000"):
        return PreconditionError(message, sqlstate=state)
    if state == "42501":
        return PermissionDenied(message, sqlstate=state)
    if state == "25006":
        return PermanentError(f"{message} (query is read-only)", sqlstate=state)
    if state.startswith(_PG_TRANSIENT_STATES) or (not state and operational):
        return TransientError(f"{message} (nothing was written)", sqlstate=state or None)
    return PermanentError(message, sqlstate=state or None)


def _sqlite(orig: BaseException, message: str, *, committing: bool,
            read_only: bool) -> ConnectorError:
    name: str = getattr(orig, "sqlite_errorname", None) or ""
    text = str(orig)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        # Also at COMMIT: SQLite leaves the transaction open and we roll it back.
        return TransientError(f"{message} (the database is busy; nothing was written)",
                              sqlite_error=name)
    if committing:
        return UncertainOutcome(f"{message}: COMMIT failed; the change may or may not be on "
                                "disk", sqlite_error=name or None)
    if name == "SQLITE_INTERRUPT":
        return TransientError(f"{message} (the call timed out; nothing was written)",
                              sqlite_error=name)
    if name.startswith(("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_NOMEM", "SQLITE_PROTOCOL")):
        return TransientError(message, sqlite_error=name)
    if name.startswith("SQLITE_CANTOPEN"):
        return PreconditionError(f"{message} (the database file is missing or unreadable)",
                                 sqlite_error=name)
    if name.startswith("SQLITE_READONLY"):
        if read_only:
            return PermanentError(f"{message} (query is read-only)", sqlite_error=name)
        return PermissionDenied(f"{message} (the database file is not writable)",
                                sqlite_error=name)
    if name == "SQLITE_AUTH":
        return PermissionDenied(message, sqlite_error=name)
    if text.startswith("no such table"):
        return PreconditionError(message, sqlite_error=name or None)
    return PermanentError(message, sqlite_error=name or None)
