"""Adding, listing, checking and removing connections (``keepflow connection …``).

``connections.toml`` keeps each connection's plain settings; its secrets are sealed in the
store (:class:`~keepflow.credentials.vault.Vault`) and the file only names them
(``token_secret = "slack.token"``). An added connection is validated by its connector before
the file changes; a failed add leaves nothing behind. Edits replace the file atomically.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keepflow.connectors.config import CONNECTION_NAME, RESERVED_NAMES, parse_connections
from keepflow.connectors.registry import get_connector_class
from keepflow.credentials.vault import Vault
from keepflow.errors import ConfigError, Conflict, KeepflowError, NotFound, UsageError

DOC = "docs/connectors.md#configuring-connections"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_SETTING = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    if not path.exists():
        return "", {}
    try:
        text = path.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8 first", file=str(path)
                          ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix it by hand first", file=str(path)
                          ) from None


def _connections(doc: Mapping[str, Any]) -> dict[str, Any]:
    section = doc.get("connections", {})
    return dict(section) if isinstance(section, Mapping) else {}


def toml_value(value: Any) -> str:
    """``value`` as TOML (strings, numbers, booleans, lists and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise UsageError(f"{value!r} cannot be written to connections.toml")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _basic_string(key)


def _basic_string(text: str) -> str:
    """A TOML basic string: JSON escapes every control character TOML forbids but DEL."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def parse_setting(text: str) -> tuple[str, Any]:
    """``--set key=value``: the value is TOML when it parses as one (``10``, ``true``,
    ``["a", "b"]``), else the text itself."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _SETTING.match(key):
        raise UsageError(f"--set {text[:80]!r}: expected key=value with a lower-case key "
                         f"(see {DOC})")
    if key.endswith(("_env", "_secret")) or key == "type":
        raise UsageError(f"--set {key}=…: secrets are given with --secret {key} (read from "
                         f"a prompt or stdin), and the type with --type (see {DOC})")
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".connections.", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _section(name: str, type_name: str, settings: Mapping[str, Any],
             secrets: Mapping[str, Any]) -> str:
    lines = [f"[connections.{name}]", f"type = {toml_value(type_name)}"]
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in settings.items()]
    lines += [f"{toml_key(k + '_secret')} = {toml_value(v)}" for k, v in secrets.items()]
    return "\n".join(lines) + "\n"


def add(path: Path, vault: Vault, name: str, type_name: str, settings: Mapping[str, Any],
        secrets: Mapping[str, str], actor: str) -> dict[str, Any]:
    """Add connection ``name``; ``secrets`` maps setting names to their values (sealed in the
    store, never written to the file)."""
    if not CONNECTION_NAME.match(name) or name in RESERVED_NAMES:
        raise UsageError(f"{name[:40]!r} cannot name a connection: use [a-z][a-z0-9_]{{0,31}}, "
                         f"not one of {', '.join(sorted(RESERVED_NAMES))}")
    get_connector_class(type_name)  # an unknown type says which exist
    text, doc = _read(path)
    if name in _connections(doc):
        raise Conflict(f"connection '{name}' exists already; `keepflow connection remove "
                       f"{name}` first, or change a secret with `keepflow connection secret`")
    refs: dict[str, Any] = {}
    for key in secrets:
        top, _, sub = key.partition(".")  # headers.Authorization: one entry of a table
        if not _SETTING.match(top) or top in settings or (sub and not _BARE_KEY.match(sub)) \
                or (not sub and top in refs) or (sub and isinstance(refs.get(top), str)):
            raise UsageError(f"--secret {key[:40]!r}: a lower-case setting name (or "
                             "setting.Entry for a table such as headers.Authorization), "
                             "given once")
        if sub:
            refs.setdefault(top, {})[sub] = f"{name}.{key}"
        else:
            refs[top] = f"{name}.{key}"
    section = _section(name, type_name, settings, refs)
    sealed: list[str] = []
    try:
        for key, value in secrets.items():
            vault.put(f"{name}.{key}", value, actor)
            sealed.append(f"{name}.{key}")
        new_text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
        parse_connections(tomllib.loads(new_text), source=str(path), stored=vault.get)
        _write_atomically(path, new_text)
    except BaseException:
        if sealed:
            vault.remove(sealed, actor)
        raise
    return {"connection": name, "type": type_name, "file": str(path), "secrets": sealed}


def set_secret(path: Path, vault: Vault, name: str, key: str, value: str, actor: str
               ) -> dict[str, Any]:
    """Replace (rotate) one stored secret of connection ``name``: runs after this use it; a
    run in flight keeps the value it started with."""
    _, doc = _read(path)
    entry = _connections(doc).get(name)
    if not isinstance(entry, Mapping):
        raise NotFound(f"no connection '{name}' in {path} (see `keepflow connection list`)")
    top, _, sub = key.partition(".")
    ref = entry.get(f"{top}_secret")
    if sub and isinstance(ref, Mapping):
        ref = ref.get(sub)
    if not isinstance(ref, str):
        raise UsageError(f"connection '{name}' has no stored secret '{key}' (its file says "
                         f"`{key}_secret = \"…\"` for one); see {DOC}")
    vault.put(ref, value, actor)
    return {"connection": name, "secret": ref}


def remove(path: Path, vault: Vault, name: str, actor: str) -> dict[str, Any]:
    text, doc = _read(path)
    if name not in _connections(doc):
        raise NotFound(f"no connection '{name}' in {path} (see `keepflow connection list`)")
    lines = text.splitlines(keepends=True)
    own = re.compile(rf"\s*\[\s*connections\.{re.escape(name)}\s*(\]|\.)")
    other = re.compile(r"\s*\[")
    kept: list[str] = []
    inside = found = False
    for line in lines:
        if other.match(line):
            inside = bool(own.match(line))
            found = found or inside
        if not inside:
            kept.append(line)
    new_text = "".join(kept).rstrip("\n") + "\n" if "".join(kept).strip() else ""
    if not found or name in _connections(tomllib.loads(new_text)):
        raise ConfigError(f"{path}: connection '{name}' is not written as a "
                          f"[connections.{name}] table; remove it by hand", file=str(path))
    _write_atomically(path, new_text)
    gone = vault.remove(vault.of_connection(name), actor)
    return {"connection": name, "file": str(path), "secretsRemoved": gone}


def listing(path: Path, vault: Vault, environ: Mapping[str, str] | None = None
            ) -> list[dict[str, Any]]:
    """Each configured connection: type, plain settings, and where each secret is — never a
    secret value (nothing is opened)."""
    env = os.environ if environ is None else environ
    _, doc = _read(path)
    stored = {r["name"]: r for r in vault.store.credential_list()}
    out = []
    for name, entry in _connections(doc).items():
        if not isinstance(entry, Mapping):
            continue
        settings, secrets = {}, []
        for key, value in entry.items():
            if key == "type":
                continue
            if key.endswith("_env") or key.endswith("_secret"):
                env_kind = key.endswith("_env")
                refs = value if isinstance(value, Mapping) else {"": value}
                for sub, ref in refs.items():
                    setting = key.rsplit("_", 1)[0] + (f".{sub}" if sub else "")
                    if env_kind:
                        secrets.append({"setting": setting, "from": f"${ref}",
                                        "present": bool(env.get(str(ref)))})
                    else:
                        row = stored.get(str(ref))
                        secrets.append({"setting": setting, "from": f"stored {ref}",
                                        "present": row is not None,
                                        "updatedAt": row["updated_at"].isoformat()
                                        if row else None})
            else:
                settings[key] = value
        out.append({"name": name, "type": entry.get("type"), "settings": settings,
                    "secrets": secrets})
    return out


def check(connections: Any, name: str) -> dict[str, Any]:
    """Run the connector's own ``check()`` against the real server."""
    connector = connections.get(name)
    try:
        connector.check()
    except KeepflowError as exc:
        return {"connection": name, "type": connector.type_name, "ok": False,
                "error": exc.to_dict()}
    return {"connection": name, "type": connector.type_name, "ok": True}
