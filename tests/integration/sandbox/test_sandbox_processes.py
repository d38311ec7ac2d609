"""Worker processes: crashes, the wall-time watchdog, concurrency, lifetime (SPEC §13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from keepflow.errors import SandboxCrashed, SandboxLimitExceeded
from keepflow.sandbox.api import HostCall, Reply, Resolve, SandboxLimits
from keepflow.sandbox.pool import SandboxPool
from tests.support.sandbox import Host, assert_pool_works, run_script, workflow

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)  # polling interval of a condition, not synchronization by sleep


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0]
    except FileNotFoundError:
        return "gone"


def pid_gone(pid: int) -> bool:
    """Dead: reaped, or a zombie whose threads have all exited (until then the kernel still
    reports the process as running to its parent)."""
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return True
    return proc_state(pid) in ("Z", "gone") and threads <= 1


def test_a_worker_killed_mid_run_is_a_crash_and_the_pool_recovers() -> None:
    with SandboxPool(size=1) as pool:
        assert_pool_works(pool)
        [pid] = pool.worker_pids()

        def kill_worker(call: HostCall) -> Reply:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: pid_gone(pid))
            return Resolve(None)

        host = Host(kill_worker)
        with pytest.raises(SandboxCrashed) as info:
            host.run(pool, workflow("console.log('hi'); await ctx.peek('t'); return 1;"))
        assert "killed by signal 9 (SIGKILL)" in info.value.message
        assert [e.message for e in info.value.logs] == ["hi"]  # type: ignore[attr-defined]
        assert_pool_works(pool)
        assert pid not in pool.worker_pids()


def test_a_worker_killed_while_running_js_is_a_crash() -> None:
    with SandboxPool(size=1) as pool:
        assert_pool_works(pool)
        [pid] = pool.worker_pids()
        timer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
        timer.start()
        try:
            with pytest.raises(SandboxCrashed):
                run_script(pool, "for (;;) {}", limits=SandboxLimits(cpu_seconds=20))
        finally:
            timer.cancel()
        assert_pool_works(pool)


def test_a_worker_that_died_while_idle_is_replaced_silently() -> None:
    with SandboxPool(size=1) as pool:
        assert_pool_works(pool)
        [pid] = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: pid_gone(pid))
        assert_pool_works(pool)
        assert pid not in pool.worker_pids()


def test_time_spent_in_host_calls_does_not_count_as_sandbox_wall_time(
    pool: SandboxPool,
) -> None:
    def slow_host(call: HostCall) -> Reply:
        threading.Event().wait(0.4)  # the host's own (slow) work
        return Resolve(call.seq)

    host = Host(slow_host)
    result = host.run(pool, workflow("""
let n = 0;
for (let i = 0; i < 3; i++) n += await ctx.peek("t");
return n;
"""), limits=SandboxLimits(wall_seconds=0.5))
    assert result.value == 6
    assert result.wall_seconds < 0.5


def test_a_stalled_sandbox_hits_the_wall_time_limit_and_is_replaced() -> None:
    with SandboxPool(size=1) as pool:
        assert_pool_works(pool)
        [pid] = pool.worker_pids()

        def stop_the_worker(call: HostCall) -> Reply:
            # A worker that makes no progress without using CPU (e.g. stuck in the kernel).
            os.kill(pid, signal.SIGSTOP)
            wait_until(lambda: proc_state(pid) == "T")
            return Resolve(None)

        host = Host(stop_the_worker)
        started = time.monotonic()
        with pytest.raises(SandboxLimitExceeded) as info:
            host.run(pool, workflow("await ctx.peek('t'); return 1;"),
                     limits=SandboxLimits(wall_seconds=0.5))
        assert info.value.limit == "wall"
        assert time.monotonic() - started < 5
        wait_until(lambda: pid_gone(pid))
        assert pid not in pool.worker_pids()
        assert_pool_works(pool)


def test_concurrent_invocations_each_get_a_worker() -> None:
    with SandboxPool(size=2) as pool:
        barrier = threading.Barrier(4)
        results: dict[int, object] = {}
        pids: dict[int, int] = {}

        def rendezvous(call: HostCall) -> Reply:
            barrier.wait(timeout=30)  # all four scripts are inside a host call at once
            return Resolve(call.args[1]["n"])

        def worker(i: int) -> None:
            host = Host(rendezvous)
            results[i] = host.run(pool, workflow(
                "return (await ctx.publish('t', { n: state })) * 10;"), args=(i,)).value
            pids[i] = len(pool.worker_pids())

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == {0: 0, 1: 10, 2: 20, 3: 30}
        assert len(pool.worker_pids()) == 2  # extra workers were not kept
        assert_pool_works(pool)


def test_workers_exit_when_the_pool_closes() -> None:
    pool = SandboxPool(size=2)
    assert_pool_works(pool)
    pids = pool.worker_pids()
    pool.close()
    for pid in pids:
        wait_until(lambda pid=pid: pid_gone(pid))
    with pytest.raises(RuntimeError, match="closed"):
        assert_pool_works(pool)


PARENT = """
import sys
from keepflow.sandbox.pool import SandboxPool
from keepflow.sandbox.api import Invocation, Resolve
pool = SandboxPool(size=1)
src = "export default Keep.workflow({ producers: { p: async () => 1 } });"
pool.invoke(Invocation(src, ("producers", "p")), lambda c: Resolve(None))
print(pool.worker_pids()[0], flush=True)
sys.stdin.read()
"""


def test_workers_die_with_their_host_process() -> None:
    with subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            worker_pid = int(parent.stdout.readline())
            assert not pid_gone(worker_pid)
        finally:
            parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: pid_gone(worker_pid))
