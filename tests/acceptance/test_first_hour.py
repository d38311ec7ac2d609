"""A new user's first hour: the README's own commands work on a fresh machine, a missing or
mistyped home is refused instead of silently emptied, a running server follows edits of
connections.toml, looking at state works while the configuration is broken, and `keepflow
check` tells what a deploy would say (docs/cli.md, docs/connectors.md#changing-connections)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.test_serve import Server, servers

__all__ = ["servers"]  # fixture used below

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KEEPFLOW_HOME", "KEEPFLOW_DATABASE_URL", "KEEPFLOW_FAULTS")}
    return {**env, "KEEPFLOW_SANDBOX_WORKERS": "1", **extra}


def kf(env: dict[str, str], *args: str, cwd: Path | None = None
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def readme_commands() -> list[str]:
    """The commands of the README's "Using it" block, comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README.md's 'Using it' has no sh block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


# ------------------------------------------------------------------------ B.1 the README


def test_the_readme_commands_work_as_written_on_a_fresh_home(tmp_path: Path) -> None:
    """Run every line of "Using it" in a fresh directory that looks like the repository
    (`.venv`, `examples/`), with the default home ./.keepflow; only RUN_ID is filled in."""
    (tmp_path / ".venv").symlink_to(VENV)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = _env()
    commands = readme_commands()
    assert commands[0].endswith("keepflow init --example orders")
    assert any(c.endswith("keepflow deploy examples/orders/orders.js") for c in commands)
    outputs: dict[str, str] = {}
    for line in commands:
        argv = line.split()
        assert argv[0] == ".venv/bin/keepflow", line
        if "RUN_ID" in argv:
            runs = json.loads(outputs["runs --json"])
            argv[argv.index("RUN_ID")] = runs[0]["id"]
        if argv[1] == "serve":
            _serve_briefly(tmp_path, env, argv)
            continue
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0, (line, res.stdout, res.stderr)
        outputs[" ".join(argv[1:])] = res.stdout
        if argv[1] == "runs":  # keep a JSON copy for RUN_ID
            outputs["runs --json"] = subprocess.run(
                [*argv, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=120, check=True).stdout
    events = json.loads(outputs["events orders --json"])
    assert sorted(e["status"] for e in events) == ["consumed"] * 6
    with sqlite3.connect(tmp_path / ".keepflow" / "books.db") as db:
        assert db.execute("SELECT count(*) FROM invoices").fetchone() == (3,)
    with sqlite3.connect(tmp_path / ".keepflow" / "accounting.db") as db:
        assert db.execute("SELECT count(*) FROM notifications").fetchone() == (3,)
    assert (tmp_path / ".keepflow" / "keepflow.d.ts").is_file()


def _serve_briefly(cwd: Path, env: dict[str, str], argv: list[str]) -> None:
    """`keepflow serve` as the README runs it (default port): it listens, then Ctrl-C."""
    log = cwd / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, "--port", "0"], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_make_demo_runs_the_example_end_to_end(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples/orders/demo.py")], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "books.db invoices (5)" in res.stdout
    assert "accounting.db notifications (5, one per invoice)" in res.stdout


def test_init_example_never_overwrites_an_edited_connections_file(tmp_path: Path) -> None:
    env = _env(KEEPFLOW_HOME=str(tmp_path / "home"))
    assert kf(env, "init").returncode == 0
    conns = tmp_path / "home" / "connections.toml"
    conns.write_text('[connections.mine]\ntype = "http"\n', encoding="utf-8")
    res = kf(env, "init", "--example", "orders")
    assert res.returncode == 1
    assert "already exists and was edited" in res.stderr
    assert conns.read_text(encoding="utf-8") == '[connections.mine]\ntype = "http"\n'
    assert not (tmp_path / "home" / "shop.db").exists()
    again = _env(KEEPFLOW_HOME=str(tmp_path / "other"))
    assert kf(again, "init", "--example", "orders").returncode == 0
    second = kf(again, "init", "--example", "orders", "--json")  # idempotent
    assert second.returncode == 0
    assert json.loads(second.stdout)["created"] == []


# ------------------------------------------------------------------------ B.2 the home

READING = [["workflows"], ["runs", "orders"], ["events", "orders"], ["inbox"], ["status"],
           ["notifications"], ["run", "show", "01ABC"], ["policy", "show"]]
ACTING = [["deploy", "x.js"], ["check", "x.js"], ["trigger", "orders", "p"], ["drain"],
          ["serve", "--port", "0"], ["pause", "orders"], ["retry", "01ABC"]]


@pytest.mark.parametrize("command", READING + ACTING, ids=lambda c: "-".join(c[:2]))
def test_a_missing_home_is_refused_and_nothing_is_created(tmp_path: Path, command: list[str]
                                                          ) -> None:
    home = tmp_path / "typo"
    res = kf(_env(KEEPFLOW_HOME=str(home)), *command, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no keepflow home" in res.stderr
    assert "keepflow init" in res.stderr
    assert "internal error" not in res.stderr
    assert not home.exists()


def test_the_default_home_is_not_created_by_accident(tmp_path: Path) -> None:
    res = kf(_env(), "workflows", cwd=tmp_path)
    assert res.returncode == 1
    assert "keepflow init" in res.stderr
    assert not (tmp_path / ".keepflow").exists()


def test_an_existing_directory_is_not_taken_for_a_home(tmp_path: Path) -> None:
    """E.g. KEEPFLOW_HOME=/tmp by mistake: refused, no store is scattered into it."""
    res = kf(_env(KEEPFLOW_HOME=str(tmp_path)), "status")
    assert res.returncode == 1
    assert "has no keepflow store" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["init"], ["workflows"]])
def test_an_empty_keepflow_home_is_refused(tmp_path: Path, command: list[str]) -> None:
    res = kf(_env(KEEPFLOW_HOME=""), *command, cwd=tmp_path)
    assert res.returncode == 1
    assert "KEEPFLOW_HOME is set but empty" in res.stderr
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------- B.5 broken configuration, readable state


def test_looking_at_state_works_while_connections_toml_is_broken(tmp_path: Path) -> None:
    env = _env(KEEPFLOW_HOME=str(tmp_path / "home"))
    assert kf(env, "init", "--example", "orders").returncode == 0
    script = str(tmp_path / "home" / "orders.js")
    assert kf(env, "deploy", script).returncode == 0
    assert kf(env, "trigger", "orders", "pollOrders").returncode == 0
    runs = json.loads(kf(env, "runs", "orders", "--json").stdout)
    (tmp_path / "home" / "connections.toml").write_text("[connections.shop\ntype = sql\n")
    for command in [["workflows"], ["runs", "orders"], ["run", "show", runs[0]["id"]],
                    ["events", "orders"], ["event", "show", "orders", "order.received",
                                           "order-1"],
                    ["inbox"], ["status"], ["status", "orders"], ["notifications"]]:
        res = kf(env, *command)
        assert res.returncode == 0, (command, res.stderr)
    for command in [["deploy", script], ["check", script], ["trigger", "orders", "pollOrders"]]:
        res = kf(env, *command)
        assert res.returncode == 1, (command, res.stdout)
        assert "connections.toml" in res.stderr
        assert "internal error" not in res.stderr


# ------------------------------------------------------------------------ B.7 check


NO_RECONCILE = """
export default Keep.workflow({
  name: "hooks",
  topics: { "t": {} },
  producers: {
    async p(ctx) { await ctx.publish("t", { messageId: "a", title: "A", payload: {} }); },
  },
  consumers: {
    c: Keep.consumer({
      subscribe: ["t"],
      async prepare(ctx) {
        const [e] = await ctx.peek("t", { limit: 1 });
        return e ? { reservations: [{ topic: "t", ids: [e.messageId] }], data: {} }
                 : { reservations: [], data: {} };
      },
      async mutate(ctx, prepared) {
        await ctx.http.post({ url: "https://hooks.example.org/x", json: {} });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def test_check_validates_without_deploying_and_warns_about_unverifiable_mutations(
        tmp_path: Path) -> None:
    env = _env(KEEPFLOW_HOME=str(tmp_path / "home"))
    assert kf(env, "init").returncode == 0
    good = tmp_path / "hooks.js"
    good.write_text(NO_RECONCILE, encoding="utf-8")
    res = kf(env, "check", str(good), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["ok"] is True
    assert data["errors"] == 0
    assert data["workflow"] == "hooks"
    [warning] = data["findings"]
    assert warning["rule"] == "no-reconcile"
    assert warning["severity"] == "warning"
    assert "ctx.http.post" in warning["message"]
    assert "a person" in warning["message"]
    assert warning["line"] == 17
    assert json.loads(kf(env, "workflows", "--json").stdout) == []  # nothing deployed

    bad = tmp_path / "bad.js"
    bad.write_text(NO_RECONCILE.replace("await ctx.http.post", "ctx.nope.post"), "utf-8")
    res = kf(env, "check", str(bad), "--json")
    assert res.returncode == 1
    assert any(f["severity"] == "error" for f in json.loads(res.stdout)["findings"])
    human = kf(env, "check", str(bad))
    assert human.returncode == 1
    assert "it would not deploy" in human.stdout

    deployed = kf(env, "deploy", str(good))
    assert deployed.returncode == 0
    assert "warning[no-reconcile]" in deployed.stdout
    lookup = '{ url: "https://hooks.example.org/k/{idempotencyKey}" }'
    lookup = '{ url: "https://hooks.example.org/k/{idempotencyKey}" }'
    with_reconcile = NO_RECONCILE.replace("json: {} });", f"json: {{}}, reconcile: {lookup} }});")
    good.write_text(with_reconcile, encoding="utf-8")
    assert json.loads(kf(env, "check", str(good), "--json").stdout)["findings"] == []


# ------------------------------------------------- B.3 serve follows connections.toml


EXTRA = """
export default Keep.workflow({
  name: "extra",
  topics: {},
  producers: {
    async look(ctx, state) {
      const res = await ctx.extra.query({ sql: "SELECT 1 AS one" });
      return { seen: (state?.seen ?? 0) + res.rows[0].one };
    },
  },
  consumers: {},
});
"""


def _trigger(env: dict[str, str]) -> dict[str, Any]:
    res = kf(env, "trigger", "extra", "look", "--json")
    assert res.stdout, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def test_a_running_server_follows_edits_of_connections_toml(
        tmp_path: Path, servers: list[Server]) -> None:
    home = tmp_path / "home"
    env = _env(KEEPFLOW_HOME=str(home))
    assert kf(env, "init").returncode == 0
    servers.append(Server(env, tmp_path / "serve.log"))
    db = tmp_path / "extra.db"
    sqlite3.connect(db).close()
    conns = home / "connections.toml"
    conns.write_text(f'[connections.extra]\ntype = "sql"\nurl = "sqlite:///{db}"\n')
    script = tmp_path / "extra.js"
    script.write_text(EXTRA, encoding="utf-8")
    assert kf(env, "deploy", str(script)).returncode == 0
    # The server never saw the connection at start-up: it reads the edited file.
    assert _trigger(env)["status"] == "committed"

    conns.write_text("# the extra connection was removed\n")
    failed = _trigger(env)
    assert failed["status"] == "failed"
    assert failed["failureClass"] == "precondition"
    assert "extra" in failed["failureMessage"]
    assert "connections.toml" in failed["failureMessage"]
    assert "bug" not in failed["failureMessage"]
    [wf] = json.loads(kf(env, "workflows", "--json").stdout)
    assert wf["status"] == "needs_action"
    assert "precondition" in wf["statusReason"]

    # A broken edit: the last valid version stays in force and the failure quotes the error.
    conns.write_text("[connections.extra\n")
    assert kf(env, "resume", "extra").returncode == 0
    broken = _trigger(env)
    assert broken["status"] == "failed"
    assert "has an error" in broken["failureMessage"]

    conns.write_text(f'[connections.extra]\ntype = "sql"\nurl = "sqlite:///{db}"\n')
    assert kf(env, "resume", "extra").returncode == 0
    assert _trigger(env)["status"] == "committed"
    assert servers[0].proc.poll() is None


# ------------------------------------------------- B.4 one server per home


def test_a_second_server_leaves_the_first_discoverable(tmp_path: Path, servers: list[Server]
                                                       ) -> None:
    env = _env(KEEPFLOW_HOME=str(tmp_path / "home"))
    assert kf(env, "init").returncode == 0
    servers.append(Server(env, tmp_path / "serve.log"))
    second = kf(env, "serve", "--port", "0")
    assert second.returncode != 0
    assert "already runs" in second.stderr
    status = json.loads(kf(env, "status", "--json").stdout)
    assert status["server"] is not None
    assert status["server"]["pid"] == servers[0].proc.pid
