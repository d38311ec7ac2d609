"""Checks every connector makes of its settings, worded the same way everywhere.

One place for the wording, so a person reads one kind of message whichever connector they
configure: an unknown key names the keys the type takes, and a token is never accepted in
clear from ``connections.toml`` — only as ``<key>_secret`` (the encrypted store) or
``<key>_env`` (an environment variable), see docs/connectors.md#configuring-connections.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from typing import Any, Final
from urllib.parse import urlsplit

from keepflow.connectors.secret import Secret
from keepflow.errors import ConfigError

#: What a bearer token may hold: printable ASCII without spaces (every service's tokens do).
_TOKEN: Final = re.compile(r"[\x21-\x7e]+\Z")


def reject_unknown(type_name: str, settings: Mapping[str, Any], known: Set[str]) -> None:
    """A misspelt key is an error, never silently ignored."""
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting; {type_name} takes {sorted(known)} "
                          f"(see docs/connectors.md#{type_name})", key=unknown[0])


def bearer_token(type_name: str, settings: Mapping[str, Any], *, what: str,
                 key: str = "token", max_chars: int = 1024) -> str:
    """The connection's token: required, from the store or the environment only, and
    plausible (so a pasted line break or a quoted value fails here, not at the service)."""
    token = settings.get(key)
    doc = f"docs/connectors.md#{type_name}"
    if token is None:
        raise ConfigError(f"is required: {what}, stored with `keepflow connection add NAME "
                          f"--type {type_name} --secret {key}` ({key}_secret) or named by "
                          f"{key}_env (see {doc})", key=f"{key}_secret")
    if not isinstance(token, Secret):
        raise ConfigError("must not be written in connections.toml: store it with "
                          f"`keepflow connection secret NAME {key}` ({key}_secret) or name "
                          f"an environment variable with {key}_env (see {doc})", key=key)
    value = token.reveal()
    if len(value) > max_chars or not _TOKEN.match(value):
        raise ConfigError(f"is not {what}: it must be 1 to {max_chars} printable ASCII "
                          f"characters without spaces (see {doc})", key=key,
                          secret_setting=True)
    return value


#: Hosts a plain-http ``base_url`` may name: a local (test) server, never the network.
LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def service_base_url(type_name: str, value: Any, *, example: str) -> str:
    """A SaaS connector's ``base_url``: ``https``, or plain ``http`` for a server on this
    machine only (the token would otherwise travel in clear); no credentials, query or
    fragment. ``example`` is the service's own URL, quoted in the message."""
    doc = f"docs/connectors.md#{type_name}"
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ConfigError(f"must be the URL of the service's API, such as {example} "
                          f"(see {doc})", key="base_url")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"is not a valid URL (see {doc})", key="base_url") from None
    if parts.scheme not in ("http", "https") or not host or \
            any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"must be an http(s) URL such as {example} (see {doc})",
                          key="base_url")
    if parts.username is not None or parts.password is not None or parts.query or \
            parts.fragment:
        raise ConfigError(f"must be a plain URL: no user, password, query or fragment "
                          f"(see {doc})", key="base_url")
    if parts.scheme == "http" and host not in LOOPBACK:
        raise ConfigError("plain http is only for a local server (localhost, 127.0.0.1, ::1): "
                          f"the token would travel unencrypted; use https (see {doc})",
                          key="base_url")
    return value
