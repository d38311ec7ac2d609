"""Seal, keep and open connection secrets (docs/security.md#secrets).

A sealed secret is a Fernet token (AES-128-CBC with HMAC-SHA256) over ``{"name", "value"}``
under the home's key: the store holds only the token, and a token copied to another name's
row does not open there. Opening needs the key, which is never in the store."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from keepflow.credentials.keys import DOC, load_key
from keepflow.errors import ConfigError, UsageError
from keepflow.storable import first_unstorable
from keepflow.store.store import Store

#: A credential's name: ``<connection>.<setting>`` as ``keepflow connection add`` makes it.
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[A-Za-z0-9_-]{1,64}){1,2}\Z")
MAX_VALUE = 64 * 1024


class Vault:
    """The credentials of one home's store."""

    def __init__(self, store: Store, home: Path, environ: dict[str, str] | None = None) -> None:
        self.store = store
        self.home = home
        self._environ = environ

    def _fernet(self, *, create: bool) -> Fernet | None:
        key = load_key(self.home, create=create, environ=self._environ)
        return None if key is None else Fernet(key)

    @staticmethod
    def check_name(name: str) -> str:
        if not isinstance(name, str) or not NAME.match(name):
            raise UsageError(f"{name[:80]!r} is not a credential name (connection.setting, "
                             "e.g. slack.token)")
        return name

    def put(self, name: str, value: str, actor: str) -> None:
        """Seal ``value`` under ``name`` (replacing an earlier one), audited without it."""
        self.check_name(name)
        if not isinstance(value, str) or not value:
            raise UsageError(f"the secret for {name} is empty; nothing was stored")
        if first_unstorable(value) is not None:
            raise UsageError(f"the secret for {name} is not valid text (a NUL or an unpaired "
                             "surrogate); nothing was stored")
        if len(value.encode("utf-8")) > MAX_VALUE:
            raise UsageError(f"the secret for {name} is over {MAX_VALUE // 1024} KiB; nothing "
                             "was stored")
        fernet = self._fernet(create=True)
        assert fernet is not None
        sealed = fernet.encrypt(json.dumps({"name": name, "value": value}).encode("utf-8"))
        self.store.put_credential(name, sealed.decode("ascii"), actor)

    def get(self, name: str) -> str | None:
        """The secret stored under ``name``; None if there is none."""
        sealed = self.store.credential_ciphertext(name)
        if sealed is None:
            return None
        fernet = self._fernet(create=False)
        if fernet is None:
            raise ConfigError(f"the credential {name} is stored, but this home has no secret "
                              f"key to open it (was {self.home}/secret.key deleted, or "
                              f"KEEPFLOW_SECRET_KEY unset?); see {DOC}", credential=name)
        try:
            opened = json.loads(fernet.decrypt(sealed.encode("ascii")))
        except (InvalidToken, ValueError):
            raise ConfigError(f"the credential {name} cannot be opened with this home's key "
                              f"(the key changed since it was stored?); store it again with "
                              f"`keepflow connection secret`; see {DOC}", credential=name
                              ) from None
        if not isinstance(opened, dict) or opened.get("name") != name \
                or not isinstance(opened.get("value"), str):
            raise ConfigError(f"the credential {name} was sealed under another name; store it "
                              f"again; see {DOC}", credential=name)
        return str(opened["value"])

    def remove(self, names: list[str], actor: str) -> list[str]:
        return self.store.delete_credentials(names, actor)

    def of_connection(self, connection: str) -> list[str]:
        return [r["name"] for r in self.store.credential_list(prefix=f"{connection}.")]

    def marker(self) -> str:
        return self.store.credentials_marker()
