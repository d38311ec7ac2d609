"""The real `keepflow` command as a subprocess: set-up, deploy, runs, JSON contract, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GOOD = """
export default Keep.workflow({
  name: "notes",
  topics: { "note.new": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("note.new", { messageId: "n1", title: "Note one", payload: { t: 1 } });
      await ctx.publish("note.new", { messageId: "n2", title: "Note two", payload: { t: 2 } });
      return { done: true };
    },
  },
  consumers: {
    read: Keep.consumer({
      subscribe: ["note.new"],
      async prepare(ctx) {
        const [e] = await ctx.peek("note.new", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "note.new", ids: [e.messageId] }], data: e.payload };
      },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return { last: prepared.data.t }; },
    }),
  },
});
"""


class CLI:
    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.env = {**os.environ, "KEEPFLOW_HOME": str(home), "KEEPFLOW_SANDBOX_WORKERS": "1"}
        self.env.pop("KEEPFLOW_FAULTS", None)
        home.mkdir(parents=True, exist_ok=True)  # as `keepflow init` leaves it (docs/cli.md)
        if database_url:
            self.env["KEEPFLOW_DATABASE_URL"] = database_url
        else:
            self.env.pop("KEEPFLOW_DATABASE_URL", None)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)

    def json(self, *args: str) -> object:
        res = self(*args, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


@pytest.fixture
def cli(tmp_path: Path, store_url: str) -> CLI:
    return CLI(tmp_path / "home", store_url)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_init_deploy_trigger_drain_and_json_contract(cli: CLI, tmp_path: Path) -> None:
    assert cli("init").returncode == 0
    dep = cli.json("deploy", write(tmp_path, "notes.js", GOOD))
    assert dep == {"workflow": "notes", "id": dep["id"], "version": "1.0", "status": "created",
                   "findings": []}
    assert cli.json("deploy", write(tmp_path, "notes.js", GOOD))["status"] == "unchanged"
    run = cli.json("trigger", "notes", "seed")
    assert run["status"] == "committed"
    assert run["kind"] == "producer"
    drained = cli.json("drain")
    assert [r["status"] for r in drained["runs"]] == ["committed", "committed"]
    events = cli.json("events", "notes")
    assert isinstance(events, list)
    for e in events:
        assert {"messageId", "title", "status", "attempt", "reservedBy", "createdBy"} <= set(e)
        assert e["status"] == "consumed"
        assert e["createdBy"] == run["id"]
    shown = cli.json("event", "show", "notes", "note.new", "n1")
    assert isinstance(shown, dict)
    assert shown["payload"] == {"t": 1}
    assert shown["reservations"][0]["runStatus"] == "committed"
    runs = cli.json("runs", "notes")
    assert isinstance(runs, list)
    for r in runs:
        assert {"id", "handler", "kind", "status", "transitions", "mutations", "failureClass",
                "failureMessage"} <= set(r)
    detail = cli.json("run", "show", drained["runs"][0]["id"])
    assert isinstance(detail, dict)
    assert [t["to"] for t in detail["transitions"]][-1] == "committed"
    wfs = cli.json("workflows")
    assert isinstance(wfs, list)
    assert wfs[0]["topics"] == {"note.new": {"pending": 0, "consumed": 2, "skipped": 0}}
    human = cli("runs", "notes")
    assert human.returncode == 0
    assert "3 run(s)" in human.stdout


def test_invalid_script_is_refused_with_findings_and_nothing_deployed(cli: CLI, tmp_path: Path
                                                                      ) -> None:
    """SPEC §15 scenario 14, at the CLI: line numbers, exit 1, nothing deployed."""
    bad = GOOD.replace('subscribe: ["note.new"]', 'subscribe: ["note.old"]')
    res = cli("deploy", write(tmp_path, "bad.js", bad))
    assert res.returncode == 1
    assert "error[undeclared-topic]" in res.stderr
    line = next(i for i, text in enumerate(textwrap.dedent(bad).splitlines(), 1)
                if "note.old" in text)
    assert f"bad.js:{line}:" in res.stderr
    assert "nothing was deployed" in res.stderr
    assert "Traceback" not in res.stderr
    assert cli.json("workflows") == []
    broken = "export default Keep.workflow({\n  name: 'x',\n  topics: { a: {} ,\n});\n"
    syntax = cli("deploy", write(tmp_path, "syntax.js", broken))
    assert syntax.returncode == 1
    assert "error[syntax]" in syntax.stderr
    assert "syntax.js:4:" in syntax.stderr or "syntax.js:3:" in syntax.stderr


def test_errors_are_one_line_without_traceback(cli: CLI, tmp_path: Path) -> None:
    cases = [
        (("runs", "nope"), "no workflow named 'nope'"),
        (("run", "show", "01NOSUCHRUN"), "no run 01NOSUCHRUN"),
        (("deploy", str(tmp_path / "missing.js")), "missing.js"),
    ]
    for args, needle in cases:
        res = cli(*args)
        assert res.returncode != 0, args
        assert needle in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    cli("deploy", write(tmp_path, "notes.js", GOOD))
    res = cli("events", "notes", "--status", "done")
    assert res.returncode == 2
    assert "unknown event status 'done'" in res.stderr
    res = cli("trigger", "notes", "nothing")
    assert res.returncode == 1
    assert "has no handler 'nothing' (handlers: read, seed)" in res.stderr


def test_trigger_exit_code_says_the_run_failed(cli: CLI, tmp_path: Path) -> None:
    broken = GOOD.replace("return { done: true };", "throw new Error('source is down');")
    cli("deploy", write(tmp_path, "b.js", broken))
    res = cli("trigger", "notes", "seed")
    assert res.returncode == 3
    assert "failed" in res.stdout
    assert "source is down" in res.stdout
