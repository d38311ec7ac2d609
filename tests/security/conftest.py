"""Fixtures of the security suite: the integration fixtures (a real store on SQLite and
PostgreSQL, the real sandbox pool, a loopback HTTP sink, a real SQL target database)."""

from tests.integration.conftest import clock, host, pool, sink, target_db

__all__ = ["clock", "host", "pool", "sink", "target_db"]
