"""Host memory under the worst run the default limits allow (docs/security.md#limits).

``python -m bench.worst_run`` runs each scenario in a fresh host process (the real store on
SQLite, the real sandbox) and reads that process's peak resident memory, so scenarios do not
share a high-water mark. It prints JSON: per scenario the median peak RSS over ``--repeat``
runs, the peak above the baseline run, and how the run ended.

Scenarios, each pushing one limit as far as it goes:

* ``baseline`` — one small event;
* ``publish_limit_strings`` — events of ~250 KB strings up to ``publish_bytes_per_run``;
* ``publish_limit_objects`` — the same bytes as tiny objects (``[{"k":1},…]``), JSON's worst
  ratio of Python memory to bytes;
* ``return_value_objects`` — a handler returns ~``message_bytes`` of tiny objects as its state
  (parsed at the boundary, then refused by ``state_bytes``);
* ``before_the_limits`` — the attack that found the hole: 1000 events of 255 KB strings
  (now refused after ``publish_bytes_per_run``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCENARIOS: dict[str, str] = {
    "baseline": """
      await ctx.publish("items", { messageId: "a", title: "A", payload: { n: 1 } });
      return null;""",
    # 16 events of ~250 KB: just under publish_bytes_per_run (4 MiB), so the run commits.
    "publish_limit_strings": """
      const big = "s".repeat(250000);
      for (let i = 0; i < 16; i++)
        await ctx.publish("items", { messageId: "s" + i, title: "S " + i, payload: { big } });
      return null;""",
    "publish_limit_objects": """
      const many = Array.from({ length: 31000 }, () => ({ k: 1 }));
      for (let i = 0; i < 5; i++)  // serialising tiny objects costs CPU: 5 fit in 2 s
        await ctx.publish("items", { messageId: "o" + i, title: "O " + i, payload: { many } });
      return null;""",
    # As many tiny objects as the sandbox heap (64 MiB) and CPU (2 s) let a handler return.
    "return_value_objects": """
      return { many: Array.from({ length: 250000 }, () => ({ k: 1 })) };""",
    "before_the_limits": """
      const big = "x".repeat(255000);
      for (let i = 0; i < 1000; i++)
        await ctx.publish("items", { messageId: "x" + i, title: "X " + i, payload: { big } });
      return null;""",
}


def _script(body: str) -> str:
    return f"""
export default Keep.workflow({{
  name: "worst",
  topics: {{ "items": {{}} }},
  producers: {{ seed: async (ctx, state) => {{ {body} }} }},
  consumers: {{
    c: Keep.consumer({{
      subscribe: ["items"],
      async prepare(ctx) {{ return {{ reservations: [], data: {{}} }}; }},
      async mutate(ctx, prepared) {{}},
      async next(ctx, prepared, mutation) {{ return null; }},
    }}),
  }},
}});
"""


def run_one(scenario: str) -> dict[str, Any]:
    """In this process: deploy the scenario's script and run it once (SQLite store)."""
    from keepflow import service
    from keepflow.runtime.host import Host
    from keepflow.settings import Settings

    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "worst.js"
        path.write_text(_script(SCENARIOS[scenario]), encoding="utf-8")
        # A 4 GB heap is not what the limits allow; the default sandbox heap is kept.
        with Host(Settings(home=Path(home))) as host:
            service.deploy(host, path)
            t0 = time.perf_counter()
            outcome = service.trigger(host, "worst", "seed")
            seconds = time.perf_counter() - t0
            events = len(service.list_events(host, "worst", limit=10_000))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    failure = outcome.failure or {}
    return {"status": outcome.status.value, "code": failure.get("code"),
            "message": (failure.get("message") or "")[:160],
            "events": events, "seconds": round(seconds, 3), "peak_rss_mb": peak_kib / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worst_run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: run one, print JSON
    args = parser.parse_args(argv)
    if args.scenario:
        print(json.dumps(run_one(args.scenario)))
        return 0
    from keepflow.policies import LimitPolicy

    limits = LimitPolicy()
    results: dict[str, Any] = {}
    for name in SCENARIOS:
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-m", "bench.worst_run", "--scenario", name],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        peaks = [r["peak_rss_mb"] for r in runs]
        results[name] = {"peak_rss_mb": {"median": round(statistics.median(peaks), 1),
                                         "min": round(min(peaks), 1),
                                         "max": round(max(peaks), 1)},
                         **{k: runs[-1][k] for k in ("status", "code", "message", "events")},
                         "seconds_median": round(statistics.median(r["seconds"] for r in runs),
                                                 3)}
    base = results["baseline"]["peak_rss_mb"]["median"]
    for r in results.values():
        r["above_baseline_mb"] = round(r["peak_rss_mb"]["median"] - base, 1)
    print(json.dumps({"benchmark": "worst_run_memory", "store": "sqlite",
                      "limits": {"publish_bytes_per_run": limits.publish_bytes_per_run,
                                 "payload_bytes": limits.payload_bytes,
                                 "message_bytes": limits.message_bytes,
                                 "state_bytes": limits.state_bytes},
                      "scenarios": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
