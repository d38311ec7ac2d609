"""Building workflow scripts and reading results in tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from keepflow import service
from keepflow.policies import Policy, ReconcilePolicy, RetryPolicy, TimeoutPolicy
from keepflow.runtime.host import Host

#: The mutation most tests declare: a POST to the loopback sink keyed by the reserved event,
#: reconcilable through the sink's record lookup (SPEC §6) ...
RECONCILABLE_POST = """await ctx.api.post({ url: "/orders",
                                     json: { id: prepared.data.event.messageId },
                                     reconcile: { url: "/records/{idempotencyKey}" } });"""
#: ... and the same POST without a way to reconcile: an uncertain outcome goes to the person.
BLIND_POST = 'await ctx.api.post({ url: "/orders", json: { id: prepared.data.event.messageId } });'


def quick_policy() -> Policy:
    return Policy(
        retry=RetryPolicy(max_attempts=3, base_seconds=0.01, jitter=0),
        reconcile=ReconcilePolicy(max_attempts=3, base_seconds=60, factor=2,
                                  max_delay_seconds=600),
        timeouts=TimeoutPolicy(tool_call_seconds=0.5, reconcile_call_seconds=0.5,
                               handler_cpu_seconds=1.0, handler_wall_seconds=10),
    )


def deploy_source(host: Host, tmp_path: Path, source: str, name: str = "wf.js"
                  ) -> service.DeployResult:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return service.deploy(host, path)


def workflow_js(*, name: str = "wf", topics: tuple[str, ...] = ("items",),
                producers: str = "", consumers: str = "") -> str:
    topic_decl = ", ".join(f'"{t}": {{}}' for t in topics)
    return f"""
export default Keep.workflow({{
  name: "{name}",
  topics: {{ {topic_decl} }},
  producers: {{ {producers} }},
  consumers: {{ {consumers} }},
}});
"""


def consumer_js(name: str = "work", *, topic: str = "items", prepare: str | None = None,
                mutate: str = "", next_: str = "return null;") -> str:
    prepare = prepare or f"""
      const evs = await ctx.peek("{topic}", {{ limit: 1 }});
      if (!evs.length) return {{ reservations: [], data: {{}} }};
      return {{ reservations: [{{ topic: "{topic}", ids: [evs[0].messageId] }}],
               data: {{ event: evs[0] }} }};"""
    return f"""
    {name}: Keep.consumer({{
      subscribe: ["{topic}"],
      async prepare(ctx, state) {{ {prepare} }},
      async mutate(ctx, prepared) {{ {mutate} }},
      async next(ctx, prepared, mutation) {{ {next_} }},
    }}),"""


def seed_producer(ids: list[str], topic: str = "items") -> str:
    """A producer publishing fixed events (manual trigger)."""
    evs = ", ".join(f'{{ messageId: "{i}", title: "Item {i}", payload: {{ id: "{i}" }} }}'
                    for i in ids)
    return f"""
    seed: async (ctx, state) => {{
      for (const e of [{evs}]) await ctx.publish("{topic}", e);
      return {{ runs: (state?.runs ?? 0) + 1 }};
    }},"""


def events_of(host: Host, wf: str = "wf", topic: str | None = None) -> list[dict[str, Any]]:
    return service.list_events(host, wf, topic)


def run_detail(host: Host, run_id: str) -> dict[str, Any]:
    return service.show_run(host, run_id)
