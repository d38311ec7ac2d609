"""Settings of the ``http`` connector and the guards around its credentials (SPEC §9).

Credentials are only ever configured through the environment (``headers_env``), are sent only
to the ``base_url`` origin, and are masked wherever httpx would log a URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx

from keepflow.connectors.secret import Redactor, Secret, reveal
from keepflow.errors import ConfigError

SETTINGS = frozenset({"base_url", "headers", "verify", "proxy"})
#: Headers a script may not set: transport framing, and the key the host owns.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "idempotency-key"}
)
#: Headers that hold credentials: only from the environment (``headers_env``), never literal.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Validate ``base_url``, ``headers``, ``verify`` and ``proxy`` (raise ``ConfigError``)."""
    unknown = sorted(set(settings) - SETTINGS)
    if unknown:
        raise ConfigError(f"unknown setting; http takes {sorted(SETTINGS)}", key=unknown[0])
    base = settings.get("base_url")
    if base is not None:
        if not isinstance(base, (str, Secret)):
            raise ConfigError("must be a string", key="base_url")
        try:
            url = httpx.URL(reveal(base))
        except httpx.InvalidURL:
            raise ConfigError("is not a valid URL", key="base_url") from None
        if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
            raise ConfigError("must be an http(s) URL without query or fragment",
                              key="base_url")
    headers = settings.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ConfigError("must be a table of header names to values", key="headers")
    seen: set[str] = set()
    for name, value in headers.items():
        lower = str(name).lower()
        if not TOKEN.match(str(name)) or lower in seen or lower in RESERVED_HEADERS:
            raise ConfigError(f"'{name}' is not a valid, unique, settable header name",
                              key="headers")
        seen.add(lower)
        if isinstance(value, Secret):
            continue
        if not isinstance(value, str):
            raise ConfigError(f"the value of '{name}' must be a string", key="headers")
        if lower in CREDENTIAL_HEADERS:
            raise ConfigError(
                f"'{name}' holds a credential: set it with headers_env = "
                f"{{ {name} = \"ENV_VAR\" }} instead of a literal", key="headers")
    verify = settings.get("verify", True)
    if not isinstance(verify, (bool, str)):
        raise ConfigError("must be true, false or a CA bundle path", key="verify")
    if not isinstance(settings.get("proxy", ""), (str, Secret)):
        raise ConfigError("must be a URL string", key="proxy")


class RedactingLogFilter(logging.Filter):
    """Masks this connection's secrets in records of the ``httpx`` logger."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact.text(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(a if isinstance(a, (int, float)) else self._redact.text(str(a))
                                for a in record.args)
        return True
