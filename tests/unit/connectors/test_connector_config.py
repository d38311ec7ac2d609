"""connections.toml loading (SPEC §9): names, types, secrets from the environment, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow.connectors.base import ConnectionConfig, ToolKind
from keepflow.connectors.config import Connections, load_connections, parse_connections
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.secret import Secret
from keepflow.connectors.sql import SqlConnector
from keepflow.errors import ConfigError, UsageError

TOKEN = "tok-7f3a9c1e-very-secret"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connections.toml"
    path.write_text(text)
    return path


def test_missing_file_gives_the_default_http_connection(tmp_path: Path) -> None:
    with load_connections(tmp_path / "connections.toml", environ={}) as conns:
        assert conns.names() == ["http"]
        assert isinstance(conns.get("http"), HttpConnector)
        assert conns.tool_kinds()["http"]["post"] is ToolKind.MUTATE


def test_full_example_loads_with_secrets_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, """
[connections.shop]
type = "sql"
url_env = "SHOP_DB_URL"
tables = ["invoices", "orders"]

[connections.api]
type = "http"
base_url = "http://127.0.0.1:9000"
headers = { Accept = "application/json" }
headers_env = { Authorization = "API_TOKEN" }
""")
    env = {"SHOP_DB_URL": f"sqlite:///{tmp_path / 'shop.db'}", "API_TOKEN": TOKEN}
    with load_connections(path, environ=env) as conns:
        assert conns.names() == ["api", "http", "shop"]
        api = conns.config("api")
        assert api.settings["headers"]["Accept"] == "application/json"
        assert isinstance(api.settings["headers"]["Authorization"], Secret)
        assert api.settings["headers"]["Authorization"].reveal() == TOKEN
        assert isinstance(conns.config("shop").settings["url"], Secret)
        kinds = conns.tool_kinds()
        assert kinds["shop"] == {
            "query": ToolKind.READ, "get": ToolKind.READ_BY_ID, "insert": ToolKind.MUTATE,
            "update": ToolKind.MUTATE, "upsert": ToolKind.MUTATE, "delete": ToolKind.MUTATE,
        }
        assert kinds["api"]["get"] is ToolKind.READ
        assert conns.tool_specs()["api"]["post"].capability == "http.write"
        shop = conns.get("shop")
        assert conns.get("shop") is shop  # cached
        assert isinstance(shop, SqlConnector)
        for text in (repr(api), str(api), repr(conns), repr(shop), repr(conns.get("api")),
                     repr(conns.config("shop"))):
            assert TOKEN not in text
            assert "shop.db" not in repr(conns.config("shop"))


def test_user_entry_named_http_overrides_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.http]\ntype = "http"\nbase_url = "https://x.test"\n')
    conns = load_connections(path, environ={})
    assert conns.config("http").settings == {"base_url": "https://x.test"}
    assert conns.names() == ["http"]


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ('[connections.api]\ntype = "http"\nheaders_env = { Authorization = "NOPE" }\n',
         "headers_env.Authorization", "NOPE is not set"),
        ('[connections.db]\ntype = "sql"\nurl_env = "MISSING_URL"\n', "url_env",
         "MISSING_URL is not set"),
        ('[connections.db]\ntype = "sql"\nurl_env = "not a var"\n', "url_env",
         "must name an environment variable"),
        ('[connections.db]\ntype = "nosuch"\n', "type", "unknown connector type 'nosuch'"),
        ('[connections.db]\nurl = "x"\n', "type", "is required"),
        ('[connections.db]\ntype = "sql"\n', "url", "is required"),
        ('[connections.db]\ntype = "sql"\nurl = "sqlite:///relative.db"\n', "url",
         "absolute"),
        ('[connections.db]\ntype = "sql"\nurl = "mysql://h/db"\n', "url",
         "only sqlite and postgresql"),
        ('[connections.db]\ntype = "sql"\nurl = "postgresql://u:hunter2pw@h/db"\n', "url",
         "contains a password"),
        ('[connections.db]\ntype = "sql"\nurl = "sqlite:////a.db"\nmax_rows = 0\n',
         "max_rows", "between"),
        ('[connections.db]\ntype = "sql"\nurl = "sqlite:////a.db"\ntables = "x"\n',
         "tables", "list"),
        ('[connections.db]\ntype = "sql"\nurl = "sqlite:////a.db"\nschema = "s"\n',
         "schema", "only PostgreSQL"),
        ('[connections.api]\ntype = "http"\nbase_url = "ftp://x"\n', "base_url", "http(s)"),
        ('[connections.api]\ntype = "http"\ncolour = "red"\n', "colour", "unknown setting"),
        ('[connections.api]\ntype = "http"\nheaders = { Authorization = "Bearer hunter2pw" }\n',
         "headers", "headers_env"),
        ('[connections.api]\ntype = "http"\nbase_url = "http://x"\nbase_url_env = "B"\n',
         "base_url_env", "not both"),
    ],
)
def test_bad_entries_name_file_connection_and_key(
    tmp_path: Path, toml: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_connections(path, environ={"B": "http://y"})
    message = info.value.message
    assert str(path) in message
    assert f"key '{key}'" in message
    assert fragment in message
    assert "hunter2pw" not in message
    assert info.value.details["file"] == str(path)
    assert info.value.details["key"] == key


@pytest.mark.parametrize("name", ["Shop", "1db", "a-b", "publish", "peek", "log", "x" * 33])
def test_bad_connection_names_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'[connections."{name}"]\ntype = "http"\n')
    with pytest.raises(ConfigError, match=f"connection '{name}'"):
        load_connections(path, environ={})


def test_getbyids_cannot_be_a_connection_name() -> None:
    with pytest.raises(ConfigError):
        parse_connections({"connections": {"getByIds": {"type": "http"}}}, environ={})


def test_invalid_toml_and_unknown_top_level_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_connections(write(tmp_path, "[connections.x\n"), environ={})
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_connections(write(tmp_path, "[policy]\nx = 1\n"), environ={})


def test_empty_env_value_counts_as_missing(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.db]\ntype = "sql"\nurl_env = "DB"\n')
    with pytest.raises(ConfigError, match="DB is not set"):
        load_connections(path, environ={"DB": ""})


def test_secret_in_env_never_appears_in_errors(tmp_path: Path) -> None:
    # A URL that is a secret and invalid: the message names the key, not the value.
    path = write(tmp_path, '[connections.db]\ntype = "sql"\nurl_env = "DB"\n')
    with pytest.raises(ConfigError) as info:
        load_connections(path, environ={"DB": f"mysql://u:{TOKEN}@h/db"})
    assert TOKEN not in str(info.value)
    assert "url_env" in str(info.value)


def test_unknown_connection_and_closed_connections() -> None:
    conns = Connections([ConnectionConfig("http", "http")])
    with pytest.raises(UsageError, match="no connection named 'nope'"):
        conns.get("nope")
    conns.get("http")
    conns.close()
    conns.close()  # idempotent
    with pytest.raises(UsageError):
        conns.get("http")
