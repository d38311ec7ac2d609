"""Invoking handlers: host calls, arguments, return values, logs (SPEC §2, §4, §5)."""

from __future__ import annotations

from typing import Any

import pytest

from keepflow.sandbox.api import JS_MAX_SAFE_INTEGER, HostCall, Resolve, SandboxLimits
from keepflow.sandbox.pool import SandboxPool
from tests.support.sandbox import Host, run_script, workflow

pytestmark = pytest.mark.integration

PRODUCER = """
export default Keep.workflow({
  name: "invoice-rows",
  topics: { "email.received": {} },
  producers: {
    pollInbox: {
      schedule: { interval: "5m" },
      async handler(ctx, state) {
        const msgs = await ctx.email.search({ folder: "INBOX", since: state?.since });
        for (const m of msgs.items) {
          await ctx.publish("email.received", {
            messageId: m.id, title: `Email from ${m.from}`, payload: { from: m.from },
          });
        }
        return { since: msgs.newest ?? state?.since };
      },
    },
  },
});
"""


def test_a_producer_makes_host_calls_in_order_and_returns_its_state(pool: SandboxPool) -> None:
    def replies(call: HostCall) -> Resolve:
        if call.target == "tool":
            return Resolve({"items": [{"id": "a", "from": "x@y"}, {"id": "b", "from": "z@y"}],
                            "newest": "2024-01-02"})
        return Resolve(None)

    host = Host(replies)
    result = host.run(pool, PRODUCER, ("producers", "pollInbox"), args=(None,),
                      undefined_args=frozenset({0}))
    assert result.outcome == "returned"
    assert result.value == {"since": "2024-01-02"}
    assert [c.display for c in host.calls] == ["ctx.email.search", "ctx.publish", "ctx.publish"]
    assert [c.seq for c in host.calls] == [1, 2, 3]
    assert host.calls[0].args == ({"folder": "INBOX"},)  # since: undefined is omitted
    assert host.calls[1].args == ("email.received", {
        "messageId": "a", "title": "Email from x@y", "payload": {"from": "x@y"}})
    assert result.host_calls == 3
    assert result.jobs > 0


def test_consumer_methods_run_with_the_consumer_as_this(pool: SandboxPool) -> None:
    source = """
export default Keep.workflow({ consumers: { c: Keep.consumer({
  subscribe: ["t"],
  helper(x) { return x * 2; },
  async prepare(ctx, state) { return { data: this.helper(state.n) }; },
}) } });
"""
    result = Host().run(pool, source, ("consumers", "c", "prepare"), args=({"n": 21},))
    assert result.value == {"data": 42}


def test_returning_undefined_and_null(pool: SandboxPool) -> None:
    result, _ = run_script(pool, "return;")
    assert (result.value, result.returned_undefined) == (None, True)
    result, _ = run_script(pool, "return null;")
    assert (result.value, result.returned_undefined) == (None, False)


def test_dates_become_iso_strings_and_undefined_properties_are_omitted(pool: SandboxPool) -> None:
    result, _ = run_script(pool,
                           "return { when: new Date(Date.UTC(2024, 0, 2)), gone: undefined };")
    assert result.value == {"when": "2024-01-02T00:00:00.000Z"}


def test_a_sync_handler_works_too(pool: SandboxPool) -> None:
    source = "export default Keep.workflow({ producers: { p(ctx, s) { return s + 1; } } });"
    assert Host().run(pool, source, args=(1,)).value == 2


def test_logs_are_captured_in_order_with_levels(pool: SandboxPool) -> None:
    result, host = run_script(pool, """
console.log("one", 1, { a: [1] });
console.info("two");
console.warn("three");
await ctx.publish("t", { title: "x" });
console.error("four", new Error("boom"));
console.debug("five");
ctx.log("six", null, undefined, 10n);
""")
    got = [(e.level, e.message.split("\n")[0]) for e in result.logs]
    assert got == [
        ("info", 'one 1 {"a":[1]}'), ("info", "two"), ("warn", "three"),
        ("error", "four Error: boom"), ("debug", "five"), ("info", "six null undefined 10n"),
    ]
    assert host.logs == result.logs  # forwarded to on_log as they arrived
    error_frames = result.logs[3].message.splitlines()[1:]
    assert error_frames == ["    at p (<input>:7:27)"]  # the script's frames only
    assert [e.at for e in result.logs] == sorted(e.at for e in result.logs)


def test_long_messages_are_truncated_and_entries_capped(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
console.log("x".repeat(10000));
for (let i = 0; i < 1500; i++) console.log("line " + i);
""")
    first = result.logs[0].message
    assert len(first) < 4200
    assert first.endswith("… [truncated, 10000 chars]")
    assert len(result.logs) == 1001
    assert result.logs[1000].level == "warn"
    assert "log limit reached" in result.logs[1000].message
    assert result.logs[999].message == "line 998"


def test_large_integers_into_the_sandbox_become_strings_with_a_warning(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
return [typeof state.big, state.big, state.ok, state.neg];
""", args=({"big": 2**60, "ok": 2**40, "neg": -JS_MAX_SAFE_INTEGER},))
    assert result.value == ["string", str(2**60), 2**40, -JS_MAX_SAFE_INTEGER]
    warns = [e.message for e in result.logs if e.level == "warn"]
    assert len(warns) == 1
    assert warns[0].startswith("the handler's arguments at $[0].big:")


def test_large_integers_in_replies(pool: SandboxPool) -> None:
    host = Host(lambda c: Resolve({"id": 2**70, "small": 2**40, "max": JS_MAX_SAFE_INTEGER}))
    result = host.run(pool, workflow("""
const r = await ctx.sql.query({});
return [typeof r.id, r.id, r.small, r.max, r.max - 1, 2 ** 53 - 1];
"""))
    assert result.value == ["string", str(2**70), 2**40, JS_MAX_SAFE_INTEGER,
                            JS_MAX_SAFE_INTEGER - 1, JS_MAX_SAFE_INTEGER]
    assert "the reply to ctx.sql.query (#1) at $.id" in result.logs[0].message


def test_calls_made_without_await_are_still_delivered(pool: SandboxPool) -> None:
    result, host = run_script(pool, """
for (const id of ["a", "b"]) ctx.publish("t", { messageId: id, title: id });
return "done";
""")
    assert result.value == "done"
    assert [c.args[1]["messageId"] for c in host.calls] == ["a", "b"]


def test_replies_reach_the_right_calls_in_parallel(pool: SandboxPool) -> None:
    host = Host(lambda c: Resolve({"seq": c.seq, "q": c.args[0]["q"]}))
    result = host.run(pool, workflow("""
const rs = await Promise.all([1, 2, 3].map((q) => ctx.sql.query({ q })));
return rs;
"""))
    assert result.value == [{"seq": 1, "q": 1}, {"seq": 2, "q": 2}, {"seq": 3, "q": 3}]


def test_trailing_undefined_arguments_are_not_sent(pool: SandboxPool) -> None:
    _, host = run_script(pool, """
await ctx.peek("t");
await ctx.peek("t", undefined);
await ctx.getByIds("t", ["a"], undefined);
""")
    assert [c.args for c in host.calls] == [("t",), ("t",), ("t", ["a"])]


def test_unknown_connection_names_the_configured_ones(pool: SandboxPool) -> None:
    from keepflow.errors import ScriptError

    with pytest.raises(ScriptError) as info:
        run_script(pool, "const x = 1;\nawait ctx.slack.post({});")
    assert "ctx.slack is not available; configured: sql, email" in info.value.message
    assert (info.value.line, info.value.column) == (3, 7)  # the script's line, not the prelude's
    with pytest.raises(ScriptError) as info:
        run_script(pool, "await ctx.sql.drop({});")
    assert "ctx.sql.drop is not available; configured: insert, query" in info.value.message


def test_limits_are_per_invocation(pool: SandboxPool) -> None:
    limits = SandboxLimits(max_host_calls=2)
    from keepflow.errors import SandboxLimitExceeded

    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, "for (let i = 0; i < 5; i++) await ctx.peek('t');", limits=limits)
    assert info.value.limit == "host_calls"
    logs: Any = info.value.logs  # type: ignore[attr-defined]
    assert logs == []
    result, host = run_script(pool, "await ctx.peek('t'); await ctx.peek('t'); return 1;",
                              limits=limits)
    assert result.value == 1
    assert len(host.calls) == 2


def test_logs_written_while_loading_are_kept(pool: SandboxPool) -> None:
    source = 'console.log("loading");\n' + workflow('console.log("running"); return 1;')
    result = Host().run(pool, source)
    assert [e.message for e in result.logs] == ["loading", "running"]
