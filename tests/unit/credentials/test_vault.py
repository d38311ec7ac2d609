"""Sealed connection secrets (keepflow.credentials): what the store keeps is a token that opens
only under the home's key and only under its own name (docs/security.md#secrets)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from keepflow.credentials.keys import ENV, load_key
from keepflow.credentials.vault import Vault
from keepflow.errors import ConfigError, UsageError
from keepflow.store.schema import credentials
from keepflow.store.store import Store

SECRET = "xoxb-0123456789-abcdef"


@pytest.fixture
def vault(store: Store, tmp_path: Path) -> Vault:
    return Vault(store, tmp_path, environ={})


def test_a_secret_round_trips_and_the_store_holds_only_a_token(vault: Vault, store: Store,
                                                                tmp_path: Path) -> None:
    vault.put("slack.token", SECRET, "ann")
    assert vault.get("slack.token") == SECRET
    assert vault.get("slack.other") is None
    sealed = store.credential_ciphertext("slack.token")
    assert sealed is not None
    assert SECRET not in sealed
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    [row] = store.credential_list()
    assert set(row) == {"name", "created_at", "updated_at", "updated_by"}  # no ciphertext
    entry = store.audit_entries("credential", "slack.token")[0]
    assert SECRET not in str(entry)


def test_a_token_moved_to_another_name_does_not_open(vault: Vault, store: Store) -> None:
    vault.put("a.token", "first-secret-value", "ann")
    vault.put("b.token", "second-secret-value", "ann")
    stolen = store.credential_ciphertext("a.token")
    with store.write() as conn:
        conn.execute(update(credentials).where(credentials.c.name == "b.token")
                     .values(ciphertext=stolen))
    with pytest.raises(ConfigError, match="sealed under another name"):
        vault.get("b.token")


def test_another_key_or_no_key_cannot_open_it(vault: Vault, store: Store,
                                              tmp_path: Path) -> None:
    vault.put("a.token", SECRET, "ann")
    foreign = Vault(store, tmp_path, environ={ENV: "A" * 43 + "="})
    with pytest.raises(ConfigError, match="cannot be opened with this home's key"):
        foreign.get("a.token")
    (tmp_path / "secret.key").unlink()
    with pytest.raises(ConfigError, match="no secret key"):
        vault.get("a.token")


@pytest.mark.parametrize(("name", "value", "why"), [
    ("Slack.token", SECRET, "not a credential name"),
    ("slack", SECRET, "not a credential name"),
    ("slack.a.b.c", SECRET, "not a credential name"),
    ("slack.token", "", "empty"),
    ("slack.token", "bad\x00value", "not valid text"),
    ("slack.token", "lone \ud800 surrogate", "not valid text"),
    ("slack.token", "x" * (64 * 1024 + 1), "over 64 KiB"),
])
def test_bad_names_and_values_are_refused_and_nothing_is_stored(
        vault: Vault, store: Store, name: str, value: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        vault.put(name, value, "ann")
    assert store.credential_list() == []


def test_a_key_file_others_can_read_or_a_malformed_key_is_refused(tmp_path: Path) -> None:
    key = load_key(tmp_path, create=True, environ={})
    assert key is not None
    assert load_key(tmp_path, create=False, environ={}) == key
    (tmp_path / "secret.key").chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(tmp_path, create=False, environ={})
    with pytest.raises(ConfigError, match="not a keepflow secret key"):
        load_key(tmp_path, create=False, environ={ENV: "too-short"})
    assert load_key(tmp_path / "none", create=False, environ={}) is None
