"""The host's limits on calls to a connection: rate, concurrency, a service's Retry-After
(SPEC §9; docs/connectors.md#call-limits)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections, parse_connections
from keepflow.connectors.limits import (
    MAX_WAIT,
    CallLimits,
    Throttle,
    Throttles,
    parse_limits,
)
from keepflow.errors import ConfigError, TransientError


@pytest.mark.parametrize(("value", "rate"), [
    (5, 5.0), (0.5, 0.5), ("30/min", 0.5), ("3600 / h", 1.0), ("2/s", 2.0), ("10/second", 10.0),
])
def test_rates_are_read_per_second(value: Any, rate: float) -> None:
    assert parse_limits({"rate_limit": value}, CallLimits()).rate == pytest.approx(rate)


@pytest.mark.parametrize("value", [0, -1, True, "fast", "5/week", "1e9/s", float("inf"),
                                   float("nan"), [5], "5/", "/s", 10**9])
def test_bad_rates_name_the_key(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_limits({"rate_limit": value}, CallLimits())
    assert err.value.details["key"] == "rate_limit"


@pytest.mark.parametrize(("key", "value"), [("burst", 0), ("burst", 1.5), ("burst", True),
                                            ("concurrency", 0), ("concurrency", 257),
                                            ("concurrency", "4")])
def test_bad_counts_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_limits({key: value}, CallLimits())
    assert err.value.details["key"] == key


def test_the_file_overrides_the_types_defaults_key_by_key() -> None:
    defaults = CallLimits(rate=3.0, burst=10, concurrency=2)
    assert parse_limits({}, defaults) == defaults
    assert parse_limits({"concurrency": 8}, defaults) == CallLimits(3.0, 10, 8)
    # A new rate brings its own default burst unless the file sets one too.
    assert parse_limits({"rate_limit": 1}, defaults) == CallLimits(1.0, None, 2)
    assert parse_limits({"rate_limit": 1, "burst": 4}, defaults) == CallLimits(1.0, 4, 2)


def test_connections_toml_limits_reach_the_throttle_not_the_connector() -> None:
    [_, api] = parse_connections({"connections": {"api": {
        "type": "http", "base_url": "http://127.0.0.1:9", "rate_limit": "120/min",
        "burst": 3, "concurrency": 2}}})
    assert "rate_limit" not in api.settings
    assert "concurrency" not in api.settings
    assert api.limits == CallLimits(rate=2.0, burst=3, concurrency=2)
    with Connections([api]) as conns:
        assert conns.throttle("api").limits == CallLimits(2.0, 3, 2)
        assert conns.throttle("api") is conns.throttle("api")


def test_a_bad_limit_in_the_file_names_the_connection_and_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_connections({"connections": {"api": {"type": "http", "concurrency": 0}}})
    assert "connection 'api'" in err.value.message
    assert "key 'concurrency'" in err.value.message


def test_without_limits_a_connection_is_unlimited() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits())
    for _ in range(1000):
        with t.slot(clock, 1.0):
            pass
    assert clock.slept == []


def test_the_rate_lets_a_burst_through_then_spaces_calls() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits(rate=2.0, burst=3))
    for _ in range(3):
        with t.slot(clock, 5.0):
            pass
    assert clock.slept == []  # the burst
    with t.slot(clock, 5.0):
        pass
    assert clock.slept == [pytest.approx(0.5)]  # then one token every 1/rate seconds
    clock.advance(10)  # idle time refills the bucket, up to its size only
    for _ in range(3):
        with t.slot(clock, 5.0):
            pass
    assert len(clock.slept) == 1


def test_a_call_that_would_wait_too_long_fails_transiently_before_it_is_made() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits(rate=0.1, burst=1))
    with t.slot(clock, 1.0):
        pass
    calls = []
    with pytest.raises(TransientError) as err, t.slot(clock, 1.0):
        calls.append(1)
    assert calls == []
    assert err.value.retry_after == pytest.approx(10.0)
    assert "rate limit" in err.value.message
    assert "docs/connectors.md#call-limits" in err.value.message


def test_a_retry_after_holds_every_call_of_the_connection() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits())
    t.back_off(clock, 2.0)
    assert t.held_for(clock) == pytest.approx(2.0)
    with t.slot(clock, 5.0):  # waits it out
        pass
    assert clock.slept == [pytest.approx(2.0)]
    t.back_off(clock, 120.0)
    with pytest.raises(TransientError) as err, t.slot(clock, 5.0):
        pass
    assert err.value.retry_after == pytest.approx(120.0)
    assert "asked keepflow to wait" in err.value.message


@pytest.mark.parametrize("seconds", [None, 0, -5, float("nan"), float("inf")])
def test_a_meaningless_retry_after_holds_nothing(seconds: float | None) -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits())
    t.back_off(clock, seconds)
    assert t.held_for(clock) == 0.0


def test_a_huge_retry_after_is_capped() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits())
    t.back_off(clock, 10**9)
    assert t.held_for(clock) == pytest.approx(3600.0)


def test_waiting_never_exceeds_the_calls_timeout_or_max_wait() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits())
    t.back_off(clock, MAX_WAIT + 1)
    with pytest.raises(TransientError), t.slot(clock, 10 * MAX_WAIT):
        pass


def test_concurrency_bounds_calls_in_flight_across_threads() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits(concurrency=2))
    inside, peak, lock = 0, 0, threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        with t.slot(clock, 5.0):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert peak == 2


def test_a_full_connection_refuses_transiently_after_the_timeout() -> None:
    clock = FakeClock()
    t = Throttle("api", CallLimits(concurrency=1))
    with t.slot(clock, 1.0), pytest.raises(TransientError) as err, t.slot(clock, 0.05):
        pass
    assert "1 calls in flight" in err.value.message
    with t.slot(clock, 0.05):  # released: free again
        pass


def test_state_outlives_a_reload_and_new_limits_apply() -> None:
    clock = FakeClock()
    throttles = Throttles()
    first = Connections([ConnectionConfig("api", "http", {})], throttles=throttles)
    first.throttle("api").back_off(clock, 5.0)
    again = Connections([ConnectionConfig("api", "http", {}, CallLimits(concurrency=3))],
                        throttles=throttles)
    assert again.throttle("api").held_for(clock) == pytest.approx(5.0)
    assert again.throttle("api").limits.concurrency == 3
