"""What running a run needs from its host, as an interface: the executor, the ledger
procedure and failure containment depend on this, never on :class:`keepflow.runtime.host.Host`
itself — the host is wired from these parts, they do not know it (no import cycle)."""

from __future__ import annotations

from typing import Protocol

from keepflow.clock import Clock
from keepflow.connectors.config import Connections
from keepflow.policies import PolicyBook
from keepflow.runtime.routing import RepairHook
from keepflow.sandbox.pool import SandboxPool
from keepflow.store.store import Store


class RunParts(Protocol):
    """The store, sandbox, connections, policies and clock a run uses."""

    @property
    def store(self) -> Store: ...

    @property
    def connections(self) -> Connections: ...

    @property
    def policies(self) -> PolicyBook: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def pool(self) -> SandboxPool: ...

    @property
    def connections_problem(self) -> str | None:
        """Why the latest edit of the connections file is not in force, if it is not."""
        ...

    @property
    def repair_hook(self) -> RepairHook: ...
