"""SPEC §15 scenario 14: script load errors — undeclared topic, topic with two consumers or
none, handler name clash, syntax error — are reported with line numbers (nothing deploys).

The engine that produces manifests is built in parallel, so the manifests here are written by
hand in the engine's documented shape.
"""

from __future__ import annotations

from typing import Any

from validation_samples import PHASES, TOOL_KINDS

from keepflow.sandbox.findings import format_finding, has_errors
from keepflow.sandbox.manifest_rules import check_manifest
from keepflow.sandbox.static import analyze

BROKEN = """\
export default Keep.workflow({
  name: "orders",
  topics: { "order.placed": {}, "order.shipped": {}, "order.audit": {} },
  producers: {
    poll: { schedule: { interval: "10m" }, async handler(ctx, state) { return state; } },
    ship(ctx) { return null; },
  },
  consumers: {
    ship: Keep.consumer({
      subscribe: ["order.placed"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx) { return null; },
    }),
    audit: Keep.consumer({
      subscribe: ["order.placed", "order.cancelled"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx) { return null; },
    }),
  },
});
"""


def manifest() -> dict[str, Any]:
    def consumer(*topics: str) -> dict[str, Any]:
        return {
            "viaConsumer": True,
            "subscribe": list(topics),
            "subscribeType": "array",
            "phases": dict(PHASES),
        }

    return {
        "registered": 1,
        "name": "orders",
        "nameType": "string",
        "topics": {"order.placed": {}, "order.shipped": {}, "order.audit": {}},
        "topicsType": "object",
        "producers": {
            "poll": {"form": "scheduled", "schedule": {"interval": "10m"}, "problem": None},
            "ship": {"form": "function", "schedule": None, "problem": None},
        },
        "consumers": {
            "ship": consumer("order.placed"),
            "audit": consumer("order.placed", "order.cancelled"),
        },
        "problems": [],
    }


def test_load_errors_are_reported_with_line_numbers() -> None:
    found = check_manifest(manifest(), BROKEN)
    assert has_errors(found)
    lines = [format_finding(f, "orders.js") for f in found]
    assert [(f.rule, f.line) for f in found] == [
        ("topic-consumers", 3),  # order.audit: no consumer
        ("topic-consumers", 3),  # order.shipped: no consumer
        ("handler-name-clash", 9),  # consumer ship vs producer ship (line 6)
        ("topic-consumers", 16),  # order.placed: ship and audit
        ("undeclared-topic", 16),  # order.cancelled
    ], lines
    assert lines[2].startswith("orders.js:9:5: error[handler-name-clash] ")
    assert "ship and audit" in found[3].message
    assert '"order.cancelled"' in found[4].message
    assert all(f.line is not None and f.column is not None for f in found)


def test_syntax_error_is_reported_with_its_line() -> None:
    lines = BROKEN.splitlines(keepends=True)
    assert lines[11] == "      async mutate(ctx, prepared) {},\n"
    lines[11] = "      async mutate(ctx, prepared) {,\n"  # line 12 loses its closing brace
    source = "".join(lines)
    report = analyze(source, TOOL_KINDS)
    assert not report.ok
    assert report.findings[0].rule == "syntax"
    assert report.findings[0].line == 12
