"""The manifest of a script's workflow definition, for load-time validation (SPEC §2, §11.3)."""

from __future__ import annotations

import pytest

from keepflow.errors import ScriptError
from keepflow.sandbox.pool import SandboxPool

pytestmark = pytest.mark.integration

SCRIPT = """
export default Keep.workflow({
  name: "invoice-rows",
  topics: { "email.received": {}, "row.created": { retention: "7d" } },
  producers: {
    pollInbox: { schedule: { interval: "5m" }, async handler(ctx, state) { return state; } },
    manual: async (ctx) => {},
    bad: { handler: 42 },
  },
  consumers: {
    addRow: Keep.consumer({
      subscribe: ["email.received"],
      async prepare() {}, async mutate() {}, async next() {},
    }),
    plain: { subscribe: "row.created", prepare() {}, mutate: 1 },
  },
});
"""


def test_the_manifest_describes_the_definition(pool: SandboxPool) -> None:
    assert pool.describe(SCRIPT) == {
        "registered": 1,
        "name": "invoice-rows",
        "nameType": "string",
        "topics": {"email.received": {}, "row.created": {"retention": "7d"}},
        "topicsType": "object",
        "producers": {
            "pollInbox": {"form": "scheduled", "schedule": {"interval": "5m"}, "problem": None},
            "manual": {"form": "function", "schedule": None, "problem": None},
            "bad": {"form": "invalid", "schedule": None,
                    "problem": "a producer must be a function or {schedule, handler}"},
        },
        "consumers": {
            "addRow": {"viaConsumer": True, "subscribe": ["email.received"],
                       "subscribeType": "array",
                       "phases": {"prepare": "function", "mutate": "function",
                                  "next": "function"}},
            "plain": {"viaConsumer": False, "subscribe": ["row.created"],
                      "subscribeType": "string",
                      "phases": {"prepare": "function", "mutate": "number",
                                 "next": "undefined"}},
        },
        "problems": [],
    }


def test_structural_problems(pool: SandboxPool) -> None:
    m = pool.describe(
        "export default Keep.workflow({ name: 7, topics: ['a'], producers: 3, consumers: null });")
    assert (m["name"], m["nameType"], m["topics"], m["topicsType"]) == (None, "number", None,
                                                                        "array")
    assert m["producers"] == {}
    assert m["consumers"] == {}
    assert m["problems"] == ["topics is not an object", "producers is not an object",
                             "consumers is not an object"]


def test_registration_counts(pool: SandboxPool) -> None:
    assert pool.describe("const x = 1;")["registered"] == 0
    m = pool.describe("Keep.workflow({ name: 'a' }); Keep.workflow({ name: 'b' });")
    assert (m["registered"], m["name"]) == (2, "a")
    m = pool.describe("export default Keep.workflow();")
    assert (m["registered"], m["nameType"], m["topicsType"]) == (1, "undefined", "undefined")


def test_non_json_schedules_are_reported_not_thrown(pool: SandboxPool) -> None:
    m = pool.describe("""export default Keep.workflow({ producers: {
      p: { schedule: { every: () => 1 }, handler() {} } } });""")
    assert m["producers"]["p"]["form"] == "scheduled"
    assert m["producers"]["p"]["schedule"] is None
    assert m["problems"] == [
        "producers.p.schedule at $.every is a function; only null, booleans, finite numbers, "
        "strings, arrays, plain objects and Dates can cross to the host"]


def test_a_hostile_definition_cannot_hide_its_problems(pool: SandboxPool) -> None:
    m = pool.describe("""
Object.defineProperty(Array.prototype, "0", { set() {}, configurable: true });
Array.prototype.push = () => 0;
export default Keep.workflow({ producers: 1 });""")
    assert m["problems"] == ["producers is not an object"]


def test_describe_reports_syntax_errors_with_position(pool: SandboxPool) -> None:
    with pytest.raises(ScriptError) as info:
        pool.describe("export default Keep.workflow({\n  name: 'x'\n  topics: {},\n});")
    assert (info.value.js_name, info.value.line) == ("SyntaxError", 3)
