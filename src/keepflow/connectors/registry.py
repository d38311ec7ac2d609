"""Connector types by name: built-ins and third-party plugins through one door (SPEC §9).

``register_connector(cls)`` is the only way a connector type becomes known. The built-in
``http`` and ``sql`` connectors call it at import time exactly as a plugin would, so nothing
about a built-in is special. Third-party packages declare their classes in the entry-point
group ``keepflow.connectors``::

    [project.entry-points."keepflow.connectors"]
    airtable = "keepflow_airtable:AirtableConnector"

The entry point's name must equal the class's ``type_name``. Plugins are imported when the
registry is first consulted; a plugin that fails to import does not break the other
connectors: the failure is remembered and reported (as :class:`ConfigError`) only when a
connection of that type is used.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TypeVar

from keepflow.connectors.base import Connector, ToolKind, ToolSpec
from keepflow.errors import ConfigError

ENTRY_POINT_GROUP = "keepflow.connectors"

#: Modules of the built-in connectors; each calls :func:`register_connector` when imported.
BUILTIN_MODULES = ("keepflow.connectors.http", "keepflow.connectors.sql",
                   "keepflow.connectors.files", "keepflow.connectors.feed",
                   "keepflow.connectors.email", "keepflow.connectors.slack",
                   "keepflow.connectors.github", "keepflow.connectors.google_sheets",
                   "keepflow.connectors.notion")

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
# Tool names become JS property names (``ctx.<conn>.<tool>``), so they must be identifiers.
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")

C = TypeVar("C", bound=type[Connector])

_lock = threading.RLock()
_registry: dict[str, type[Connector]] = {}
_plugin_errors: dict[str, str] = {}
_loaded = False


def register_connector(cls: C) -> C:
    """Make the connector class ``cls`` available under ``cls.type_name``.

    Usable as a class decorator. Registering the same class twice is a no-op; a different
    class under a taken name is a :class:`ConfigError` (two plugins fighting over a name must
    not silently replace each other).
    """
    _check_class(cls)
    with _lock:
        existing = _registry.get(cls.type_name)
        if existing is not None and existing is not cls:
            raise ConfigError(
                f"connector type '{cls.type_name}' is already registered by "
                f"{_qualname(existing)}; cannot register {_qualname(cls)}",
                type=cls.type_name,
            )
        _registry[cls.type_name] = cls
        _plugin_errors.pop(cls.type_name, None)
    return cls


def unregister_connector(type_name: str) -> None:
    """Forget a connector type (for tests of plugins; unknown names are ignored)."""
    with _lock:
        _registry.pop(type_name, None)


def get_connector_class(type_name: str) -> type[Connector]:
    """The class registered for ``type_name``; :class:`ConfigError` if there is none."""
    _ensure_loaded()
    with _lock:
        cls = _registry.get(type_name)
        if cls is not None:
            return cls
        error = _plugin_errors.get(type_name)
        known = ", ".join(sorted(_registry)) or "none"
    if error is not None:
        raise ConfigError(
            f"connector type '{type_name}' could not be loaded: {error}", type=type_name
        )
    raise ConfigError(
        f"unknown connector type '{type_name}'; known types: {known}", type=type_name
    )


def connector_types() -> tuple[str, ...]:
    """Names of every registered connector type, sorted."""
    _ensure_loaded()
    with _lock:
        return tuple(sorted(_registry))


def plugin_errors() -> Mapping[str, str]:
    """Entry points that failed to load: entry-point name -> reason (for diagnostics)."""
    _ensure_loaded()
    with _lock:
        return dict(_plugin_errors)


def discover(*, refresh: bool = False) -> None:
    """Import the built-ins and every ``keepflow.connectors`` entry point.

    Runs once per process unless ``refresh`` is true (e.g. after installing a plugin while the
    host runs, or in tests that put a distribution on ``sys.path``).
    """
    global _loaded
    with _lock:
        if _loaded and not refresh:
            return
        _loaded = True
        _plugin_errors.clear()
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _registry and not refresh:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                _plugin_errors[ep.name] = f"importing {ep.value} failed: {exc!r}"
                continue
            if not (isinstance(obj, type) and issubclass(obj, Connector)):
                _plugin_errors[ep.name] = f"{ep.value} is not a Connector subclass"
                continue
            if getattr(obj, "type_name", None) != ep.name:
                _plugin_errors[ep.name] = (
                    f"{ep.value} has type_name {getattr(obj, 'type_name', None)!r}, "
                    f"but its entry point is named '{ep.name}'"
                )
                continue
            try:
                register_connector(obj)
            except (ConfigError, TypeError) as exc:
                _plugin_errors[ep.name] = str(exc)


def _ensure_loaded() -> None:
    if not _loaded:
        discover()


def _check_class(cls: type[Connector]) -> None:
    """Reject declarations the host could not enforce (SPEC §9: every tool is declared)."""
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise TypeError(f"{cls!r} is not a subclass of keepflow.connectors.base.Connector")
    name = getattr(cls, "type_name", None)
    if not isinstance(name, str) or not _TYPE_NAME.match(name):
        raise TypeError(
            f"{_qualname(cls)}.type_name must match [a-z][a-z0-9_]{{0,31}}, got {name!r}"
        )
    tools = getattr(cls, "tools", None)
    if not isinstance(tools, Mapping) or not tools:
        raise TypeError(f"{_qualname(cls)}.tools must be a non-empty mapping of ToolSpec")
    for key, spec in tools.items():
        if not isinstance(spec, ToolSpec):
            raise TypeError(f"{_qualname(cls)}.tools['{key}'] is not a ToolSpec")
        if spec.name != key or not _TOOL_NAME.match(key):
            raise TypeError(
                f"{_qualname(cls)}.tools['{key}']: the key must equal the spec's name and be "
                "a JavaScript identifier"
            )
        if not isinstance(spec.kind, ToolKind):
            raise TypeError(f"{_qualname(cls)}.tools['{key}'].kind must be a ToolKind")
        if not spec.capability:
            raise TypeError(f"{_qualname(cls)}.tools['{key}'] declares no capability")
        if spec.reconcile and spec.kind is not ToolKind.MUTATE:
            raise TypeError(f"{_qualname(cls)}.tools['{key}']: only mutations reconcile")
        if spec.kind is ToolKind.MUTATE and not (
                spec.reconcile_strategy.startswith("none: ") if not spec.reconcile
                else spec.reconcile_strategy and not spec.reconcile_strategy.startswith("none")):
            raise TypeError(
                f"{_qualname(cls)}.tools['{key}']: a mutation states its reconcile_strategy "
                "(how its outcome is verified), or \"none: <why>\" when reconcile=False")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
