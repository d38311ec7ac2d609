"""What the Store's parts share: the engine, the clock, and one-transaction helpers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from keepflow.errors import KeepflowError, StoreError
from keepflow.store.database import READ_ONLY


class StoreBase:
    engine: Engine
    clock: Callable[[], datetime]
    #: SQLite has one writer at a time; threads of this process queue on this lock instead
    #: of SQLite's sleep-and-retry busy handler (much faster hand-over under contention).
    _write_lock: threading.Lock | None = None

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Nothing above the store sees a driver exception (STYLE: errors at the boundary)."""
        try:
            yield
        except KeepflowError:
            raise
        except sa_exc.SQLAlchemyError as exc:
            first = exc.args[0] if exc.args else exc
            raise StoreError(f"store error: {type(exc).__name__}: {first}") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self._translate(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._translate(), self.engine.connect() as raw:
            conn = raw.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn
