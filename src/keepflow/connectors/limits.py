"""Limits the host enforces on every call to a connection (SPEC §9, docs/connectors.md#call-limits).

External services limit their callers; keepflow keeps to those limits itself instead of
learning them one refused request at a time. Each connection has a :class:`Throttle`, shared
by every run of every workflow of the host process:

* **rate** — ``rate_limit`` calls per second (or ``"30/min"``, ``"1000/h"``) with ``burst``
  calls allowed back to back: a token bucket. A call waits for its token;
* **concurrency** — at most ``concurrency`` calls of the connection in flight at once;
* **back-off** — when a call ends in a rate limit with a ``Retry-After`` (the connector raises
  :class:`~keepflow.errors.TransientError` with ``retry_after``), every call of the
  connection waits that long, not just the one that was refused: the host stops hammering a
  service that asked it to wait.

A call waits at most :data:`MAX_WAIT` seconds (and never longer than its own timeout) for any
of these; when it would have to wait longer, it fails with a ``TransientError`` before anything
is sent, carrying how long to wait — so a read is retried inside its run after the wait and a
mutation's attempt is retried by the executor (SPEC §7.4). Nothing ever fails *because of*
a limit: it only waits.

Waiting goes through the run's :class:`~keepflow.clock.Clock` (tests are exact and fast);
only the concurrency slot waits in real time, for other threads to finish their calls.

Connector types may declare sensible defaults (``Connector.default_limits``, from the
service's published limits); ``connections.toml`` overrides them per connection.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from keepflow.clock import Clock
from keepflow.errors import ConfigError, TransientError

#: The keys of a ``[connections.<name>]`` table that configure the host's limits; they are
#: taken out before the connector sees its settings.
LIMIT_KEYS: Final = frozenset({"rate_limit", "burst", "concurrency"})
#: Seconds a call waits at most for its turn before it fails transiently (and is retried).
MAX_WAIT: Final = 30.0
#: Seconds a service's Retry-After holds the connection at most (a larger number is capped).
MAX_BACKOFF: Final = 3600.0
MAX_RATE: Final = 10_000.0
MAX_BURST: Final = 10_000
MAX_CONCURRENCY: Final = 256
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
        "hour": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*\Z")


@dataclass(frozen=True)
class CallLimits:
    """How a connection may be called: ``None`` means unlimited."""

    #: Calls per second on average.
    rate: float | None = None
    #: Calls allowed back to back (the bucket's size); defaults to the rate, at least 1.
    burst: int | None = None
    #: Calls in flight at once.
    concurrency: int | None = None

    @property
    def bucket(self) -> float:
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, math.floor(self.rate or 1.0))

    def describe(self) -> str:
        parts = []
        if self.rate is not None:
            parts.append(f"{self.rate:g} calls/s (burst {self.bucket:g})")
        if self.concurrency is not None:
            parts.append(f"{self.concurrency} at once")
        return ", ".join(parts) or "unlimited"


def parse_limits(entry: Mapping[str, Any], defaults: CallLimits) -> CallLimits:
    """The limits of one ``[connections.<name>]`` table over the type's ``defaults``; raises
    :class:`ConfigError` with ``key=`` naming a bad key."""
    rate, burst, concurrency = defaults.rate, defaults.burst, defaults.concurrency
    if "rate_limit" in entry:
        rate = _rate(entry["rate_limit"])
        if "burst" not in entry:
            burst = None  # a new rate brings its own default burst
    if "burst" in entry:
        burst = _count(entry["burst"], "burst", MAX_BURST)
    if "concurrency" in entry:
        concurrency = _count(entry["concurrency"], "concurrency", MAX_CONCURRENCY)
    return CallLimits(rate=rate, burst=burst, concurrency=concurrency)


def _rate(value: Any) -> float:
    problem = ('must be calls per second (a number, e.g. 5 or 0.5) or a string such as '
               '"30/min" or "1000/h"')
    if isinstance(value, bool):
        raise ConfigError(problem, key="rate_limit")
    if isinstance(value, (int, float)):
        per_second = float(value)
    elif isinstance(value, str) and (m := _RATE.match(value.lower())) and m[2] in _PER:
        per_second = float(m[1]) / _PER[m[2]]
    else:
        raise ConfigError(problem, key="rate_limit")
    if not (math.isfinite(per_second) and 0 < per_second <= MAX_RATE):
        raise ConfigError(f"must be more than 0 and at most {MAX_RATE:g} calls per second",
                          key="rate_limit")
    return per_second


def _count(value: Any, key: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ConfigError(f"must be a whole number from 1 to {most}", key=key)
    return value


class Throttle:
    """The limits of one connection in force, and their state (thread-safe)."""

    def __init__(self, name: str, limits: CallLimits) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._limits = limits
        self._tokens = limits.bucket
        self._filled_at: float | None = None
        self._held_until = -math.inf  # a service's Retry-After, on the clock's time line
        self._slots = _Slots(limits.concurrency)

    @property
    def limits(self) -> CallLimits:
        return self._limits

    def update(self, limits: CallLimits) -> None:
        """New limits from an edited ``connections.toml``; the back-off in force stays."""
        with self._lock:
            if limits == self._limits:
                return
            self._limits = limits
            self._tokens = min(self._tokens, limits.bucket)
            self._slots = _Slots(limits.concurrency)

    def held_for(self, clock: Clock) -> float:
        """Seconds the connection is still held by a service's Retry-After (0 if not)."""
        with self._lock:
            return max(0.0, self._held_until - _seconds(clock))

    def back_off(self, clock: Clock, seconds: float | None) -> None:
        """The service asked to wait ``seconds``: hold every call of the connection."""
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            return
        with self._lock:
            until = _seconds(clock) + min(seconds, MAX_BACKOFF)
            self._held_until = max(self._held_until, until)

    @contextmanager
    def slot(self, clock: Clock, timeout: float) -> Iterator[None]:
        """Hold a turn to call the connection for the ``with`` block (waiting at most
        ``min(timeout, MAX_WAIT)`` in all), or raise ``TransientError`` before any call."""
        budget = max(0.0, min(timeout, MAX_WAIT))
        waited = self._wait_for_turn(clock, budget)
        slots = self._slots
        if not slots.acquire(max(0.0, budget - waited)):
            raise TransientError(
                f"connection '{self.name}' already has {slots.size} calls in flight, its "
                "concurrency limit (docs/connectors.md#call-limits); the call is tried again "
                "shortly", retry_after=1.0, connection=self.name, limit="concurrency")
        try:
            yield
        finally:
            slots.release()

    def _wait_for_turn(self, clock: Clock, budget: float) -> float:
        """Wait out a back-off and take a rate token; the seconds waited."""
        with self._lock:
            now = _seconds(clock)
            held = self._held_until - now
            if held > budget:
                raise TransientError(
                    f"the service asked keepflow to wait {held:.0f}s before calling "
                    f"connection '{self.name}' again (rate limited); the call is tried again "
                    "after that (docs/connectors.md#call-limits)", retry_after=held,
                    connection=self.name, limit="retry_after")
            wait = max(0.0, held)
            rate = self._limits.rate
            if rate is not None:
                if self._filled_at is not None:
                    self._tokens = min(self._limits.bucket,
                                       self._tokens + (now - self._filled_at) * rate)
                self._filled_at = now
                short = max(0.0, 1.0 - self._tokens) / rate
                if max(wait, short) > budget:
                    raise TransientError(
                        f"connection '{self.name}' is at its rate limit of "
                        f"{self._limits.describe()} (docs/connectors.md#call-limits); the "
                        "call is tried again shortly", retry_after=max(wait, short),
                        connection=self.name, limit="rate")
                self._tokens -= 1.0  # reserved now: later callers queue behind this one
                wait = max(wait, short)
        if wait > 0:
            clock.sleep(wait)
        return wait


class _Slots:
    """A semaphore of ``size`` (unbounded when ``None``), that knows its size."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self._sem = threading.BoundedSemaphore(size) if size is not None else None

    def acquire(self, timeout: float) -> bool:
        return True if self._sem is None else self._sem.acquire(timeout=timeout)

    def release(self) -> None:
        if self._sem is not None:
            self._sem.release()


class Throttles:
    """Throttles by connection name, kept across reloads of ``connections.toml`` (a rotated
    secret or an edited file must not reset a back-off the service asked for)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Throttle] = {}

    def get(self, name: str, limits: CallLimits) -> Throttle:
        with self._lock:
            throttle = self._by_name.get(name)
            if throttle is None:
                throttle = self._by_name[name] = Throttle(name, limits)
                return throttle
        throttle.update(limits)
        return throttle


def _seconds(clock: Clock) -> float:
    return clock.now().timestamp()
