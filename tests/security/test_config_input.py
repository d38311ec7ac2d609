"""Hostile or broken configuration files give a clear ConfigError naming the file and the key,
never an internal error (docs/security.md#the-local-operator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow.connectors.config import load_connections
from keepflow.errors import ConfigError
from keepflow.policies import PolicyBook


@pytest.mark.parametrize(("body", "says"), [
    (b"[retry]\nmax_attempts = 5 # \xff\xfe\n", "not UTF-8 text"),
    (b'x = "\\ud800"\n', "not valid TOML"),
    (b"workflows = 5\n", "workflows: must be a table"),
    (b'connectors = "x"\n', "connectors: must be a table"),
    (b"[workflows]\na = 5\n", "workflows.a: must be a table"),
    (b"[workflows.a]\nconnectors = 3\n", "workflows.a.connectors: must be a table"),
    (b"[workflows.a.connectors]\nb = 1\n", "workflows.a.connectors.b: must be a table"),
    (b"[connectors.api]\nretry = 5\n", "connectors.api: retry"),
    (b"[connectors.api]\nlimits = {}\n", "a connector may only set"),
    (b"[limits]\npayload_bytes = 1e400\n", "limits.payload_bytes"),
    (b"[limits]\nmin_interval_seconds = 0\n", "limits.min_interval_seconds"),
    (b"[limits]\nworkflow_storage_bytes = -1\n", "limits.workflow_storage_bytes"),
    (b"[retry]\nmax_attempts = 99999999999999999999999\n", "retry.max_attempts"),
    (b"[approvals]\nrequire = [1]\n", "approvals.require"),
    (b'[notifications]\nwebhook_url = "file:///etc/passwd"\n', "notifications.webhook_url"),
    (b'[notifications]\nwebhook_url = "http://a b"\n', "notifications.webhook_url"),
    (b"[nope]\nx = 1\n", "nope"),
    (b"[consumer]\nbackoff_timeout_seconds = inf\n", "consumer.backoff_timeout_seconds"),
    (b"[retry]\nbase_seconds = nan\n", "retry.base_seconds"),
    (b"[reconcile]\nfactor = 1e308\n", "reconcile.factor"),
    (b"[timeouts]\ntool_call_seconds = 3600\n", "timeouts.tool_call_seconds"),
    (b"[limits]\nsandbox_memory_bytes = 99999999999999\n", "limits.sandbox_memory_bytes"),
], ids=["bad-utf8", "surrogate-escape", "workflows-int", "connectors-str", "workflow-int",
        "wf-connectors-int", "wf-connector-int", "connector-section-int", "connector-limits",
        "huge-float", "zero-interval", "negative-quota", "huge-int", "require-int",
        "file-webhook", "space-webhook", "unknown-section", "inf-backoff", "nan-base",
        "huge-factor", "call-outlives-lease", "huge-heap"])
def test_a_broken_policy_file_is_refused_with_the_key(tmp_path: Path, body: bytes,
                                                      says: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(body)
    with pytest.raises(ConfigError) as info:
        PolicyBook.load(path)
    assert says in info.value.message
    assert str(path) in info.value.message or "policy" in info.value.message


@pytest.mark.parametrize(("body", "says"), [
    (b'[connections.x]\ntype = "http" # \xff\n', "not UTF-8 text"),
    (b'[connections.x]\ntype = "http"\nbase_url = "http://\\ud800"\n', "not valid TOML"),
    (b"connections = 5\n", "must be a table"),
    (b'[connections."\\u001b[2J"]\ntype = "http"\n', "connection names must match"),
    (b'[connections.x]\ntype = "\\u0000"\n', "type"),
], ids=["bad-utf8", "surrogate-escape", "not-a-table", "escape-in-name", "nul-type"])
def test_a_broken_connections_file_is_refused(tmp_path: Path, body: bytes, says: str) -> None:
    path = tmp_path / "connections.toml"
    path.write_bytes(body)
    with pytest.raises(ConfigError) as info:
        load_connections(path, environ={})
    assert says in info.value.message


def test_secrets_from_the_environment_must_be_text(tmp_path: Path) -> None:
    """An environment variable holding bytes that are not UTF-8 (decoded by Python with
    surrogateescape) would reach an HTTP header or a database URL: refused at load."""
    path = tmp_path / "connections.toml"
    path.write_text('[connections.api]\ntype = "http"\nbase_url = "https://api.example.org"\n'
                    'headers_env = { Authorization = "TOKEN" }\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_connections(path, environ={"TOKEN": "Bearer \udcff\udcfe"})
    assert "TOKEN" in info.value.message
    assert "\udcff" not in info.value.message


@pytest.mark.parametrize("command", [["workflows"], ["init"], ["status"]])
def test_a_home_that_is_a_file_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    import os
    import subprocess
    import sys

    home = tmp_path / "not-a-dir"
    home.write_text("x")
    env = {**os.environ, "KEEPFLOW_HOME": str(home)}
    env.pop("KEEPFLOW_DATABASE_URL", None)
    res = subprocess.run([sys.executable, "-m", "keepflow.cli", *command], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1
    assert "KEEPFLOW_HOME" in res.stderr
    assert "internal error" not in res.stderr


def test_no_call_may_outlive_the_lease_that_protects_it() -> None:
    """A mutation's call ends before the workflow's lease, renewed when the attempt was
    recorded in_flight, could expire and another host take the run over."""
    from keepflow.model import LEASE_TTL
    from keepflow.policies import MAX_CALL_SECONDS, TimeoutPolicy

    assert LEASE_TTL.total_seconds() - 30 > MAX_CALL_SECONDS
    for name in ("tool_call_seconds", "reconcile_call_seconds"):
        limits = TimeoutPolicy.model_fields[name].metadata
        assert any(getattr(m, "le", None) == MAX_CALL_SECONDS for m in limits), name
