"""Settings of the ``http`` connector and the guards around its credentials (SPEC §9).

Credentials are only ever configured as secrets (``headers_env`` / ``headers_secret``), are
sent only to the ``base_url`` origin, and are masked wherever httpx or httpcore would log them.
``allow`` lists the exact origins a connection may reach besides public addresses' default
(docs/security.md#network-egress); it is validated here, strictly, when the file is loaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx

from keepflow.connectors.http_egress import Origin, parse_origin
from keepflow.connectors.secret import Redactor, Secret, reveal
from keepflow.connectors.setting_checks import reject_unknown
from keepflow.errors import ConfigError

SETTINGS = frozenset({"base_url", "headers", "verify", "proxy", "allow"})
#: Loggers that may print a URL or response headers: httpx at INFO, httpcore at DEBUG.
HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
                "httpcore.proxy", "httpcore.socks")
#: Headers a script may not set: transport framing, and the key the host owns.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "idempotency-key"}
)
#: Headers that hold credentials: only from the environment (``headers_env``), never literal.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Validate ``base_url``, ``headers``, ``verify`` and ``proxy`` (raise ``ConfigError``)."""
    reject_unknown("http", settings, SETTINGS)
    base = settings.get("base_url")
    if base is not None:
        if not isinstance(base, (str, Secret)):
            raise ConfigError("must be a string", key="base_url")
        try:
            url = httpx.URL(reveal(base))
            url.host  # noqa: B018 - decodes an IDNA name: "xn--localhost" raises here
        except (httpx.InvalidURL, UnicodeError, ValueError):
            raise ConfigError("is not a valid URL", key="base_url") from None
        if url.scheme not in ("http", "https") or not url.raw_host or url.query or url.fragment:
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
                f"'{name}' holds a credential: store it with `keepflow connection add … "
                f"--secret headers.{name}` (or name an environment variable: headers_env = "
                f"{{ {name} = \"ENV_VAR\" }}) instead of a literal", key="headers")
    secret_headers = [str(n) for n, v in headers.items() if isinstance(v, Secret)]
    if secret_headers and base is None and settings.get("allow") is None:
        # Without a destination of their own, credentials would go wherever a script points.
        raise ConfigError(
            f"'{secret_headers[0]}' holds a credential, and credentials are sent only to the "
            "connection's base_url or the origins in its allow list: set base_url (or "
            "allow = [\"https://…\"]); see docs/security.md#network-egress", key="headers",
            secret_setting=True)
    verify = settings.get("verify", True)
    if not isinstance(verify, (bool, str)):
        raise ConfigError("must be true, false or a CA bundle path", key="verify")
    proxy = settings.get("proxy")
    if proxy is not None:
        if not isinstance(proxy, (str, Secret)):
            raise ConfigError("must be a URL string", key="proxy")
        try:
            proxy_url = httpx.URL(reveal(proxy))
            proxy_url.host  # noqa: B018 - decodes an IDNA name
        except (httpx.InvalidURL, UnicodeError, ValueError):
            raise ConfigError("is not a valid URL", key="proxy") from None
        if proxy_url.scheme not in ("http", "https") or not proxy_url.raw_host:
            raise ConfigError("must be an http:// or https:// proxy URL", key="proxy")
    allowed_origins(settings)


def allowed_origins(settings: Mapping[str, Any]) -> list[Origin]:
    """The ``allow`` setting as origins (raise ``ConfigError`` naming the entry)."""
    allow = settings.get("allow")
    if allow is None:
        return []
    if not isinstance(allow, list):
        raise ConfigError('must be a list of origins such as ["https://api.example.com"]',
                          key="allow")
    origins = []
    for i, entry in enumerate(allow):
        if not isinstance(entry, str):
            raise ConfigError(f"entry {i + 1} must be a string like "
                              '"https://api.example.com" or "http://127.0.0.1:9000"', key="allow")
        try:
            origins.append(parse_origin(entry))
        except ValueError as exc:
            raise ConfigError(f"entry {i + 1} {exc} (e.g. \"http://127.0.0.1:9000\"; see "
                              "docs/security.md#network-egress)", key="allow") from None
    return origins


class RedactingLogFilter(logging.Filter):
    """Masks a connection's secrets in log records (httpx logs URLs, httpcore at DEBUG logs
    response headers, which a server may fill with an echoed token)."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact.text(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(a if isinstance(a, (int, float)) else self._redact.text(str(a))
                                for a in record.args)
        return True
