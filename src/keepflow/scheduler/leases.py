"""The leases a host holds (SPEC §13): taken in bulk at start, renewed in bulk, released at
stop. A workflow whose lease another live host holds is not scheduled here."""

from __future__ import annotations

from datetime import timedelta

from keepflow.model import LEASE_TTL, Fence
from keepflow.runtime.host import Host, dead_local_process


class Leases:
    def __init__(self, host: Host, ttl: timedelta = LEASE_TTL) -> None:
        self.host = host
        self.ttl = ttl
        self._fences: dict[str, Fence] = {}

    def acquire_all(self) -> set[str]:
        """Take every lease we can; returns the workflow ids newly held."""
        stale = [o for o in self.host.store.lease_owners() if dead_local_process(o)]
        fences = self.host.store.acquire_all_leases(self.host.owner, self.ttl, stale)
        new = set(fences) - set(self._fences)
        self._fences = fences
        return new

    def renew(self) -> None:
        self.host.store.renew_leases(self.host.owner, self.ttl)

    def held(self) -> set[str]:
        return set(self._fences)

    def fence(self, workflow_id: str) -> Fence | None:
        return self._fences.get(workflow_id)

    def release_all(self) -> None:
        self.host.store.release_all_leases(self.host.owner)
        self._fences.clear()
