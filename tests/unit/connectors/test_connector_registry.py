"""The connector registry (SPEC §9): built-ins and plugins register through the same door."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from keepflow.connectors import registry
from keepflow.connectors.base import Connector, RiskTier, ToolCall, ToolKind, ToolSpec
from keepflow.connectors.config import load_connections
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.registry import (
    connector_types,
    discover,
    get_connector_class,
    plugin_errors,
    register_connector,
    unregister_connector,
)
from keepflow.connectors.sql import SqlConnector
from keepflow.errors import ConfigError


class EchoConnector(Connector):
    type_name: ClassVar[str] = "echo_test"
    tools: ClassVar[dict[str, ToolSpec]] = {
        "say": ToolSpec("say", ToolKind.READ, "echo.read", RiskTier.LOW, "echo params"),
    }

    def call(self, call: ToolCall) -> Any:
        return dict(call.params)


@pytest.fixture
def clean_registry() -> Iterator[None]:
    yield
    for name in ("echo_test", "plugged", "broken_plugin", "misnamed"):
        unregister_connector(name)
    discover(refresh=True)


def test_builtins_are_registered() -> None:
    assert {"http", "sql"} <= set(connector_types())
    assert get_connector_class("http") is HttpConnector
    assert get_connector_class("sql") is SqlConnector


@pytest.mark.usefixtures("clean_registry")
def test_register_is_idempotent_and_refuses_a_second_class_for_a_name() -> None:
    assert register_connector(EchoConnector) is EchoConnector
    register_connector(EchoConnector)
    assert get_connector_class("echo_test") is EchoConnector

    class Other(EchoConnector):
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_connector(Other)


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({"type_name": "Bad-Name"}, "type_name"),
        ({"tools": {}}, "non-empty"),
        ({"tools": {"x": ToolSpec("y", ToolKind.READ, "c", RiskTier.LOW, "")}}, "key must"),
        ({"tools": {"x-y": ToolSpec("x-y", ToolKind.READ, "c", RiskTier.LOW, "")}}, "key must"),
        ({"tools": {"x": ToolSpec("x", ToolKind.READ, "", RiskTier.LOW, "")}}, "capability"),
        ({"tools": {"x": ToolSpec("x", ToolKind.READ, "c", RiskTier.LOW, "", reconcile=True)}},
         "only mutations"),
        # A mutation says how its outcome is verified, or why it cannot be (SPEC §9).
        ({"tools": {"x": ToolSpec("x", ToolKind.MUTATE, "c", RiskTier.LOW, "")}},
         "reconcile_strategy"),
        ({"tools": {"x": ToolSpec("x", ToolKind.MUTATE, "c", RiskTier.LOW, "",
                                  reconcile_strategy="look it up")}}, "reconcile_strategy"),
        ({"tools": {"x": ToolSpec("x", ToolKind.MUTATE, "c", RiskTier.LOW, "", reconcile=True,
                                  reconcile_strategy="none: cannot")}}, "reconcile_strategy"),
    ],
)
def test_malformed_declarations_are_refused(attrs: dict[str, Any], fragment: str) -> None:
    cls = type("Bad", (EchoConnector,), attrs)
    with pytest.raises(TypeError, match=fragment):
        register_connector(cls)


def test_unknown_type_lists_known_types() -> None:
    with pytest.raises(ConfigError, match=r"known types: .*http.*sql"):
        get_connector_class("nope")


def _install_plugin(tmp_path: Path, entries: str, module_source: str) -> None:
    """A real distribution on sys.path: a module plus a dist-info with entry points."""
    (tmp_path / "kf_test_plugin.py").write_text(module_source)
    dist = tmp_path / "kf_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kf-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[keepflow.connectors]\n{entries}\n")


PLUGIN = '''
from typing import Any
from keepflow.connectors.base import Connector, RiskTier, ToolKind, ToolSpec

class Plugged(Connector):
    type_name = "plugged"
    tools = {"ping": ToolSpec("ping", ToolKind.READ, "plugged.read", RiskTier.LOW, "ping")}

    def call(self, call: Any) -> Any:
        return {"pong": True}

class Misnamed(Plugged):
    type_name = "something_else"

raise_on_import = False
'''


@pytest.mark.usefixtures("clean_registry")
def test_entry_point_plugins_are_discovered(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(
        tmp_path,
        "plugged = kf_test_plugin:Plugged\n"
        "misnamed = kf_test_plugin:Misnamed\n"
        "broken_plugin = kf_test_plugin_missing:Nothing",
        PLUGIN,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        discover(refresh=True)
        assert "plugged" in connector_types()
        errors = plugin_errors()
        assert "broken_plugin" in errors
        assert "entry point is named 'misnamed'" in errors["misnamed"]
        with pytest.raises(ConfigError, match="could not be loaded"):
            get_connector_class("broken_plugin")
        # A connection of the plugin's type works like a built-in.
        conf = tmp_path / "connections.toml"
        conf.write_text('[connections.pinger]\ntype = "plugged"\n')
        with load_connections(conf, environ={}) as conns:
            connector = conns.get("pinger")
            assert connector.call(ToolCall("ping", {}, 1.0)) == {"pong": True}
    finally:
        sys.modules.pop("kf_test_plugin", None)
    assert registry.ENTRY_POINT_GROUP == "keepflow.connectors"
