"""How scripts fail: typed errors with positions, paths and logs (SPEC §8)."""

from __future__ import annotations

import pytest

from keepflow.errors import (
    InvalidResult,
    NeverSettled,
    PhaseViolation,
    SandboxLimitExceeded,
    ScriptError,
    UnhandledRejection,
    WorkflowDefinitionError,
)
from keepflow.sandbox.api import HostCall, Reply, SandboxLimits
from keepflow.sandbox.native import EngineHooks
from keepflow.sandbox.pool import SandboxPool
from tests.support.sandbox import Host, assert_pool_works, run_script, workflow

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("expr", "path", "what"),
    [
        ("({ items: [1, { f() {} }] })", "$.items[1].f", "is a function"),
        ("({ n: 10n })", "$.n", "is a BigInt"),
        ("({ a: { b: NaN } })", "$.a.b", "is NaN"),
        ("[Infinity]", "$[0]", "is Infinity"),
        ("(() => { const o = { x: {} }; o.x.back = o; return o; })()", "$.x.back",
         "is a circular reference"),
        ("({ m: new Map() })", "$.m", "is a Map"),
        ("({ s: new Set([1]) })", "$.s", "is a Set"),
        ("[1, undefined]", "$[1]", "is undefined (not allowed inside an array)"),
        ("({ 'odd key': Symbol('x') })", '$["odd key"]', "is a Symbol"),
        ("({ c: new (class Point {})() })", "$.c", "is an instance of Point"),
        ("({ p: Promise.resolve(1) })", "$.p", "is an instance of Promise (missing await?)"),
        ("({ d: new Date(NaN) })", "$.d", "is an invalid Date"),
        ("(() => { let v = 1; for (let i = 0; i < 70; i++) v = [v]; return v; })()",
         "$" + "[0]" * 65, "is nested deeper than 64 levels"),
    ],
)
def test_non_json_return_values_name_the_path(
    pool: SandboxPool, expr: str, path: str, what: str
) -> None:
    with pytest.raises(InvalidResult) as info:
        run_script(pool, f"return {expr};")
    assert info.value.message.startswith(f"the handler's return value at {path} {what}")


def test_a_non_json_argument_of_a_host_call_names_the_call(pool: SandboxPool) -> None:
    with pytest.raises(InvalidResult) as info:
        run_script(pool, "await ctx.publish('t', { title: 'x', payload: { at: () => 1 } });")
    assert info.value.message.startswith(
        "ctx.publish() argument 2 at $.payload.at is a function")
    with pytest.raises(InvalidResult) as info:
        run_script(pool, "await ctx.sql.insert(10n);")
    assert info.value.message.startswith("ctx.sql.insert() argument 1 is a BigInt")


def test_a_rejected_argument_makes_no_host_call(pool: SandboxPool) -> None:
    host = Host()
    with pytest.raises(InvalidResult):
        host.run(pool, workflow("ctx.publish('t', { bad: NaN }); await ctx.publish('t', {});"))
    assert host.calls == []


def test_oversized_values_exceed_the_size_limit(pool: SandboxPool) -> None:
    limits = SandboxLimits(max_message_bytes=1000)
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, "return 'x'.repeat(2000);", limits=limits)
    assert info.value.limit == "size"
    host = Host()
    with pytest.raises(SandboxLimitExceeded) as info:
        host.run(pool, workflow("await ctx.publish('t', { p: 'x'.repeat(2000) });"),
                 limits=limits)
    assert info.value.limit == "size"
    assert host.calls == []
    assert_pool_works(pool)


def test_a_throw_reports_name_message_and_user_position(pool: SandboxPool) -> None:
    source = workflow("""
const helper = () => {
  throw new TypeError("bad input");
};
helper();""")
    with pytest.raises(ScriptError) as info:
        Host().run(pool, source)
    err = info.value
    assert (err.js_name, err.line, err.column) == ("TypeError", 4, 13)
    assert err.message == "TypeError: bad input (line 4, column 13)"
    lines = source.count("\n") + 1
    assert "<input>:4:13" in err.stack
    assert all(int(f.rsplit(":", 2)[1]) <= lines for f in err.stack.splitlines())


def test_a_rejection_after_await_reports_its_position(pool: SandboxPool) -> None:
    with pytest.raises(ScriptError) as info:
        run_script(pool, "await ctx.peek('t');\nnull.x;")
    assert info.value.line == 3
    assert info.value.js_name == "TypeError"


def test_throwing_a_non_error_value(pool: SandboxPool) -> None:
    with pytest.raises(ScriptError) as info:
        run_script(pool, "throw 'just a string';")
    assert (info.value.js_name, info.value.message) == ("string", "string: just a string")


def test_a_top_level_throw(pool: SandboxPool) -> None:
    source = "const x = 1;\nthrow new RangeError('at load');\n" + workflow("return 1;")
    with pytest.raises(ScriptError) as info:
        Host().run(pool, source)
    assert (info.value.js_name, info.value.line) == ("RangeError", 2)
    with pytest.raises(ScriptError):
        pool.describe(source)


def test_syntax_errors_give_line_and_column(pool: SandboxPool) -> None:
    source = "export default Keep.workflow({\n  producers: {\n    p(ctx) {\n      let x = = 1;\n"
    with pytest.raises(ScriptError) as info:
        pool.describe(source)
    assert (info.value.js_name, info.value.line, info.value.column) == ("SyntaxError", 4, 15)
    with pytest.raises(ScriptError) as info:
        Host().run(pool, source)
    assert info.value.line == 4


@pytest.mark.parametrize(
    ("source", "handler", "message"),
    [
        ("const x = 1;", ("producers", "p"), "never calls Keep.workflow"),
        ("Keep.workflow({}); Keep.workflow({});", ("producers", "p"), "2 times"),
        ("export default Keep.workflow({ producers: {} });", ("producers", "p"),
         "has no handler producers.p"),
        ("export default Keep.workflow({});", ("consumers", "c", "mutate"),
         "has no handler consumers.c.mutate"),
    ],
)
def test_definition_errors(
    pool: SandboxPool, source: str, handler: tuple[str, ...], message: str
) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        Host().run(pool, source, handler)
    assert message in info.value.message


def test_a_host_error_is_re_raised_as_the_same_object_with_the_logs(pool: SandboxPool) -> None:
    refusal = PhaseViolation("ctx.publish is not allowed in prepare (SPEC §5.1)")

    def refuse(call: HostCall) -> Reply:
        raise refusal

    host = Host(refuse)
    with pytest.raises(PhaseViolation) as info:
        host.run(pool, workflow("""
console.log("before");
try { await ctx.publish("t", {}); } catch (e) { console.log("caught"); }
finally { console.log("finally"); }
"""))
    assert info.value is refusal
    assert [e.message for e in info.value.logs] == ["before"]  # type: ignore[attr-defined]
    assert len(host.calls) == 1
    assert_pool_works(pool)


def test_a_never_settling_await(pool: SandboxPool) -> None:
    with pytest.raises(NeverSettled) as info:
        run_script(pool, "console.log('waiting'); await new Promise(() => {});")
    assert "can never settle" in info.value.message
    assert [e.message for e in info.value.logs] == ["waiting"]  # type: ignore[attr-defined]
    with pytest.raises(NeverSettled):
        Host().run(pool, "await new Promise(() => {});\n" + workflow("return 1;"))


UNHANDLED = """
Promise.reject(new Error("forgotten"));
(async () => { throw new TypeError("also forgotten"); })();
return "done";
"""


@pytest.mark.skipif(not EngineHooks().available, reason="engine hooks unavailable here")
def test_an_unhandled_rejection_fails_the_run(pool: SandboxPool) -> None:
    with pytest.raises(UnhandledRejection) as info:
        run_script(pool, UNHANDLED)
    assert "Error: forgotten" in info.value.message
    assert "(2 unhandled rejections)" in info.value.message


@pytest.mark.skipif(EngineHooks().available, reason="engine hooks available here")
def test_without_engine_hooks_unhandled_rejections_are_not_reported(pool: SandboxPool) -> None:
    result, _ = run_script(pool, UNHANDLED)  # documented fallback: the run is unaffected
    assert result.value == "done"


def test_a_handler_rejection_is_a_script_error_not_an_unhandled_one(pool: SandboxPool) -> None:
    with pytest.raises(ScriptError) as info:
        run_script(pool, "Promise.reject(new Error('stray')); throw new Error('primary');")
    assert info.value.message.startswith("Error: primary")


def test_a_nul_character_in_the_source_is_refused(pool: SandboxPool) -> None:
    with pytest.raises(ScriptError) as info:
        Host().run(pool, workflow("return 1;\n// \x00 hidden"))
    assert info.value.line == 3
    assert_pool_works(pool)


def test_handled_rejections_are_fine(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
const p = Promise.reject(new Error("later"));
await ctx.peek("t");
const r = await p.catch((e) => e.message);
const all = await Promise.allSettled([Promise.reject(1), Promise.resolve(2)]);
return [r, all.length];
""")
    assert result.value == ["later", 2]


def test_deep_recursion_is_a_stack_limit_and_can_be_caught(pool: SandboxPool) -> None:
    with pytest.raises(SandboxLimitExceeded) as info:
        run_script(pool, "const f = (n) => f(n + 1) + 1; return f(0);")
    assert info.value.limit == "stack"
    result, _ = run_script(pool, """
const f = (n) => f(n + 1) + 1;
try { f(0); } catch (e) { return e.name; }
""")
    assert result.value == "RangeError"
    assert_pool_works(pool)
