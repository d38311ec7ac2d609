"""Runaway scripts hit sandbox limits; the pool stays usable (SPEC §8: sandbox limits are
logic failures)."""

from __future__ import annotations

import pytest

from keepflow.errors import SandboxLimitExceeded
from keepflow.sandbox.api import SandboxLimits
from keepflow.sandbox.pool import SandboxPool
from tests.support.sandbox import Host, assert_pool_works, run_script, workflow

pytestmark = pytest.mark.integration

FAST = SandboxLimits(cpu_seconds=0.3)


@pytest.mark.parametrize(
    "body",
    [
        "for (;;) {}",
        "await ctx.peek('t'); console.log('spinning'); for (;;) {}",
        "try { throw new Error('x'); } catch (e) { for (;;) {} }",
        "try { for (;;) {} } catch (e) { return 'caught'; } finally { return 'finally'; }",
        "const f = () => { try { for (;;) {} } finally { f(); } }; f();",
    ],
    ids=["sync", "after-await", "in-catch", "try-finally", "finally-recursion"],
)
def test_infinite_loops_hit_the_cpu_limit(pool: SandboxPool, body: str) -> None:
    host = Host()
    with pytest.raises(SandboxLimitExceeded) as info:
        host.run(pool, workflow(body), limits=FAST)
    assert info.value.limit == "cpu"
    assert len(host.calls) <= 1
    assert_pool_works(pool)


def test_logs_before_a_cpu_overrun_are_kept(pool: SandboxPool) -> None:
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, "console.log('about to spin'); await 0; for (;;) {}", limits=FAST)
    assert [e.message for e in info.value.logs] == ["about to spin"]  # type: ignore[attr-defined]


def test_cpu_is_summed_over_the_whole_invocation(pool: SandboxPool) -> None:
    # Each slice of work is well under the budget; together they exceed it.
    host = Host()
    with pytest.raises(SandboxLimitExceeded) as info:
        host.run(pool, workflow("""
for (let i = 0; i < 100000; i++) {
  let x = 0;
  for (let j = 0; j < 300000; j++) x += j;  // a few milliseconds of CPU per slice
  await ctx.peek("t");
}"""), limits=FAST)
    assert info.value.limit == "cpu"
    assert 2 <= len(host.calls) < 100000  # many entries into the engine, one budget


def test_a_microtask_flood_is_stopped(pool: SandboxPool) -> None:
    flood = "const spin = () => queueMicrotask(spin); spin(); await new Promise(() => {});"
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, flood, limits=SandboxLimits(max_jobs=10_000))
    assert info.value.limit == "jobs"
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, "for (;;) await null;", limits=FAST)
    assert info.value.limit in ("cpu", "jobs")
    assert_pool_works(pool)


@pytest.mark.parametrize(
    "body",
    [
        "const a = []; for (;;) a.push('x'.repeat(1 << 16) + a.length);",
        "let a = [1]; for (;;) a = a.concat(a);",
        "const a = []; for (;;) { try { a.push(new Array(1 << 20).fill(1)); } catch (e) {} }",
        "const a = []; for (;;) { a.push({ n: a.length }); await null; }",
    ],
    ids=["strings", "doubling", "catching-oom", "async"],
)
def test_memory_bombs_hit_the_memory_limit(pool: SandboxPool, body: str) -> None:
    # The async bomb allocates one small object per microtask: it needs more CPU time to
    # reach the heap limit than the others (on a loaded machine 1 s was not always enough).
    cpu = 4.0 if "await null" in body else 1.0
    limits = SandboxLimits(memory_bytes=32 * 1024 * 1024, cpu_seconds=cpu)
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, body, limits=limits)
    # A script that swallows every out-of-memory error spins until its CPU time is up.
    assert info.value.limit == ("cpu" if "catch (e) {}" in body else "memory")
    assert_pool_works(pool)


def test_a_memory_bomb_at_load_time(pool: SandboxPool) -> None:
    source = "const a = []; for (;;) a.push('y'.repeat(4096) + a.length);\n" + workflow("")
    with pytest.raises(SandboxLimitExceeded) as info:
        Host().run(pool, source, limits=SandboxLimits(memory_bytes=16 * 1024 * 1024))
    assert info.value.limit == "memory"
    assert_pool_works(pool)


def test_a_tool_call_storm_hits_the_host_call_limit(pool: SandboxPool) -> None:
    host = Host()
    with pytest.raises(SandboxLimitExceeded) as info:
        host.run(pool, workflow("for (;;) ctx.peek('t');"),
                 limits=SandboxLimits(max_host_calls=100, cpu_seconds=0.3))
    assert info.value.limit == "host_calls"
    assert host.calls == []  # the storm never reached the host


def test_deep_recursion_with_a_large_stack_limit_does_not_crash(pool: SandboxPool) -> None:
    limits = SandboxLimits(stack_bytes=256 * 1024 * 1024)  # clamped inside the worker
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, "const f = (n) => f(n + 1) + 1; return f(0);", limits=limits)
    assert info.value.limit == "stack"
    assert_pool_works(pool)
