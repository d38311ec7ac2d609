"""Fixtures of the notification tests: a real store on both backends, an HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from keepflow.clock import FakeClock
from keepflow.store.store import Store


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[Store]:
    s = Store(store_url, clock=clock.now)
    yield s
    s.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c
