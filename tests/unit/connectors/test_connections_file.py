"""connections.toml is re-read when it changes; a broken edit keeps the last valid version in
force and says why (docs/connectors.md#changing-connections)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keepflow.connectors.config import ConnectionsFile
from keepflow.errors import ConfigError

API = '[connections.api]\ntype = "http"\nbase_url = "https://api.example.org"\n'


def _write(path: Path, text: str, tick: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a distinct mtime, however fast the edit


def test_an_edit_is_picked_up_and_an_unchanged_file_is_not_reread(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    source = ConnectionsFile(path)
    first = source.current()
    assert first.names() == ["http"]  # no file: the default connection only
    assert source.current() is first
    _write(path, API, 1)
    second = source.current()
    assert second.names() == ["api", "http"]
    assert source.current() is second
    path.unlink()
    assert source.current().names() == ["http"]
    source.close()


def test_a_broken_edit_keeps_the_last_valid_connections_and_names_the_problem(
        tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    _write(path, API, 1)
    source = ConnectionsFile(path)
    valid = source.current()
    _write(path, "[connections.api\n", 2)
    assert source.current() is valid
    assert source.problem is not None
    assert "connections.toml" in source.problem.message
    _write(path, API.replace("api]", "other]"), 3)
    assert source.current().names() == ["http", "other"]
    assert source.problem is None
    source.close()


def test_a_broken_file_at_the_first_read_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    _write(path, "[connections.api\n", 1)
    with pytest.raises(ConfigError):
        ConnectionsFile(path).current()


def test_replaced_connections_stay_usable_until_close(tmp_path: Path) -> None:
    """A run in another thread keeps the set it started with."""
    path = tmp_path / "connections.toml"
    _write(path, API, 1)
    source = ConnectionsFile(path)
    old = source.current()
    connector = old.get("api")
    _write(path, API + '\n[connections.b]\ntype = "http"\n', 2)
    assert source.current() is not old
    assert old.get("api") is connector  # not closed under the run
    source.close()
    with pytest.raises(Exception, match="closed"):
        old.get("api")
