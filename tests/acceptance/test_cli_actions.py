"""The person's commands through the real CLI: inbox, resolve, approve/reject, retry, event
skip, policy show — including refusals (one line, non-zero exit, nothing changed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.test_cli import CLI, GOOD, write

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path: Path, store_url: str) -> CLI:
    return CLI(tmp_path / "home", store_url)


def test_inbox_policy_and_event_skip(cli: CLI, tmp_path: Path) -> None:
    assert cli("inbox").stdout.strip() == "nothing needs you"
    assert cli.json("inbox") == []
    shown = cli.json("policy", "show")
    assert isinstance(shown, dict)
    assert shown["retry"]["max_attempts"] == 5
    assert shown["approvals"]["require"] == []
    assert cli("deploy", write(tmp_path, "notes.js", GOOD)).returncode == 0
    assert cli("trigger", "notes", "seed").returncode == 0
    skipped = cli.json("event", "skip", "notes", "note.new", "n1")
    assert skipped["status"] == "skipped"
    again = cli("event", "skip", "notes", "note.new", "n1")
    assert again.returncode == 1
    assert "already skipped" in again.stderr
    drained = cli.json("drain")
    assert len(drained["runs"]) == 1  # only n2: nothing reserves a skipped event


def test_answers_are_refused_with_one_line(cli: CLI, tmp_path: Path) -> None:
    cli("deploy", write(tmp_path, "notes.js", GOOD))
    run = cli.json("trigger", "notes", "seed")
    res = cli("resolve", run["id"])
    assert res.returncode == 2
    assert "--try-again, --didnt-happen or --skip" in res.stderr
    for args in (("resolve", run["id"], "--skip"), ("approve", run["id"]),
                 ("retry", run["id"]), ("resolve", "01NOSUCHRUN", "--try-again")):
        res = cli(*args)
        assert res.returncode == 1, args
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr
    assert cli.json("run", "show", run["id"])["status"] == "committed"


def test_a_bad_policy_file_is_refused_with_the_key(cli: CLI) -> None:
    home = Path(cli.env["KEEPFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "policy.toml").write_text("[retry]\nmax_attempts = -1\n", encoding="utf-8")
    res = cli("policy", "show")
    assert res.returncode == 1
    assert "retry.max_attempts" in res.stderr
    (home / "policy.toml").write_text("[connectors.api]\nlimits = {}\n", encoding="utf-8")
    res = cli("policy", "show")
    assert res.returncode == 1
    assert "connectors.api.limits" in res.stderr


def test_policy_show_for_a_workflow_applies_overrides(cli: CLI, tmp_path: Path) -> None:
    home = Path(cli.env["KEEPFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "policy.toml").write_text(
        "[connectors.http.timeouts]\ntool_call_seconds = 5\n"
        "[workflows.notes.limits]\npayload_bytes = 4096\n", encoding="utf-8")
    cli("deploy", write(tmp_path, "notes.js", GOOD))
    shown = cli.json("policy", "show", "notes")
    assert isinstance(shown, dict)
    assert shown["limits"]["payload_bytes"] == 4096
    assert shown["connectors"]["http"]["timeouts"]["tool_call_seconds"] == 5
    text = cli("policy", "show").stdout
    assert "limits.payload_bytes = 262144" in text
    assert json.loads(cli("policy", "show", "--json").stdout)["limits"]["payload_bytes"] == 262144
