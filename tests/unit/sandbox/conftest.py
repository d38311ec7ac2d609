"""One real pool of real worker processes, shared by the sandbox tests of this directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keepflow.sandbox.pool import SandboxPool


@pytest.fixture(scope="session")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(size=2) as p:
        yield p
