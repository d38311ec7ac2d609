"""Secret setting values that cannot leak by accident (SPEC §9: never logged, never shown).

``connections.toml`` never holds secrets itself: a key ending in ``_env`` names an environment
variable, and :mod:`keepflow.connectors.config` wraps the variable's value in :class:`Secret`.
Because the wrapper's ``repr``/``str`` never show the value, a ``ConnectionConfig`` (a plain
dataclass with the generated ``repr``), a connector, a log line or an f-string in an error
message can print its settings without exposing anything. Code that really needs the value
calls :meth:`Secret.reveal` at the last moment (building a request header, opening a database).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: What a secret looks like wherever it is printed.
MASK = "***"


class Secret:
    """A secret string read from the environment variable ``source``."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        """The secret value. Call only where it is sent to the external system."""
        return self._value

    @property
    def source(self) -> str:
        """The environment variable the value came from (not secret)."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret(${self._source})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        # Pickling would copy the value to wherever the pickle goes (a worker, a file).
        raise TypeError("a Secret cannot be pickled")


def reveal(value: Any) -> Any:
    """``value`` with a :class:`Secret` replaced by its plain value; other values unchanged."""
    return value.reveal() if isinstance(value, Secret) else value


def is_secret(value: Any) -> bool:
    return isinstance(value, Secret)


def secret_values(settings: Mapping[str, Any]) -> list[str]:
    """Every secret value found in ``settings`` (nested mappings and lists included)."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, Secret):
            found.append(v.reveal())
        elif isinstance(v, Mapping):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(settings)
    return found


class Redactor:
    """Replaces known secret values in text with :data:`MASK`.

    Connectors pass every string they put into an error message or hand back from a remote
    system through this: a server that echoes the ``Authorization`` header in an error body
    must not put the token into the ledger, a log or the UI. Very short values are ignored
    because masking them would mangle ordinary text and protects nothing.
    """

    MIN_LENGTH = 4

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if len(s) >= self.MIN_LENGTH}
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted(values, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, s: str) -> str:
        for v in self._values:
            if v in s:
                s = s.replace(v, MASK)
        return s

    def deep(self, value: Any) -> Any:
        """``value`` (a JSON value) with every string redacted."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.deep(v) for k, v in value.items()}
        return value
