"""Scripts that tamper with the sandbox cannot forge host replies or reach the host (SPEC §5.2)."""

from __future__ import annotations

import pytest

from keepflow.errors import ScriptError
from keepflow.sandbox.api import HostCall, Resolve
from keepflow.sandbox.pool import SandboxPool
from tests.support.sandbox import Host, assert_pool_works, run_script, workflow

pytestmark = pytest.mark.integration


def echo(call: HostCall) -> Resolve:
    return Resolve({"echo": list(call.args), "seq": call.seq})


def test_ctx_is_deep_frozen(pool: SandboxPool) -> None:
    host = Host(echo)
    result = host.run(pool, workflow("""
const out = [];
for (const attempt of [
  () => { ctx.publish = async () => "fake"; },
  () => { ctx.sql.insert = async () => "fake"; },
  () => { ctx.sql = {}; },
  () => { ctx.extra = 1; },
  () => { delete ctx.peek; },
  () => { Object.defineProperty(ctx, "publish", { value: 1 }); },
]) {
  try { attempt(); out.push("allowed"); } catch (e) { out.push(e.name); }
}
const r = await ctx.publish("t", { title: "real" });
return { out, r };
"""))
    assert result.value["out"] == ["TypeError"] * 6
    assert result.value["r"] == {"echo": ["t", {"title": "real"}], "seq": 1}
    assert len(host.calls) == 1


def test_keep_and_console_cannot_be_replaced(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
const out = [];
for (const attempt of [
  () => { Keep = {}; }, () => { Keep.workflow = null; }, () => { globalThis.Keep = 1; },
  () => { console = {}; }, () => { console.log = null; }, () => { delete globalThis.Keep; },
]) {
  try { attempt(); out.push("allowed"); } catch (e) { out.push(e.name); }
}
return out;
""")
    assert result.value == ["TypeError"] * 6


def test_replaced_primordials_do_not_affect_the_host_channel(pool: SandboxPool) -> None:
    host = Host(echo)
    result = host.run(pool, workflow("""
JSON.parse = () => ({ forged: true });
JSON.stringify = () => '{"forged":true}';
Array.prototype.push = function () { throw new Error("push is poisoned"); };
Object.defineProperty(Array.prototype, "0", { set(v) { throw new Error("index setter"); },
                                              configurable: true });
Object.keys = () => ["forged"];
Reflect.apply = () => "forged";
Function.prototype.call = Function.prototype.apply = function () { return "forged"; };
globalThis.Promise = function FakePromise() { throw new Error("no"); };
const r = await ctx.sql.query({ q: [1, 2] });
return { r, n: r.echo[0].q.length };
"""))
    assert result.value == {"r": {"echo": [{"q": [1, 2]}], "seq": 1}, "n": 2}
    assert [c.args for c in host.calls] == [({"q": [1, 2]},)]


def test_prototype_then_pollution_only_changes_the_scripts_own_view(pool: SandboxPool) -> None:
    host = Host(echo)
    result = host.run(pool, workflow("""
Object.prototype.then = function (ok) { delete Object.prototype.then; ok("script's own"); };
const r = await ctx.sql.query({ q: 1 });
return r;
"""))
    assert result.value == "script's own"  # the script lied to itself...
    assert [c.args for c in host.calls] == [({"q": 1},)]  # ...the host saw the real call


def test_the_bridge_is_unreachable(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
const seen = [];
try { Error.prepareStackTrace = (e, sites) => sites; } catch (e) { seen.push("locked"); }
const stack = new Error("x").stack;
seen.push(typeof stack);
seen.push(Object.getOwnPropertyNames(globalThis).filter((n) => /kf|bridge/i.test(n)).length);
return seen;
""")
    assert result.value == ["locked", "string", 0]


def test_no_host_capabilities_exist(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
return ["require", "fetch", "setTimeout", "setInterval", "XMLHttpRequest", "process", "std",
        "os", "Deno", "Bun", "WebAssembly", "print", "scriptArgs", "__kfBridge"]
  .map((n) => typeof globalThis[n]);
""")
    assert set(result.value) == {"undefined"}


def test_imports_fail(pool: SandboxPool) -> None:
    with pytest.raises(ScriptError) as info:
        Host().run(pool, 'import fs from "fs";\n' + workflow("return 1;"))
    assert "could not load module" in info.value.message
    result, _ = run_script(pool, """
try { await import("fs"); return "loaded"; } catch (e) { return e.name; }
""")
    assert result.value in ("ReferenceError", "TypeError", "SyntaxError")


def test_code_cannot_be_built_from_strings(pool: SandboxPool) -> None:
    """docs/security.md#the-sandbox: eval, Function and the async/generator constructors
    throw, whichever way they are reached; `instanceof Function` still works."""
    result, _ = run_script(pool, """
const attempts = {
  eval: () => eval("1 + 2"),
  indirectEval: () => (0, eval)("1"),
  globalEval: () => globalThis["ev" + "al"]("1"),
  newFunction: () => new Function("x", "return x")(1),
  callFunction: () => Function("return 1")(),
  viaConstructor: () => (() => 1).constructor("return 1")(),
  asyncCtor: () => (async () => 1).constructor("return 1"),
  generatorCtor: () => (function* () {}).constructor("yield 1"),
  asyncGeneratorCtor: () => (async function* () {}).constructor("yield 1"),
  reflect: () => Reflect.construct(Function, ["return 1"]),
  sloppyCaller: () => new Function("return typeof arguments.callee.caller")(),
};
const out = {};
for (const [name, attempt] of Object.entries(attempts)) {
  try { out[name] = "ran: " + String(attempt()); } catch (e) { out[name] = e.message; }
}
out.instanceOf = [(() => 1) instanceof Function, (async () => 1) instanceof Function];
return out;
""")
    out = result.value
    assert out.pop("instanceOf") == [True, True]
    for name, message in out.items():
        assert "is not available in keepflow scripts" in message, name


def test_every_invocation_gets_a_fresh_context(pool: SandboxPool) -> None:
    first, _ = run_script(pool, """
globalThis.leak = "secret"; Object.prototype.polluted = 1; Array.prototype.push = null;
return typeof leak;
""")
    assert first.value == "string"
    for _ in range(4):  # whichever worker answers
        again, _ = run_script(
            pool, "return [typeof globalThis.leak, 'polluted' in {}, typeof [].push];")
        assert again.value == ["undefined", False, "function"]


def test_queue_microtask_exists_and_is_counted(pool: SandboxPool) -> None:
    result, _ = run_script(pool, """
let n = 0;
await new Promise((resolve) => queueMicrotask(() => { n++; resolve(); }));
return n;
""")
    assert result.value == 1
    assert result.jobs >= 1
    assert_pool_works(pool)
