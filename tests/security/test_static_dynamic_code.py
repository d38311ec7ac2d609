"""Hostile scripts vs. the static checks (SPEC §9, §11.3 stage 2).

1. Code built from strings (``eval``, ``Function``, a function's ``.constructor``, string timers,
   ``import()``) is refused at deploy with an ERROR finding at its line and column
   (docs/security.md#code-from-strings), in every handler form and at top level.
2. ``arguments[<ctx position>]`` is analyzed as the ctx itself, so the phase rules apply to it;
   every other way of hiding ctx from the analyzer warns like an alias
   (docs/security.md#hidden-ctx-calls).
3. ``keepflow deploy`` (service.deploy on a real Host, store and sandbox) refuses such a script
   and deploys nothing, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.errors import ScriptInvalid
from keepflow.runtime.host import Host
from keepflow.sandbox.findings import Finding
from keepflow.sandbox.static import analyze
from tests.integration.conftest import clock, host, pool, sink, target_db  # noqa: F401
from tests.support.sink import Sink
from tests.support.workflows import consumer_js, deploy_source, seed_producer, workflow_js

TOOL_KINDS: dict[str, dict[str, str]] = {
    "http": {"get": "read", "post": "mutate"},
    "sql": {"query": "read", "get": "read_by_id", "insert": "mutate"},
}


def workflow(
    *,
    top: str = "",
    producer: str = "return state;",
    prepare: str = "return { reservations: [], data: {} };",
    mutate: str = "",
    next_: str = "return null;",
) -> str:
    """A valid workflow with the given handler bodies; each handler form appears once: a
    ``{schedule, handler}`` method, a method, a function expression and an arrow function."""
    return f"""{top}
export default Keep.workflow({{
  name: "wf",
  topics: {{ "in": {{}}, "out": {{}} }},
  producers: {{
    poll: {{
      schedule: {{ interval: "5m" }},
      async handler(ctx, state) {{
        {producer}
      }},
    }},
  }},
  consumers: {{
    work: Keep.consumer({{
      subscribe: ["in"],
      async prepare(ctx, state) {{
        {prepare}
      }},
      mutate: async function (ctx, prepared) {{
        {mutate}
      }},
      next: async (ctx, prepared, mutation) => {{
        {next_}
      }},
    }}),
  }},
}});
"""


def marked(source: str, marker: str = "// HERE") -> int:
    lines = [i for i, text in enumerate(source.splitlines(), 1) if marker in text]
    assert len(lines) == 1, f"expected one {marker!r}"
    return lines[0]


def column(source: str, line: int, token: str) -> int:
    return source.splitlines()[line - 1].index(token) + 1


def triples(findings: list[Finding]) -> list[tuple[str, str, int | None]]:
    return [(f.rule, f.severity, f.line) for f in findings]


# ---- 1. code built from strings ----------------------------------------------------------

#: name -> (where, code, the token the finding points at). ``where`` is a handler of
#: :func:`workflow` or ``top`` (top-level code and helpers run in every handler's context).
CODE_FROM_STRINGS: dict[str, tuple[str, str, str]] = {
    "eval call": ("mutate", 'eval("ctx.http.post({ url: \'https://x.example/\' })");', "eval"),
    "eval optional call": ("mutate", 'eval?.("1");', "eval"),
    "indirect eval": ("prepare", '(0, eval)("ctx.sql.insert({})");', "eval"),
    "eval alias": ("prepare", "const run = eval; run(prepared.data.code);", "eval"),
    "eval in shorthand": ("prepare", "const tools = { eval };", "eval"),
    "eval passed as a value": ("producer", 'Reflect.apply(eval, null, ["1"]);', "eval"),
    "globalThis.eval": ("producer", 'globalThis.eval("1");', "globalThis"),
    'globalThis["eval"]': ("producer", 'globalThis["eval"]("1");', "globalThis"),
    "globalThis[`eval`]": ("producer", "globalThis[`eval`]('1');", "globalThis"),
    "globalThis[CONST]": ("producer", "globalThis[EVAL]('1');", "globalThis"),
    "window.eval": ("next_", 'window.eval("1");', "window"),
    "self.eval": ("next_", 'self.eval("1");', "self"),
    "global.eval": ("next_", 'global.eval("1");', "global"),
    "globalThis.globalThis.eval": ("next_", 'globalThis.globalThis.eval("1");', "globalThis"),
    "(0, globalThis).eval": ("next_", '(0, globalThis).eval("1");', "(0"),
    "await (globalThis).eval": ("next_", 'await (globalThis).eval("1");', "await"),
    "aliased global object": ("mutate", 'const g = globalThis; g.eval("1");', "g.eval"),
    "alias of an alias": ("mutate", 'const g = globalThis, h = g; h["eval"]("1");', 'h["eval"]'),
    "destructured from globalThis": ("mutate", "const { eval: run } = globalThis;", "{ eval"),
    "Reflect.get(globalThis, eval)": ("mutate", 'Reflect.get(globalThis, "eval")("1");', "Reflect"),
    "eval descriptor": (
        "mutate",
        'Object.getOwnPropertyDescriptor(globalThis, "eval").value("1");',
        "Object",
    ),
    "eval in the descriptors": (
        "mutate",
        'Object.getOwnPropertyDescriptors(self).eval.value("1");',
        "Object",
    ),
    "Function call": ("prepare", 'Function("c", "return c.sql.insert({})")(ctx);', "Function"),
    "new Function": ("prepare", 'new Function("c", "return c.sql.insert({})");', "Function"),
    "new Function without parentheses": ("prepare", "const F = new Function;", "Function"),
    "Function tagged template": ("prepare", "Function`return 1`;", "Function"),
    "globalThis.Function": ("prepare", 'globalThis.Function("return 1")();', "globalThis"),
    'self["Function"]': ("prepare", 'self["Function"]("return 1")();', "self"),
    "Function destructured": ("prepare", "const { Function: F } = globalThis;", "{ Function"),
    "Reflect.construct(Function)": (
        "producer", 'Reflect.construct(Function, ["return 1"]);', "Function"),
    "Function.prototype.constructor": (
        "producer", 'Function.prototype.constructor("return 1");', "Function"),
    "function expression constructor": (
        "producer", '(function () {}).constructor("return 1")();', "(function"),
    "arrow constructor": ("mutate", '(() => 1).constructor("return 1")();', "(() =>"),
    "async arrow constructor": ("mutate", '(async () => {}).constructor("return 1");', "(async"),
    "generator constructor": ("mutate", '(function* () {}).constructor("yield 1");', "(function*"),
    "async generator constructor": (
        "mutate", '(async function* () {}).constructor("yield 1");', "(async"),
    "new on a constructor": ("mutate", 'new (() => 1).constructor("return 1");', "(() =>"),
    "constructor aliased": ("mutate", "const Make = (() => 1).constructor;", "(() =>"),
    "constructor of a named function": (
        "mutate", 'const Make = helper.constructor; Make("x");', "helper"),
    'subscript ["constructor"]': ("mutate", '(() => 1)["constructor"]("return 1");', "(() =>"),
    "constructor of constructor": ("mutate", '"".constructor.constructor("return 1")();', '""'),
    "constructor of ctx.log": ("mutate", 'ctx.log.constructor("return 1")();', "ctx.log"),
    "constructor through the prototype": (
        "mutate",
        'Object.getPrototypeOf(async function () {}).constructor("return 1");',
        "Object",
    ),
    "constructor by Reflect.get": (
        "mutate", 'Reflect.get(() => 1, "constructor")("return 1");', "Reflect"),
    "constructor descriptor": (
        "mutate",
        'Object.getOwnPropertyDescriptor(Object.getPrototypeOf(() => 1), "constructor");',
        "Object",
    ),
    "constructor destructured": (
        "mutate", "const { constructor: Make } = () => 1;", "{ constructor"),
    "constructor in a parameter pattern": (
        "top", "function build({ constructor }) { return constructor; }", "{ constructor"),
    "constructor through ||": (
        "mutate", '(prepared.data.f.constructor || Object)("return 1");', "prepared"),
    "setTimeout string": ("producer", 'setTimeout("ctx.sql.insert({})", 0);', "setTimeout"),
    "setInterval template": (
        "producer", "setInterval(`ctx.sql.insert(${1})`, 10);", "setInterval"),
    "setTimeout concatenation": (
        "producer", 'setTimeout("ctx." + "sql.insert({})");', "setTimeout"),
    "globalThis.setTimeout": ("producer", 'globalThis.setTimeout(CODE);', "globalThis"),
    "dynamic import": ("prepare", 'const m = await import("data:text/javascript,1");', "import"),
    "dynamic import computed": ("prepare", "await import(prepared.data.url);", "import"),
    "top-level helper": ("top", 'const run = (code) => eval(code);', "eval"),
    "top-level statement": ("top", 'const made = new Function("return 1");', "Function"),
}


@pytest.mark.parametrize("case", list(CODE_FROM_STRINGS), ids=list(CODE_FROM_STRINGS))
def test_code_built_from_strings_is_a_deploy_error(case: str) -> None:
    where, code, token = CODE_FROM_STRINGS[case]
    top = 'const EVAL = "eval";\nconst CODE = "1";\nfunction helper() {}\n'
    body = f"{code}  // HERE"
    src = workflow(top=top + body) if where == "top" else workflow(top=top, **{where: body})
    report = analyze(src, TOOL_KINDS)
    line = marked(src)
    dynamic = [f for f in report.findings if f.rule == "dynamic-code"]
    assert triples(dynamic) == [("dynamic-code", "error", line)], report.findings
    assert dynamic[0].column == column(src, line, token)
    assert not report.ok


def test_every_spelling_on_one_line_gets_its_own_finding() -> None:
    src = workflow(mutate='eval("1"); new Function("2"); (() => 1).constructor("3");  // HERE')
    report = analyze(src, TOOL_KINDS)
    line = marked(src)
    assert [(f.rule, f.line, f.column) for f in report.findings] == [
        ("dynamic-code", line, column(src, line, "eval")),
        ("dynamic-code", line, column(src, line, "Function")),
        ("dynamic-code", line, column(src, line, "(() =>")),
    ]


@pytest.mark.parametrize(
    ("code", "needles"),
    [
        ('eval("1");', ("`eval`: eval runs a string as code", "Write the code directly")),
        ('new Function("1");', ("`Function`: the Function constructor", "arrow function")),
        (
            '(async () => 1).constructor("1");',
            ("`(async () => 1).constructor`: `.constructor` can reach", "x.constructor === Object"),
        ),
        ('setTimeout("1");', ('`setTimeout("1")`: a timer', "producer's schedule")),
        ('await import("x");', ('`import("x")`: import(...) loads code', "cannot load modules")),
    ],
)
def test_the_message_says_what_why_and_what_to_write_instead(
    code: str, needles: tuple[str, ...]
) -> None:
    (finding,) = analyze(workflow(prepare=code), TOOL_KINDS).findings
    for needle in (*needles, "refused", "docs/security.md#code-from-strings"):
        assert needle in finding.message
    assert "SPEC" not in finding.message


HARMLESS = {
    "instanceof Function": "if (prepared.data.f instanceof Function) return;",
    "constructor compared": "if (prepared.data.v.constructor === Object) return;",
    "constructor not equal": "const plain = prepared.data.v.constructor != Array;",
    "constructor name": 'const kind = prepared.data.v?.constructor?.name ?? "none";',
    "constructor tested": "if (prepared.data.v && prepared.data.v.constructor && "
    'prepared.data.v.constructor.name === "Date") return;',
    "typeof constructor": "const t = typeof prepared.data.constructor;",
    "class with a constructor": "class Row { constructor(id) { this.id = id; } }",
    "data fields named eval and Function": "const a = prepared.data.eval, "
    "b = prepared.data.Function;",
    "object keys named like them": "const o = { eval: 1, Function: 2, constructor: 3, "
    "['eval']: 4 };",
    "the words in strings and comments": 'ctx.log("eval(x) and new Function() are refused"); '
    "// eval(1)",
    "a method named eval": "const o = { eval() { return 1; } }; o.eval();",
    "setTimeout with a function is not code from strings": "setTimeout(() => 1, 0);",
}


@pytest.mark.parametrize("case", list(HARMLESS), ids=list(HARMLESS))
def test_harmless_look_alikes_have_no_dynamic_code_finding(case: str) -> None:
    report = analyze(workflow(prepare=HARMLESS[case] + "\n return {};"), TOOL_KINDS)
    assert [f for f in report.findings if f.rule == "dynamic-code"] == []


def test_computed_spellings_are_left_to_the_runtime() -> None:
    """Documented limit: names computed at run time are invisible to a tree walk; the
    sandbox makes eval/Function/the function constructors throw however they are reached
    (tests/unit/sandbox/test_sandbox_tampering.py)."""
    for code in (
        'globalThis["ev" + "al"]("1");',
        "globalThis[prepared.data.name]('1');",
        "Reflect.get(globalThis, prepared.data.name)('1');",
        'let key = "constructor"; (() => 1)[key]("1");',
    ):
        report = analyze(workflow(prepare=code), TOOL_KINDS)
        assert [f for f in report.findings if f.rule == "dynamic-code"] == [], code


def test_with_statement_is_a_syntax_error_and_hides_ctx() -> None:
    src = workflow(prepare="with (ctx) { http.post({}); }  // HERE\n return {};")
    report = analyze(src, TOOL_KINDS)
    line = marked(src)
    assert triples(report.findings) == [
        ("syntax", "error", line),
        ("dynamic-ctx-access", "warning", line),
    ]
    assert "strict mode" in report.findings[0].message


def test_never_raises_on_partial_attack_scripts() -> None:
    src = workflow(
        top="const g = globalThis; function h() { return arguments[0].sql.insert({}); }",
        prepare='g.eval("1"); (async () => 1).constructor("x"); await h(...arguments);'
        ' with (ctx) {} return {};',
        mutate="await (ctx).sql.insert({ table: arguments[1].t });",
    )
    for end in range(0, len(src), 7):
        analyze(src[:end], TOOL_KINDS)
        analyze(src[:end] + src[end + 11 :], TOOL_KINDS)


# ---- 2. ctx hidden from the analyzer -------------------------------------------------------

#: Spellings that reach ctx.http.post in prepare: seen through (a phase-call error) or not
#: (a warning, exactly like an alias). Every body carries ``// HERE`` on the reported line.
SEEN_THROUGH = {
    "optional chaining": 'await ctx?.http?.post({ url: "https://x.example/" });',
    "optional call": 'await ctx.http.post?.({ url: "https://x.example/" });',
    "parenthesized ctx": 'await (ctx).http.post({ url: "https://x.example/" });',
    "parenthesized member": 'await (ctx.http).post({ url: "https://x.example/" });',
    "parenthesized callee": 'await (ctx.http.post)({ url: "https://x.example/" });',
    "string subscripts": 'await ctx["http"]["post"]({ url: "https://x.example/" });',
    "arguments[0]": 'await arguments[0].http.post({ url: "https://x.example/" });',
    'arguments["0"]': 'await arguments["0"].http.post({ url: "https://x.example/" });',
    "(arguments)[0]": 'await (arguments)[0].http.post({ url: "https://x.example/" });',
    "arguments[0] in an arrow": "const go = () => arguments[0].http.post({}); await go();",
    "in a default parameter": "const go = async (x = ctx.http.post({})) => x; await go();",
}


@pytest.mark.parametrize("case", list(SEEN_THROUGH), ids=list(SEEN_THROUGH))
def test_ctx_spellings_seen_through_get_the_phase_checks(case: str) -> None:
    src = workflow(prepare=SEEN_THROUGH[case] + "  // HERE\n        return {};")
    report = analyze(src, TOOL_KINDS)
    assert triples(report.findings) == [("phase-call", "error", marked(src))]
    assert "ctx.http.post (a mutation) is not allowed here" in report.findings[0].message
    assert [(c.phase, c.tool) for c in report.calls] == [("prepare", "post")]


HIDDEN = {
    "alias": ("const c = ctx;", "dynamic-ctx-access"),
    "alias of arguments[0]": ("const c = arguments[0];", "dynamic-ctx-access"),
    "computed arguments index": (
        "await arguments[prepared.i].http.post({});", "dynamic-ctx-access"),
    "Array.from(arguments)": ("const [c] = Array.from(arguments);", "dynamic-ctx-access"),
    "arguments alias": ("const args = arguments;", "dynamic-ctx-access"),
    "arguments spread into an array": ("const [c] = [...arguments];", "dynamic-ctx-access"),
    "arguments in an object": ("const bag = { arguments };", "dynamic-ctx-access"),
    "arguments.callee": ("const me = arguments.callee;", "dynamic-ctx-access"),
    "arguments to an unknown function": ("await lib(...arguments);", "dynamic-ctx-access"),
    "computed member": ("await ctx[prepared.data.conn].post({});", "dynamic-ctx-access"),
    "sequence": ("await (0, ctx).http.post({});", "dynamic-ctx-access"),
    "array wrapper": ("const [c] = [ctx];", "dynamic-ctx-access"),
    "array index": ("await [ctx][0].http.post({});", "dynamic-ctx-access"),
    "destructuring": ("const { http } = ctx;", "destructured-ctx"),
    "destructuring arguments[0]": ("const { http } = arguments[0];", "destructured-ctx"),
    "Function.prototype.call": ("await relay.call(null, ctx);", "dynamic-ctx-access"),
    "Function.prototype.apply": ("await relay.apply(null, [ctx]);", "dynamic-ctx-access"),
    "Function.prototype.bind": ("const bound = relay.bind(null, ctx);", "dynamic-ctx-access"),
    "tool.call": ("await ctx.http.post.call(null, {});", "dynamic-ctx-access"),
    "Reflect.get": ('const http = Reflect.get(ctx, "http");', "dynamic-ctx-access"),
    "Object.values": ("const all = Object.values(ctx);", "dynamic-ctx-access"),
    "Proxy": ("const p = new Proxy(ctx, {});", "dynamic-ctx-access"),
    "returned": ("return ctx;", "dynamic-ctx-access"),
    "stored in an object": ("const o = { ctx };", "dynamic-ctx-access"),
}


@pytest.mark.parametrize("case", list(HIDDEN), ids=list(HIDDEN))
def test_ctx_hidden_from_the_analyzer_warns_like_an_alias(case: str) -> None:
    code, rule = HIDDEN[case]
    src = workflow(
        top="function relay(c) { return c; }",
        prepare=f"{code}  // HERE\n        return {{}};",
    )
    report = analyze(src, TOOL_KINDS)
    warnings = [f for f in report.findings if f.severity == "warning"]
    assert [(f.rule, f.line) for f in warnings][:1] == [(rule, marked(src))], report.findings
    assert report.ok  # a warning never blocks a deploy on its own
    if rule == "dynamic-ctx-access":
        assert "invisible to validation" in warnings[0].message
        assert "docs/security.md#hidden-ctx-calls" in warnings[0].message


def test_arguments_that_are_not_ctx_are_fine() -> None:
    body = """const n = arguments.length, state2 = arguments[1], again = arguments["length"];
        const inner = function () { return arguments[0]; };
        return { reservations: [], data: { n, s: inner(state2, again) } };"""
    assert analyze(workflow(prepare=body), TOOL_KINDS).findings == []


DEFINITION = """{top}
export default Keep.workflow({{
  name: "wf",
  topics: {{ "in": {{}} }},
  producers: {{ poll: {producer} }},
  consumers: {{ work: {consumer} }},
}});
"""
QUIET = "async function () { return null; }"


def consumer(prepare: str = QUIET, *, method: bool = False) -> str:
    if method:
        return f'{{ subscribe: ["in"], async prepare() {{ {prepare} }}, mutate: {QUIET} }}'
    return f'{{ subscribe: ["in"], prepare: {prepare}, mutate: {QUIET} }}'


#: Every handler form, reaching ctx only through ``arguments``. The mutation in prepare (or
#: in a producer) must be reported as a phase-call error in each.
ARGUMENT_FORMS = {
    "method without parameters": {
        "consumer": consumer("await arguments[0].sql.insert({});", method=True)
    },
    "function expression": {
        "consumer": consumer(
            "async function (ctx, state) { await arguments[0].sql.insert({}); }")
    },
    "function expression without parameters": {
        "consumer": consumer("async function () { await arguments[0].sql.insert({}); }")
    },
    "destructured ctx parameter": {
        "consumer": consumer("async function ({ sql }) { await arguments[0].sql.insert({}); }")
    },
    "arrow inside a function": {
        "consumer": consumer(
            "async function () { const go = () => arguments[0].sql.insert({}); await go(); }")
    },
    "{schedule, handler} with a function": {
        "producer": '{ schedule: { interval: "5m" }, handler: async function () { '
        "await arguments[0].sql.insert({}); } }"
    },
    "{schedule, handler} method": {
        "producer": '{ schedule: { interval: "5m" }, async handler() { '
        "await arguments[0].sql.insert({}); } }"
    },
    "bare producer function": {
        "producer": "async function () { await arguments[0].sql.insert({}); }"
    },
    "top-level helper without parameters": {
        "top": "function write() { return arguments[0].sql.insert({}); }",
        "consumer": consumer("async (ctx) => { await write(ctx); }"),
    },
    "helper receiving ctx second": {
        "top": "function write(a) { return arguments[1].sql.insert({}); }",
        "consumer": consumer("async (ctx) => { await write(1, ctx); }"),
    },
    "arguments spread into a helper": {
        "top": "function write(c) { return c.sql.insert({}); }",
        "consumer": consumer("async function () { await write(...arguments); }"),
    },
    "arguments spread after another argument": {
        "top": "function write(x, c) { return c.sql.insert({}); }",
        "consumer": consumer("async function () { await write(1, ...arguments); }"),
    },
    "local helper": {
        "consumer": consumer(
            "async function (ctx) { function write() { return arguments[0].sql.insert({}); }"
            " await write(ctx); }")
    },
}


@pytest.mark.parametrize("case", list(ARGUMENT_FORMS), ids=list(ARGUMENT_FORMS))
def test_arguments_is_the_ctx_in_every_handler_form(case: str) -> None:
    parts = {"top": "", "producer": QUIET, "consumer": consumer()}
    parts.update(ARGUMENT_FORMS[case])
    src = DEFINITION.format(**parts)
    report = analyze(src, TOOL_KINDS)
    errors = [f for f in report.findings if f.is_error]
    assert [f.rule for f in errors] == ["phase-call"], report.findings
    assert "ctx.sql.insert (a mutation) is not allowed here" in errors[0].message
    assert [c.tool for c in report.calls] == ["insert"]


def test_arrow_handler_arguments_are_not_its_ctx() -> None:
    """An arrow function has no ``arguments``: at top level the name is not the ctx."""
    src = DEFINITION.format(
        top="", producer=QUIET, consumer=consumer("async () => { const n = arguments; }")
    )
    assert analyze(src, TOOL_KINDS).findings == []


def test_nested_function_arguments_are_its_own() -> None:
    src = workflow(
        prepare="""function inner() { return arguments[0].sql.insert({}); }
        await inner({ sql: { insert() {} } });
        return {};"""
    )
    assert analyze(src, TOOL_KINDS).findings == []


def test_mutation_through_arguments_is_terminal_and_unique() -> None:
    src = workflow(
        mutate="""await arguments[0].sql.insert({ table: "t" });
        await ctx.sql.insert({ table: "u" });  // HERE"""
    )
    report = analyze(src, TOOL_KINDS)
    assert triples(report.findings) == [("second-mutation", "error", marked(src))]


def test_mutation_through_arguments_compiles_permissions() -> None:
    src = workflow(mutate='await arguments[0].sql.insert({ table: "invoices", values: {} });')
    (call,) = analyze(src, TOOL_KINDS).calls
    assert (call.phase, call.tool, dict(call.scope)) == ("mutate", "insert", {"table": "invoices"})


# ---- 3. deploy through a real host ---------------------------------------------------------

POST = 'await ctx.api.post({ url: "/orders", json: {} });'
REFUSED_AT_DEPLOY = {
    "eval in mutate": ("mutate", 'eval("ctx.api.post({ url: \'/orders\', json: {} })");'),
    "new Function in prepare": (
        "prepare", 'await new Function("c", "return c.api.post({ url: \'/o\' })")(ctx);'),
    "async constructor in next": ("next_", '(async () => {}).constructor("return 1");'),
    "arguments[0] mutation in prepare": ("prepare", 'await arguments[0].api.post({ url: "/o" });'),
}


def _script(where: str, code: str) -> str:
    kwargs = {"prepare": None, "mutate": POST, "next_": "return null;"}
    kwargs[where] = f"{code} /* HERE */"  # consumer_js puts each body on one line
    return workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(**kwargs))  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.parametrize("case", list(REFUSED_AT_DEPLOY), ids=list(REFUSED_AT_DEPLOY))
def test_deploy_refuses_and_stores_nothing(
    host: Host, tmp_path: Path, case: str  # noqa: F811
) -> None:
    src = _script(*REFUSED_AT_DEPLOY[case])
    with pytest.raises(ScriptInvalid) as info:
        deploy_source(host, tmp_path, src)
    assert "nothing was deployed" in str(info.value)
    errors = [f for f in info.value.findings if f.is_error]
    expected = "phase-call" if case.startswith("arguments") else "dynamic-code"
    assert [(f.rule, f.line) for f in errors] == [(expected, marked(src, "/* HERE */"))]
    assert host.store.find_workflow("wf") is None
    assert service.list_workflows(host) == []


@pytest.mark.integration
def test_refused_update_keeps_the_deployed_version(
    host: Host, tmp_path: Path, sink: Sink  # noqa: F811
) -> None:
    good = _script("next_", "return null;")
    first = deploy_source(host, tmp_path, good)
    bad = _script("mutate", 'eval("ctx.api.post({ url: \'/evil\', json: {} })");')
    with pytest.raises(ScriptInvalid):
        deploy_source(host, tmp_path, bad, name="wf-2.js")
    wf = host.store.find_workflow("wf")
    assert wf is not None
    assert wf.current_version_id == first.workflow.current_version_id
    current = host.store.get_version(wf.current_version_id)
    assert "eval" not in current.source
    service.trigger(host, "wf", "seed")
    service.trigger(host, "wf", "work")  # the deployed version runs, not the refused one
    assert [a.path for a in sink.applied] == ["/orders"]


@pytest.mark.integration
def test_top_level_code_from_strings_is_refused(host: Host, tmp_path: Path) -> None:  # noqa: F811
    """Top-level code runs in every handler's context: a helper that is never called at load
    (so the engine loads the module fine) is still refused by the static checks."""
    src = "const later = (code) => (0, eval)(code);  // TOP\n" + _script("next_", "return null;")
    with pytest.raises(ScriptInvalid) as info:
        deploy_source(host, tmp_path, src)
    assert [(f.rule, f.line) for f in info.value.findings if f.is_error] == [
        ("dynamic-code", marked(src, "// TOP"))
    ]
    assert host.store.find_workflow("wf") is None
