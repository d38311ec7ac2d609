"""The host runtime object: store, sandbox pool, connections, policies and clock, wired once.

No process-global singletons: every surface (CLI, service, tests) builds a :class:`Host` and
passes it explicitly.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from keepflow.clock import Clock, SystemClock
from keepflow.connectors.config import Connections, ConnectionsFile
from keepflow.credentials.vault import Vault
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
        self._owns = {"store": store is None}
        self.store = store or Store(self.settings.store_url, clock=self.clock.now)
        # Given connections are fixed; otherwise connections.toml is read on first use (so
        # looking at state works while the file is broken) and re-read when it changes.
        self._fixed_connections = connections
        self.vault = Vault(self.store, self.settings.home)
        self.connections_file = (ConnectionsFile(self.settings.connections_file,
                                                 stored=self.vault.get,
                                                 generation=self._credentials_generation)
                                 if connections is None else None)
        self._generation: tuple[float, str] = (0.0, "")
        self._policies = policies  # policy.toml is read on first use, like the connections
        self._pool = pool
        self._owns_pool = pool is None
        self.owner = f"{_machine()}:{os.getpid()}:{new_id()[-8:]}"
        self.repair_hook: RepairHook = no_repair
        self.handoff: Handoff = handoff or NoHandoff()
        self.executor = Executor(self)

    def _credentials_generation(self) -> str:
        """The store's credentials marker, read at most once a second: a rotated secret
        reaches new runs within a second, and a run does not pay a query for it."""
        at, marker = self._generation
        now = time.monotonic()
        if now - at >= 1.0:
            marker = self.vault.marker()
            self._generation = (now, marker)
        return marker

    def credentials_changed(self) -> None:
        """This process just changed a stored credential: the next run reads it (no 1 s wait)."""
        self._generation = (0.0, "")

    @property
    def pool(self) -> SandboxPool:
        """Sandbox workers start on first use: read-only commands never pay for them."""
        if self._pool is None:
            self._pool = SandboxPool(size=self.settings.sandbox_workers)
        return self._pool

    @property
    def started_pool(self) -> SandboxPool | None:
        """The sandbox pool if its workers were started (looking never starts them)."""
        return self._pool

    @property
    def policies(self) -> PolicyBook:
        if self._policies is None:
            self._policies = PolicyBook.load(self.settings.policy_file)
        return self._policies

    @policies.setter
    def policies(self, book: PolicyBook) -> None:
        self._policies = book

    @property
    def connections(self) -> Connections:
        """The connections in force now (a run takes them once and keeps them to its end)."""
        if self.connections_file is None:
            assert self._fixed_connections is not None
            return self._fixed_connections
        return self.connections_file.current()

    @property
    def connections_problem(self) -> str | None:
        """Why the connections file's latest edit is not in force, if it is not."""
        problem = self.connections_file.problem if self.connections_file else None
        return problem.message if problem else None

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
        if self.connections_file is not None:
            self.connections_file.close()
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
