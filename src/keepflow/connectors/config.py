"""Connections from ``connections.toml``: ``ctx.<name>`` in scripts (SPEC §9).

The file lives under ``$KEEPFLOW_HOME`` (the caller passes the path)::

    [connections.shop]
    type = "sql"
    url_env = "SHOP_DB_URL"             # secrets come from the environment
    tables = ["invoices", "orders"]

    [connections.api]
    type = "http"
    base_url = "http://127.0.0.1:9000"
    headers_env = { Authorization = "API_TOKEN" }

Every setting key ending in ``_env`` names an environment variable; its value becomes the
setting without the suffix (``url_env`` -> ``url``; a table such as ``headers_env`` is merged
into ``headers``) wrapped in :class:`~keepflow.connectors.secret.Secret`, so it is never
printed. Errors name the file, the connection and the key, never a value.

A connection named ``http`` of type ``http`` exists without configuration; a user entry named
``http`` replaces it. A missing file means "only the default connection".
"""

from __future__ import annotations

import logging
import os
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from keepflow.connectors.base import ConnectionConfig, Connector, ToolKind, ToolSpec
from keepflow.connectors.limits import LIMIT_KEYS, Throttle, Throttles, parse_limits
from keepflow.connectors.registry import get_connector_class
from keepflow.connectors.secret import Secret
from keepflow.errors import ConfigError, UsageError
from keepflow.storable import first_unstorable

CONNECTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
#: ``ctx`` methods a connection may not shadow (SPEC §4–5).
RESERVED_NAMES = frozenset({"publish", "peek", "getByIds", "log"})
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CREDENTIAL = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[A-Za-z0-9_-]{1,64}){1,2}\Z")
#: Setting keys whose value names where a secret is: the environment, or the store.
_SECRET_SUFFIXES = ("_env", "_secret")

log = logging.getLogger("keepflow.connections")

DEFAULT_CONNECTIONS = (ConnectionConfig(name="http", type="http", settings={}),)


#: Opens a stored credential by name (``keepflow.credentials.vault.Vault.get``): its value, or
#: None when there is none.
Stored = Callable[[str], "str | None"]


def _none_stored(name: str) -> str | None:
    return None


def load_connections(path: Path | str, *, environ: Mapping[str, str] | None = None,
                     stored: Stored = _none_stored, throttles: Throttles | None = None
                     ) -> Connections:
    """Read ``path`` (if it exists) and return the validated connections."""
    return Connections(load_connection_configs(path, environ=environ, stored=stored),
                       throttles=throttles)


def load_connection_configs(
    path: Path | str, *, environ: Mapping[str, str] | None = None,
    stored: Stored = _none_stored,
) -> list[ConnectionConfig]:
    path = Path(path)
    if not path.exists():
        return list(DEFAULT_CONNECTIONS)
    source = str(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", file=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}); save it as UTF-8",
                          file=source) from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read: {exc.strerror}", file=source) from None
    return parse_connections(doc, source=source, environ=environ, stored=stored)


def parse_connections(
    doc: Mapping[str, Any], *, source: str = "connections.toml",
    environ: Mapping[str, str] | None = None, stored: Stored = _none_stored,
) -> list[ConnectionConfig]:
    """Validate a parsed document; ``source`` is only used in error messages."""
    env = os.environ if environ is None else environ
    extra = sorted(set(doc) - {"connections"})
    if extra:
        raise _error(source, None, extra[0], "unknown top-level key; expected [connections.<name>]")
    section = doc.get("connections", {})
    if not isinstance(section, Mapping):
        raise _error(source, None, "connections", "must be a table of [connections.<name>]")
    configs = {c.name: c for c in DEFAULT_CONNECTIONS}
    for name, entry in section.items():
        configs[name] = _parse_one(source, name, entry, env, stored)
    return list(configs.values())


def _parse_one(source: str, name: str, entry: Any, env: Mapping[str, str], stored: Stored
               ) -> ConnectionConfig:
    if not CONNECTION_NAME.match(name):
        raise _error(source, name, None, "connection names must match [a-z][a-z0-9_]{0,31}")
    if name in RESERVED_NAMES:
        raise _error(source, name, None, f"'{name}' is a ctx method and cannot name a connection")
    if not isinstance(entry, Mapping):
        raise _error(source, name, None, "must be a table")
    type_name = entry.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise _error(source, name, "type", "is required and must be a string")
    try:
        cls = get_connector_class(type_name)
    except ConfigError as exc:
        raise _error(source, name, "type", exc.message) from None
    settings: dict[str, Any] = {}
    env_keys: list[str] = []
    try:
        limits = parse_limits(entry, cls.default_limits)
    except ConfigError as exc:
        raise _error(source, name, exc.details.get("key"), exc.message) from None
    for key, value in entry.items():
        if key == "type" or key in LIMIT_KEYS:
            continue
        if any(key.endswith(s) and len(key) > len(s) for s in _SECRET_SUFFIXES):
            env_keys.append(key)
        else:
            settings[key] = value
    for key in env_keys:
        suffix = "_env" if key.endswith("_env") else "_secret"
        target = key[: -len(suffix)]
        resolved = (_resolve_env(source, name, key, entry[key], env) if suffix == "_env"
                    else _resolve_stored(source, name, key, entry[key], stored))
        if isinstance(resolved, dict):
            plain = settings.get(target, {})
            if not isinstance(plain, Mapping):
                raise _error(source, name, key, f"'{target}' must be a table to merge into")
            clash = sorted(set(plain) & set(resolved))
            if clash:
                raise _error(source, name, key, f"'{clash[0]}' is also set in '{target}'")
            settings[target] = {**plain, **resolved}
        else:
            if target in settings:
                raise _error(source, name, key, f"set either '{target}' or '{key}', not both")
            settings[target] = resolved
    try:
        cls.validate_settings(settings)
    except ConfigError as exc:
        key = exc.details.get("key")
        if exc.details.get("secret_setting"):  # about the secret: name the key that set it
            key = next((k for k in env_keys if k.rsplit("_", 1)[0] == key), key)
        raise _error(source, name, key, exc.message) from None
    return ConnectionConfig(name=name, type=type_name, settings=settings, limits=limits)


def _resolve_env(
    source: str, name: str, key: str, value: Any, env: Mapping[str, str]
) -> Secret | dict[str, Secret]:
    def one(var: Any, where: str) -> Secret:
        if not isinstance(var, str) or not _ENV_VAR.match(var):
            raise _error(source, name, where, "must name an environment variable")
        secret = env.get(var)
        if secret is None or secret == "":
            raise _error(
                source, name, where, f"environment variable {var} is not set", variable=var
            )
        if first_unstorable(secret) is not None:  # bytes that are not UTF-8, or a NUL
            raise _error(source, name, where, f"environment variable {var} is not valid UTF-8 "
                         "text (or holds a NUL character)", variable=var)
        return Secret(secret, var)

    if isinstance(value, Mapping):
        return {str(k): one(v, f"{key}.{k}") for k, v in value.items()}
    return one(value, key)


def _resolve_stored(source: str, name: str, key: str, value: Any, stored: Stored
                    ) -> Secret | dict[str, Secret]:
    """``<setting>_secret = "<credential>"``: a secret ``keepflow connection add`` sealed in
    the store (docs/connectors.md#configuring-connections)."""
    def one(credential: Any, where: str) -> Secret:
        if not isinstance(credential, str) or not _CREDENTIAL.match(credential):
            raise _error(source, name, where, "must name a stored credential (connection.setting)")
        try:
            secret = stored(credential)
        except ConfigError as exc:
            raise _error(source, name, where, exc.message) from None
        if not secret:
            raise _error(source, name, where, f"no credential {credential} is stored: run "
                         f"`keepflow connection secret {name} {where.removesuffix('_secret')}`",
                         credential=credential)
        return Secret(secret, f"stored:{credential}")

    if isinstance(value, Mapping):
        return {str(k): one(v, f"{key}.{k}") for k, v in value.items()}
    return one(value, key)


def _error(source: str, connection: str | None, key: str | None, problem: str,
           **details: Any) -> ConfigError:
    where = source
    if connection is not None:
        where += f": connection '{connection}'"
    if key is not None:
        where += f": key '{key}'"
    return ConfigError(f"{where}: {problem}", file=source, connection=connection, key=key,
                       **details)


class Connections:
    """The configured connections of one host: lazily instantiated, cached connectors.

    Thread-safe: workers of different workflows share one instance.
    """

    def __init__(self, configs: Iterable[ConnectionConfig] = DEFAULT_CONNECTIONS, *,
                 throttles: Throttles | None = None) -> None:
        self._throttles = throttles or Throttles()
        self._configs: dict[str, ConnectionConfig] = {}
        self._classes: dict[str, type[Connector]] = {}
        for config in configs:
            self._configs[config.name] = config
            self._classes[config.name] = get_connector_class(config.type)
        self._instances: dict[str, Connector] = {}
        self._lock = threading.Lock()
        self._closed = False

    def names(self) -> list[str]:
        return sorted(self._configs)

    def config(self, name: str) -> ConnectionConfig:
        self._check_name(name)
        return self._configs[name]

    def get(self, name: str) -> Connector:
        """The connector of connection ``name``, created on first use."""
        self._check_name(name)
        with self._lock:
            if self._closed:
                raise UsageError("the connections have been closed")
            connector = self._instances.get(name)
            if connector is None:
                connector = self._classes[name](self._configs[name])
                self._instances[name] = connector
            return connector

    def throttle(self, name: str) -> Throttle:
        """The host's limits on calls to connection ``name`` (docs/connectors.md#call-limits)."""
        config = self.config(name)
        limits = config.limits or self._classes[name].default_limits
        return self._throttles.get(name, limits)

    def tool_kinds(self) -> dict[str, dict[str, ToolKind]]:
        """connection -> tool -> kind, without instantiating anything (static analysis, the
        sandbox's ``ctx.<conn>.<tool>`` stubs)."""
        return {
            name: {tool: spec.kind for tool, spec in self._classes[name].tools.items()}
            for name in self.names()
        }

    def stub_shape(self) -> dict[str, tuple[str, ...]]:
        """connection -> tools: the ``ctx.<connection>.<tool>`` stubs an invocation gets."""
        return {name: tuple(tools) for name, tools in self.tool_kinds().items()}

    def terminal_shape(self) -> dict[str, tuple[str, ...]]:
        """The mutating tools among them: calling one ends the invocation (SPEC §5.2)."""
        return {name: tuple(t for t, kind in tools.items() if kind is ToolKind.MUTATE)
                for name, tools in self.tool_kinds().items()}

    def tool_specs(self) -> dict[str, dict[str, ToolSpec]]:
        """connection -> tool -> full declaration (permission compilation, SPEC §9)."""
        return {name: dict(self._classes[name].tools) for name in self.names()}

    def close(self) -> None:
        """Close every instantiated connector. Errors of one do not stop the others."""
        with self._lock:
            instances = list(self._instances.values())
            self._instances.clear()
            self._closed = True
        for connector in instances:
            try:
                connector.close()
            except Exception:  # noqa: S112 - best effort at shutdown; nothing can be done
                continue

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connections({', '.join(self.names())})"

    def _check_name(self, name: str) -> None:
        if name not in self._configs:
            known = ", ".join(self.names())
            raise UsageError(f"no connection named '{name}'; configured: {known}")


class ConnectionsFile:
    """The connections of ``connections.toml``, re-read whenever the file changes, so a
    running ``keepflow serve`` picks up an added, changed or removed connection without a
    restart (docs/connectors.md#changing-connections).

    Each run takes :meth:`current` once and uses that set to its end. A replaced set is kept
    open until :meth:`close` (a run in another thread may still use it). When an edit leaves
    the file invalid, the last valid set stays in use and :attr:`problem` says what is wrong;
    the first read has nothing to fall back on and raises the :class:`ConfigError`.
    """

    def __init__(self, path: Path | str, *, environ: Mapping[str, str] | None = None,
                 stored: Stored = _none_stored,
                 generation: Callable[[], str] = lambda: "") -> None:
        self.path = Path(path)
        self._environ = environ
        self._stored = stored
        #: Changes when a stored credential does (a rotated secret reloads the connections).
        self._generation = generation
        self._lock = threading.Lock()
        self._current: Connections | None = None
        self._stamp: tuple[Any, ...] | None = None
        self._retired: list[Connections] = []
        #: Limits' state outlives a reload: a service's Retry-After still holds afterwards.
        self._throttles = Throttles()
        self.problem: ConfigError | None = None

    def _file_stamp(self) -> tuple[Any, ...] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None  # no file: only the default connection
        return (st.st_mtime_ns, st.st_size, st.st_ino, self._generation())

    def current(self) -> Connections:
        with self._lock:
            stamp = self._file_stamp()
            if self._current is not None and stamp == self._stamp:
                return self._current
            try:
                fresh = load_connections(self.path, environ=self._environ,
                                         stored=self._stored, throttles=self._throttles)
            except ConfigError as exc:
                if self._current is None:
                    raise
                self._stamp, self.problem = stamp, exc  # re-read at the next change only
                log.warning("connections file not reloaded, the last valid version stays in "
                            "use: %s", exc.message)
                return self._current
            if self._current is not None:
                log.info("connections file reloaded: %s", ", ".join(fresh.names()))
                self._retired.append(self._current)
            self._current, self._stamp, self.problem = fresh, stamp, None
            return fresh

    def close(self) -> None:
        with self._lock:
            sets = [*self._retired, *([self._current] if self._current else [])]
            self._retired, self._current, self._stamp = [], None, None
        for connections in sets:
            connections.close()
