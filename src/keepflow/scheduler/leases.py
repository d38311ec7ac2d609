"""The leases a host holds (SPEC §13): taken in bulk at start, renewed in bulk, released at
stop. A workflow whose lease another live host holds is not scheduled here.

A lease lasts ``ttl`` from its last renewal; the store takes one that is free, expired, or held
by a process known to be dead (:func:`stale_owners`), and refuses every commit of a host that
no longer holds it (the fence). The loop renews every :data:`RENEW_SECONDS`, well inside the
TTL (:func:`renewal_due`), so a live host never loses one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Protocol

from keepflow.model import LEASE_TTL, Fence
from keepflow.runtime.host import dead_local_process
from keepflow.store.store import Store

#: How often a host renews its leases (seconds): a fifth of the lease's lifetime.
RENEW_SECONDS = 60.0


class LeaseHolder(Protocol):
    """What leases need of a host (``runtime.host.Host``)."""

    @property
    def store(self) -> Store: ...

    @property
    def owner(self) -> str: ...


def stale_owners(owners: Iterable[str], is_dead: Callable[[str], bool]) -> list[str]:
    """The lease owners whose leases may be taken at once: processes known to be gone."""
    return [o for o in owners if is_dead(o)]


def newly_held(before: Iterable[str], fences: Mapping[str, Fence]) -> set[str]:
    """The workflows whose leases are held now and were not held ``before``."""
    return set(fences) - set(before)


def renewal_due(now: float, next_renewal: float) -> tuple[bool, float]:
    """Whether the leases are renewed at ``now`` (loop time), and when next."""
    if now >= next_renewal:
        return True, now + RENEW_SECONDS
    return False, next_renewal


class Leases:
    def __init__(self, host: LeaseHolder, ttl: timedelta = LEASE_TTL, *,
                 is_dead: Callable[[str], bool] = dead_local_process) -> None:
        self.host = host
        self.ttl = ttl
        self.is_dead = is_dead
        self._fences: dict[str, Fence] = {}

    def acquire_all(self) -> set[str]:
        """Take every lease we can; returns the workflow ids newly held."""
        stale = stale_owners(self.host.store.lease_owners(), self.is_dead)
        fences = self.host.store.acquire_all_leases(self.host.owner, self.ttl, stale)
        new = newly_held(self._fences, fences)
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
