"""Unit tests' fixtures: a fake clock and an in-memory SQLite store (no files, no servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keepflow.clock import FakeClock
from keepflow.store.store import Store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[Store]:
    """A migrated store in memory, on the fake clock."""
    s = Store("sqlite://", clock=clock.now)
    yield s
    s.close()
