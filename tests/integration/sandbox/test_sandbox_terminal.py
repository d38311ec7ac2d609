"""A terminal mutation ends the script where it stands (SPEC §5.2)."""

from __future__ import annotations

import pytest

from keepflow.sandbox.pool import SandboxPool
from tests.support.sandbox import Host, assert_pool_works, terminate_tools, workflow

pytestmark = pytest.mark.integration

MUTATE = """
export default Keep.workflow({ consumers: { c: Keep.consumer({ subscribe: ["t"],
  async prepare() { return {}; },
  async mutate(ctx, prepared) {
%s
  },
  async next() { return null; },
}) } });
"""


def run_mutate(pool: SandboxPool, body: str) -> tuple[Host, object]:
    host = Host(terminate_tools)
    result = host.run(pool, MUTATE % body, ("consumers", "c", "mutate"), args=({"id": 1},))
    return host, result


def test_catch_and_finally_never_run_around_a_terminal_mutation(pool: SandboxPool) -> None:
    host, result = run_mutate(pool, """
    try {
      console.log("before");
      await ctx.sql.insert({ table: "t", values: prepared });
      console.log("after");
    } catch (e) {
      console.log("catch");
      await ctx.publish("t", { title: "from catch" });
    } finally {
      console.log("finally");
      await ctx.sql.insert({ table: "again" });
    }
""")
    assert result.outcome == "terminated"  # type: ignore[attr-defined]
    assert [c.display for c in host.calls] == ["ctx.sql.insert"]
    assert host.calls[0].args == ({"table": "t", "values": {"id": 1}},)
    assert [e.message for e in host.logs] == ["before"]
    assert result.after_terminal == []  # type: ignore[attr-defined]
    assert_pool_works(pool)


def test_code_after_the_mutation_never_runs(pool: SandboxPool) -> None:
    host, result = run_mutate(pool, """
    await ctx.sql.insert({ n: 1 });
    console.log("after the mutation");
    await ctx.publish("t", { title: "after" });
    return "unreachable";
""")
    assert result.outcome == "terminated"  # type: ignore[attr-defined]
    assert result.value is None  # type: ignore[attr-defined]
    assert len(host.calls) == 1
    assert host.logs == []


def test_a_second_mutation_in_the_same_turn_is_reported_not_performed(pool: SandboxPool) -> None:
    host, result = run_mutate(pool, """
    await Promise.all([ctx.sql.insert({ n: 1 }), ctx.sql.insert({ n: 2 }), ctx.publish("t", {})]);
""")
    assert result.outcome == "terminated"  # type: ignore[attr-defined]
    assert [c.args for c in host.calls] == [({"n": 1},)]
    after = result.after_terminal  # type: ignore[attr-defined]
    assert [(c.seq, c.display, c.args) for c in after] == [
        (2, "ctx.sql.insert", ({"n": 2},)), (3, "ctx.publish", ("t", {}))]
    assert result.host_calls == 3  # type: ignore[attr-defined]


def test_calls_before_the_terminal_one_in_a_batch_are_performed(pool: SandboxPool) -> None:
    host = Host(terminate_tools)
    result = host.run(pool, workflow("""
ctx.publish("t", { title: "a" });
ctx.sql.insert({ n: 1 });
ctx.publish("t", { title: "b" });
"""))
    assert result.outcome == "terminated"
    assert [c.display for c in host.calls] == ["ctx.publish", "ctx.sql.insert"]
    assert [c.display for c in result.after_terminal] == ["ctx.publish"]


def test_a_terminated_call_cannot_be_made_to_return_by_patching_promises(
    pool: SandboxPool,
) -> None:
    host, result = run_mutate(pool, """
    const OrigThen = Promise.prototype.then;
    Promise.prototype.then = function (ok) { return OrigThen.call(Promise.resolve("forged"), ok); };
    const NativePromise = Promise;
    Object.defineProperty(Promise.prototype, "constructor",
      { value: function Fake(ex) { return new NativePromise(ex); } });
    Object.prototype.then = function (ok) { ok("forged too"); };
    const r = await ctx.sql.insert({ n: 1 });
    console.log("returned", r);
    await ctx.sql.insert({ n: 2 });
""")
    assert result.outcome == "terminated"  # type: ignore[attr-defined]
    assert [c.args for c in host.calls] == [({"n": 1},)]
    assert result.after_terminal == []
    assert host.logs == []
    assert_pool_works(pool)
