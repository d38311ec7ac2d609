"""Static checks other than the terminal mutation (SPEC §2, §4–§5, §9, §11.3 stage 2)."""

from __future__ import annotations

import pytest
from validation_samples import SPEC_EXAMPLE, TOOL_KINDS, errors, marked_line, rules, script

from keepflow.sandbox.static import analyze


def test_spec_example_has_no_findings() -> None:
    report = analyze(SPEC_EXAMPLE, TOOL_KINDS)
    assert report.findings == []
    assert report.ok
    calls = [(c.handler, c.phase, c.connection, c.tool, c.kind, c.line) for c in report.calls]
    assert calls == [
        ("pollInbox", "producer", "email", "search", "read", 8),
        ("addRow", "mutate", "sql", "insert", "mutate", 31),
    ]
    assert report.calls[1].scope == {"table": "invoices"}


PHASE_CALLS = {
    "mutation in a producer": {"producer": 'await ctx.sql.insert({ table: "t" });  // HERE'},
    "peek in a producer": {"producer": 'const e = await ctx.peek("in");  // HERE'},
    "getByIds in a producer": {"producer": 'await ctx.getByIds("in", ["a"]);  // HERE'},
    "mutation in prepare": {"prepare": 'await ctx.http.post({ url: "https://x.org/" });  // HERE'},
    "publish in prepare": {"prepare": 'await ctx.publish("out", { title: "x" });  // HERE'},
    "publish in mutate": {"mutate": 'await ctx.publish("out", { title: "x" });  // HERE'},
    "peek in mutate": {"mutate": 'const [e] = await ctx.peek("in", { limit: 1 });  // HERE'},
    "list read in mutate": {"mutate": 'const r = await ctx.sql.query({ sql: "x" });  // HERE'},
    "tool call in next": {"next_": "const r = await ctx.sql.get({ id: 1 });  // HERE"},
    "mutation in next": {"next_": 'await ctx.email.send({ to: "a@b.c" });  // HERE'},
    "peek in next": {"next_": 'await ctx.peek("in");  // HERE'},
    "getByIds in next": {"next_": 'await ctx.getByIds("in", ["x"]);  // HERE'},
    "through arguments[0] in prepare": {
        "prepare": 'await arguments[0].http.post({ url: "https://x.org/" });  // HERE'
    },
    "through (ctx) in next": {"next_": "await (ctx).sql.get({ id: 1 });  // HERE"},
    "through ctx?. in a producer": {"producer": 'await ctx?.sql?.insert({ table: "t" });  // HERE'},
    "in a default parameter of prepare": {
        "prepare": """const go = async (x = ctx.sql.insert({})) => x;  // HERE
        await go();"""
    },
    "in a nested function of prepare": {
        "prepare": """const write = async () => {
          await ctx.sql.insert({ table: "t" });  // HERE
        };
        await write();"""
    },
}


@pytest.mark.parametrize("case", list(PHASE_CALLS), ids=list(PHASE_CALLS))
def test_phase_violations_are_reported(case: str) -> None:
    src = script(**PHASE_CALLS[case])
    report = analyze(src, TOOL_KINDS)
    assert rules(errors(report.findings)) == [("phase-call", marked_line(src))]


def test_phase_violation_message_names_call_phase_and_fix() -> None:
    report = analyze(script(prepare='await ctx.publish("out", {});'), TOOL_KINDS)
    (finding,) = report.findings
    assert "consumer work, prepare" in finding.message
    assert "ctx.publish" in finding.message
    assert "publish from next" in finding.message


def test_phase_violation_through_a_top_level_helper() -> None:
    top = """async function record(c, row) {
  return c.sql.insert({ table: "audit", values: row });  // HERE
}"""
    src = script(top=top, prepare="await record(ctx, {}); return {};")
    report = analyze(src, TOOL_KINDS)
    assert rules(report.findings) == [("phase-call", marked_line(src))]
    assert "(via record)" in report.findings[0].message
    assert report.calls[0].via == ("record",)


ALLOWED = {
    "producer reads and publishes": {
        "producer": """const r = await ctx.http.get({ url: "https://x.org/feed" });
        const one = await ctx.sql.get({ id: 1 });
        for (const i of r.items) await ctx.publish("in", { messageId: i.id, title: i.t });
        ctx.log("polled");
        return state;"""
    },
    "prepare reads, peeks and gets by id": {
        "prepare": """const [e] = await ctx.peek("in", { limit: 5 });
        const again = await ctx.getByIds("in", [e.messageId]);
        const rows = await ctx.sql.query({ sql: "select 1" });
        return { reservations: [], data: { rows } };"""
    },
    "mutate gets by id and reads by id": {
        "mutate": """const [e] = await ctx.getByIds("in", prepared.data.ids);
        const row = await ctx.sql.get({ id: e.messageId });
        ctx.log.info("writing");
        await ctx.sql.update({ table: "t", values: row });"""
    },
    "next publishes": {"next_": 'await ctx.publish("out", { title: "x" }); return { n: 1 };'},
}


@pytest.mark.parametrize("case", list(ALLOWED), ids=list(ALLOWED))
def test_allowed_calls_have_no_findings(case: str) -> None:
    assert analyze(script(**ALLOWED[case]), TOOL_KINDS).findings == []


def test_unknown_connection_and_tool() -> None:
    src = script(
        prepare="""await ctx.slack.post({});  // HERE
        const r = await ctx.sql.select({});  // TOOL
        return {};"""
    )
    report = analyze(src, TOOL_KINDS)
    assert rules(report.findings) == [
        ("unknown-tool", marked_line(src)),
        ("unknown-tool", marked_line(src, "// TOOL")),
    ]
    assert "connections email, http, sql" in report.findings[0].message
    assert "get, insert, query, update" in report.findings[1].message


def test_ctx_parameter_may_have_any_name() -> None:
    src = SPEC_EXAMPLE.replace("async prepare(ctx, state)", "async prepare(k, state)").replace(
        'await ctx.peek("email.received"', 'await k.sql.insert({}); await k.peek("email.received"'
    )
    report = analyze(src, TOOL_KINDS)
    assert [(f.rule, f.line) for f in report.findings] == [("phase-call", 24)]


SHARED_GLOBALS = {
    "let reassigned": ("let seen = 0;", "seen = seen + 1;  // HERE"),
    "var incremented": ("var count = 0;", "count++;  // HERE"),
    "let property set": ("let cache = {};", "cache[prepared.data.id] = true;  // HERE"),
    "const array pushed": ("const ids = [];", "ids.push(prepared.data.id);  // HERE"),
    "const object property set": ("const memo = { n: 0 };", "memo.n += 1;  // HERE"),
    "const Map set": ("const m = new Map();", 'm.set("a", 1);  // HERE'),
    "Object.assign": ("const cfg = {};", "Object.assign(cfg, { a: 1 });  // HERE"),
}


@pytest.mark.parametrize("case", list(SHARED_GLOBALS), ids=list(SHARED_GLOBALS))
def test_shared_mutable_globals(case: str) -> None:
    top, body = SHARED_GLOBALS[case]
    src = script(top=top, mutate=body)
    report = analyze(src, TOOL_KINDS)
    assert rules(report.findings) == [("shared-mutable-global", marked_line(src))]
    assert "reset every run" in report.findings[0].message


def test_read_only_globals_and_helpers_are_fine() -> None:
    top = """const CONFIG = { table: "invoices", limit: 10, tags: ["a", "b"] };
const TOPIC = "out";
let mode = "fast";  // set at top level only
mode = mode.toUpperCase();
const lookup = new Map([["a", 1]]);
function title(e) { return `Row for ${e.subject}`; }
const pick = (rows) => rows.slice(0, CONFIG.limit);"""
    body = """const rows = pick(prepared.data.rows.concat(CONFIG.tags));
        let local = [];
        local.push(lookup.get("a"), mode);
        const seen = new Set();
        seen.add(1);
        await ctx.sql.insert({ table: CONFIG.table, values: { title: title(rows[0]) } });"""
    report = analyze(
        script(top=top, mutate=body, next_="await ctx.publish(TOPIC, {});"), TOOL_KINDS
    )
    assert report.findings == []
    assert report.calls[0].scope == {"table": "invoices"}


def test_parameter_shadowing_a_global_is_fine() -> None:
    top = "let total = 0;"
    body = "let total = 1; total += 2; await ctx.sql.insert({ values: { total } });"
    assert analyze(script(top=top, mutate=body), TOOL_KINDS).findings == []


DYNAMIC = {
    "computed connection": "const r = await ctx[prepared.data.conn].get({});  // HERE",
    "computed tool": "const r = await ctx.sql[prepared.data.tool]({});  // HERE",
    "connection alias": "const db = ctx.sql;  // HERE",
    "ctx passed to an unknown function": "await someLibrary(ctx);  // HERE",
    "computed arguments index": "await arguments[prepared.data.i].sql.get({});  // HERE",
    "arguments copied": "const [c] = Array.from(arguments);  // HERE",
    "ctx through Function.prototype.call": "await someLibrary.call(null, ctx);  // HERE",
    "ctx in a sequence": "await (0, ctx).sql.get({ id: 1 });  // HERE",
}


@pytest.mark.parametrize("case", list(DYNAMIC), ids=list(DYNAMIC))
def test_dynamic_ctx_access_is_a_warning(case: str) -> None:
    src = script(mutate=DYNAMIC[case])
    report = analyze(src, TOOL_KINDS)
    assert [(f.rule, f.severity, f.line) for f in report.findings] == [
        ("dynamic-ctx-access", "warning", marked_line(src))
    ]
    assert report.ok


def test_destructured_ctx_is_a_warning_and_skipped() -> None:
    src = SPEC_EXAMPLE.replace(
        "async next(ctx, prepared, mutation)", "async next({ publish }, prepared, mutation)"
    )
    report = analyze(src, TOOL_KINDS)
    assert [(f.rule, f.severity, f.line) for f in report.findings] == [
        ("destructured-ctx", "warning", 34)
    ]
    assert "use ctx" in report.findings[0].message or "name the parameter" in (
        report.findings[0].message
    )


def test_destructuring_ctx_in_the_body_is_a_warning() -> None:
    src = script(prepare="const { sql } = ctx;  // HERE\n        return {};")
    report = analyze(src, TOOL_KINDS)
    assert rules(report.findings) == [("destructured-ctx", marked_line(src))]


def test_publish_to_undeclared_topic_and_peek_of_unsubscribed_topic() -> None:
    src = script(
        prepare="""const [e] = await ctx.peek("out");  // HERE
        return {};""",
        next_='await ctx.publish("row.made", {});  // TOPIC',
    )
    report = analyze(src, TOOL_KINDS)
    assert rules(report.findings) == [
        ("unsubscribed-topic", marked_line(src)),
        ("undeclared-topic", marked_line(src, "// TOPIC")),
    ]


def test_syntax_error_is_reported_with_its_line() -> None:
    src = SPEC_EXAMPLE.replace("const [e] = await", "const [e = await")
    report = analyze(src, TOOL_KINDS)
    assert report.findings
    assert {f.rule for f in report.findings} == {"syntax"}
    assert report.findings[0].line == 24
    assert not report.ok


def test_missing_token_is_reported() -> None:
    report = analyze('export default Keep.workflow({ name: "x" ', TOOL_KINDS)
    assert [f.rule for f in report.findings] == ["syntax"]
    assert report.findings[0].line == 1


@pytest.mark.parametrize(
    ("src", "line"),
    [
        ("const x = 1;\n", 1),
        ('const wf = 1;\nKeep.workflow({ name: "x" });\n', 2),
        ('export const wf = Keep.workflow({ name: "x" });\n', 1),
    ],
)
def test_missing_default_export(src: str, line: int) -> None:
    report = analyze(src, TOOL_KINDS)
    assert rules(report.findings) == [("default-export", line)]


def test_default_export_through_a_const_is_accepted() -> None:
    src = SPEC_EXAMPLE.replace("export default Keep.workflow(", "const wf = Keep.workflow(")
    report = analyze(src + "export default wf;\n", TOOL_KINDS)
    assert report.findings == []
    assert len(report.calls) == 2


def test_handlers_written_as_arrows_functions_and_references() -> None:
    src = """
async function poll(ctx, state) { return ctx.http.get({ url: "https://feeds.example.com/a" }); }
const consumer = {
  subscribe: ["in"],
  prepare: async function (ctx) { return ctx.sql.query({ table: "jobs" }); },
  mutate: async (ctx, p) => { await ctx.http.post({ url: `https://hooks.example.com/${p.id}` }); },
  next: (ctx) => null,
};
export default Keep.workflow({
  name: "arrows",
  topics: { in: {} },
  producers: { poll, manual: (ctx) => ctx.http.head({ url: "https://x.example.com" }) },
  consumers: { work: Keep.consumer(consumer) },
});
"""
    report = analyze(src, TOOL_KINDS)
    assert report.findings == []
    assert [(c.handler, c.phase, c.tool, dict(c.scope)) for c in report.calls] == [
        ("poll", "producer", "get", {"host": "feeds.example.com"}),
        ("work", "prepare", "query", {"table": "jobs"}),
        ("work", "mutate", "post", {"host": "hooks.example.com"}),
        ("manual", "producer", "head", {"host": "x.example.com"}),
    ]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ('"https://api.example.com/v1"', "api.example.com"),
        ('"https://api.example.com"', "api.example.com"),
        ("`https://api.example.com/items/${id}`", "api.example.com"),
        ('"https://api.example.com/items/" + id', "api.example.com"),
        ("`https://api.example.com${path}`", None),  # the host could still change
        ("`https://${host}/x`", None),
        ("prepared.data.url", None),
    ],
)
def test_literal_http_host_scope(url: str, host: str | None) -> None:
    src = script(
        mutate=f"const id = 1, path = '/', host = 'h';\n await ctx.http.post({{ url: {url} }});"
    )
    (call,) = analyze(src, TOOL_KINDS).calls
    assert call.scope.get("host") == host


def test_report_to_dict_is_json_ready() -> None:
    report = analyze(script(mutate="await ctx.sql.insert({ table: 't', values: {} });"), TOOL_KINDS)
    data = report.to_dict()
    assert data["findings"] == []
    assert data["calls"][0]["scope"] == {"table": "t"}
    assert data["calls"][0]["literals"] == {"table": "t"}


def test_callback_parameter_named_like_ctx_is_not_ctx() -> None:
    body = """const names = prepared.data.rows.map((ctx) => ctx.name);
        await ctx.sql.insert({ table: "t", values: { names } });"""
    assert analyze(script(mutate=body), TOOL_KINDS).findings == []


def test_computed_definition_parts_are_warnings() -> None:
    src = """const extra = {};
export default Keep.workflow({ name: "x", topics: {}, producers: { ...extra }, consumers: {} });
"""
    report = analyze(src, TOOL_KINDS)
    assert [(f.rule, f.severity, f.line) for f in report.findings] == [
        ("dynamic-definition", "warning", 2)
    ]


def test_never_raises_on_broken_or_partial_scripts() -> None:
    for end in range(0, len(SPEC_EXAMPLE), 5):
        analyze(SPEC_EXAMPLE[:end], TOOL_KINDS)
        analyze(SPEC_EXAMPLE[:end] + SPEC_EXAMPLE[end + 9 :], TOOL_KINDS)


@pytest.mark.parametrize(
    "code",
    [
        'eval("ctx.sql.insert({})");',
        '(0, eval)("1");',
        'globalThis["eval"]("1");',
        'new Function("return 1");',
        '(async () => {}).constructor("return 1");',
        'setTimeout("ctx.sql.insert({})");',
        'await import("data:text/javascript,1");',
    ],
)
def test_code_built_from_strings_is_an_error(code: str) -> None:
    """More spellings: tests/security/test_static_dynamic_code.py."""
    src = script(prepare=f"{code}  // HERE\n        return {{}};")
    report = analyze(src, TOOL_KINDS)
    assert [(f.rule, f.severity, f.line) for f in report.findings] == [
        ("dynamic-code", "error", marked_line(src))
    ]
    assert not report.ok


def test_arguments_zero_is_the_ctx_parameter() -> None:
    src = script(mutate='await arguments[0].sql.insert({ table: "invoices" });')
    report = analyze(src, TOOL_KINDS)
    assert report.findings == []
    assert [(c.phase, c.tool, dict(c.scope)) for c in report.calls] == [
        ("mutate", "insert", {"table": "invoices"})
    ]
