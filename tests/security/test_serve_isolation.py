"""The real `keepflow serve`: a workflow whose script hands the host a string it cannot store
fails that run, explained — and does not take the host or the other workflows with it
(docs/security.md#text-the-host-can-store). Before the sandbox boundary checked values, the
run crashed the host outside any run and `serve` started it again about 100 times a second."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.acceptance.test_serve import Server, cli, cli_json, env, servers, wait_for

__all__ = ["env", "servers"]  # fixtures used below

pytestmark = pytest.mark.integration

HOSTILE = """
export default Keep.workflow({
  name: "hostile",
  topics: { "items": {} },
  producers: {
    poll: {
      schedule: { interval: "1s" },
      async handler(ctx, state) {
        await ctx.publish("items", { messageId: "x", title: "bad \\ud800 title", payload: {} });
        return null;
      },
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def test_a_hostile_workflow_fails_once_and_the_others_keep_running(
        env: dict[str, str], tmp_path: Path, servers: list[Server]) -> None:
    from tests.acceptance.test_serve import SCRIPT as TICKER
    from tests.acceptance.test_serve import consumed

    log = tmp_path / "serve.log"
    servers.append(Server(env, log))
    for name, source in (("hostile.js", HOSTILE), ("ticker.js", TICKER)):
        path = tmp_path / name
        path.write_text(source, encoding="utf-8")
        res = cli(env, "deploy", str(path))
        assert res.returncode == 0, res.stderr

    def hostile_failed() -> list[dict[str, object]]:
        return [r for r in cli_json(env, "runs", "hostile") if r["status"] == "failed"]

    [failed] = wait_for(hostile_failed, 30, "the hostile run to fail")
    assert failed["failureClass"] == "logic"
    assert "lone UTF-16 surrogate" in str(failed["failureMessage"])
    # The ticker goes on meanwhile and afterwards: three more ticks consumed.
    start = consumed(env)
    wait_for(lambda: consumed(env) >= start + 3, 30, "the ticker to keep running")
    # The hostile workflow needs a person now: no retry loop, one failed run in all.
    assert len(cli_json(env, "runs", "hostile")) == 1
    [wf] = [w for w in cli_json(env, "workflows") if w["name"] == "hostile"]
    assert wf["status"] == "needs_action"
    assert cli(env, "run", "show", str(failed["id"]), "--json").returncode == 0
    assert cli(env, "events", "hostile", "--json").returncode == 0
    servers[0].stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()
             if line.startswith("{")]
    assert not [e for e in lines if re.search(r"crashed|internal error", e["event"])]
    assert [e["event"] for e in lines].count("run.end") >= 4
