"""The host runtime object: store, sandbox pool, connections, policies and clock, wired once.

No process-global singletons: every surface (CLI, service, tests) builds a :class:`Host` and
passes it explicitly.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Protocol

from keepflow.clock import Clock, SystemClock
from keepflow.connectors.base import ToolKind
from keepflow.connectors.config import Connections, load_connections
from keepflow.errors import Conflict
from keepflow.ids import new_id
from keepflow.model import Fence, WorkflowRecord
from keepflow.policies import PolicyBook
from keepflow.runtime.executor import Executor
from keepflow.runtime.routing import RepairHook, no_repair
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.store.store import Store


class Handoff(Protocol):
    """Who carries a workflow's run on after a person's answer, when not this process.

    The service layer asks; it does not know how the answer travels (the CLI's adapter,
    ``keepflow.server.link.ServerLink``, tells a running server over its API)."""

    def hand_over(self, workflow: str) -> bool:
        """Have another process carry ``workflow`` on now; False: do it here."""
        ...


class NoHandoff:
    """This process is the only one: every run is carried on here."""

    def hand_over(self, workflow: str) -> bool:
        return False


class Host:
    def __init__(
        self, settings: Settings | None = None, *, clock: Clock | None = None,
        store: Store | None = None, connections: Connections | None = None,
        policies: PolicyBook | None = None, pool: SandboxPool | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.clock = clock or SystemClock()
        self._owns = {"store": store is None, "connections": connections is None}
        self.store = store or Store(self.settings.store_url, clock=self.clock.now)
        self.connections = connections or load_connections(self.settings.connections_file)
        self.policies = policies or PolicyBook.load(self.settings.policy_file)
        self._pool = pool
        self._owns_pool = pool is None
        self.owner = f"{_machine()}:{os.getpid()}:{new_id()[-8:]}"
        self.repair_hook: RepairHook = no_repair
        self.handoff: Handoff = handoff or NoHandoff()
        self.executor = Executor(self)

    @property
    def pool(self) -> SandboxPool:
        """Sandbox workers start on first use: read-only commands never pay for them."""
        if self._pool is None:
            self._pool = SandboxPool(size=self.settings.sandbox_workers)
        return self._pool

    @cached_property
    def stub_shape(self) -> dict[str, tuple[str, ...]]:
        """``ctx.<connection>.<tool>`` stubs every invocation gets."""
        return {name: tuple(tools) for name, tools in self.connections.tool_kinds().items()}

    @cached_property
    def terminal_shape(self) -> dict[str, tuple[str, ...]]:
        """The mutating tools among them: calling one ends the invocation (SPEC §5.2)."""
        return {name: tuple(t for t, kind in tools.items() if kind is ToolKind.MUTATE)
                for name, tools in self.connections.tool_kinds().items()}

    @contextmanager
    def lease(self, wf: WorkflowRecord) -> Iterator[Fence]:
        """Hold the workflow's lease (SPEC §13): one host runs a workflow at a time."""
        fence = self.store.acquire_lease(wf.id, self.owner)
        if fence is None:
            holder = self.store.lease_owner(wf.id)
            if holder and dead_local_process(holder):
                # A process on this machine died holding the lease (e.g. killed): take over.
                fence = self.store.acquire_lease(wf.id, self.owner, stale_owner=holder)
        if fence is None:
            raise Conflict(
                f"workflow '{wf.name}' is being run by another keepflow process right now; "
                "wait for it to finish (or stop it) and try again")
        try:
            yield fence
        finally:
            self.store.release_lease(fence)

    def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            self._pool.close()
        if self._owns["connections"]:
            self.connections.close()
        if self._owns["store"]:
            self.store.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _machine() -> str:
    """This machine's name as lease owners carry it: at most 40 characters, so
    ``machine:pid:nonce`` always fits the store's column (a host name may be 253)."""
    name = socket.gethostname().replace(":", "_")
    return name if len(name) <= 40 else name[:31] + "~" + hashlib.sha256(name.encode()
                                                                          ).hexdigest()[:8]


def dead_local_process(owner: str) -> bool:
    """Whether a lease owner ``host:pid:nonce`` names a process of this machine that is gone."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _machine() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
