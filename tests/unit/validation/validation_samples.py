"""Shared sample scripts for the validation tests (SPEC §2, §11.3)."""

from __future__ import annotations

from typing import Any

from keepflow.sandbox.findings import Finding

TOOL_KINDS: dict[str, dict[str, str]] = {
    "email": {"search": "read", "get": "read_by_id", "send": "mutate"},
    "http": {"get": "read", "head": "read", "post": "mutate", "put": "mutate"},
    "sql": {"query": "read", "get": "read_by_id", "insert": "mutate", "update": "mutate"},
}

# The example of SPEC §2, verbatim.
SPEC_EXAMPLE = """\
export default Keep.workflow({
  name: "invoice-rows",
  topics: { "email.received": {}, "row.created": {} },
  producers: {
    pollInbox: {
      schedule: { interval: "5m" },            // or { cron: "0 * * * *", tz: "Europe/Berlin" }
      async handler(ctx, state) {
        const msgs = await ctx.email.search({ folder: "INBOX", since: state?.since });
        for (const m of msgs.items) {
          await ctx.publish("email.received", {
            messageId: m.id,
            title: `Email from ${m.from}: "${m.subject}"`,
            payload: { from: m.from, subject: m.subject },
          });
        }
        return { since: msgs.newest ?? state?.since };
      },
    },
  },
  consumers: {
    addRow: Keep.consumer({
      subscribe: ["email.received"],
      async prepare(ctx, state) {
        const [e] = await ctx.peek("email.received", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "email.received", ids: [e.messageId] }],
                 data: { email: e.payload, id: e.messageId },
                 ui: { summary: `Add row for ${e.title}` } };
      },
      async mutate(ctx, prepared) {
        await ctx.sql.insert({ table: "invoices", values: prepared.data.email,
                               key: { message_id: prepared.data.id } });   // terminal
      },
      async next(ctx, prepared, mutation) {
        if (mutation.status === "applied")
          await ctx.publish("row.created", { messageId: `row:${prepared.data.id}`,
            title: `Row for ${prepared.data.email.subject}`, payload: mutation.result });
        return null;   // consumer state (optional)
      },
    }),
  },
});
"""

PHASES = {"prepare": "function", "mutate": "function", "next": "function"}


def spec_example_manifest() -> dict[str, Any]:
    """What the engine reports for SPEC_EXAMPLE."""
    return {
        "registered": 1,
        "name": "invoice-rows",
        "nameType": "string",
        "topics": {"email.received": {}, "row.created": {}},
        "topicsType": "object",
        "producers": {
            "pollInbox": {"form": "scheduled", "schedule": {"interval": "5m"}, "problem": None},
        },
        "consumers": {
            "addRow": {
                "viaConsumer": True,
                "subscribe": ["email.received"],
                "subscribeType": "array",
                "phases": dict(PHASES),
            },
        },
        "problems": [],
    }


def script(
    *,
    prepare: str = "return { reservations: [], data: {} };",
    mutate: str = "",
    next_: str = "return null;",
    producer: str = "return state;",
    top: str = "",
) -> str:
    """A small valid workflow with the given handler bodies (ctx is called `ctx`)."""
    return f"""{top}
export default Keep.workflow({{
  name: "t",
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
      async mutate(ctx, prepared) {{
        {mutate}
      }},
      async next(ctx, prepared, mutation) {{
        {next_}
      }},
    }}),
  }},
}});
"""


def marked_line(source: str, marker: str = "// HERE") -> int:
    """The 1-based line carrying ``marker``."""
    lines = [i for i, text in enumerate(source.splitlines(), 1) if marker in text]
    assert len(lines) == 1, f"expected one {marker!r} in the script"
    return lines[0]


def rules(findings: list[Finding]) -> list[tuple[str, int | None]]:
    return [(f.rule, f.line) for f in findings]


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
