"""What `keepflow connection add` writes to connections.toml (keepflow.connectors.manage):
every value it accepts reads back as itself, and secrets cannot be given as plain settings."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepflow.connectors.manage import parse_setting, toml_key, toml_value
from keepflow.errors import UsageError

TEXT = st.text(st.characters(blacklist_categories=("Cs",)))
VALUES = st.recursive(st.none().map(lambda _: "x") | st.booleans() | st.integers() | TEXT,
                      lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


@given(VALUES, TEXT)
def test_every_value_and_key_reads_back_as_itself(value: Any, key: str) -> None:
    doc = tomllib.loads(f"{toml_key(key or 'k')} = {toml_value(value)}")
    assert doc == {key or "k": value}


@pytest.mark.parametrize(("given_text", "expected"), [
    ("max_rows=10", ("max_rows", 10)),
    ('tables=["a", "b"]', ("tables", ["a", "b"])),
    ("verify=false", ("verify", False)),
    ("base_url=https://x.example/v1", ("base_url", "https://x.example/v1")),
    ("note=a = b", ("note", "a = b")),
])
def test_a_setting_is_toml_when_it_parses_as_toml(given_text: str, expected: tuple[str, Any]
                                                  ) -> None:
    assert parse_setting(given_text) == expected


@pytest.mark.parametrize("given_text", ["url_secret=x", "token_env=T", "type=sql", "=1",
                                        "NoCase=1", "novalue"])
def test_secrets_types_and_malformed_settings_are_refused(given_text: str) -> None:
    with pytest.raises(UsageError):
        parse_setting(given_text)
