"""How the HTTP connector turns what happened on the wire into a typed error (SPEC §8).

The one question that matters for a mutation is *could the server have acted on it?*
(SPEC §6). A failure before the request left this process (no connection, connect timeout,
pool exhausted) is definite and retryable. Anything after the request was written (read
timeout, reset, the server hanging up, an ambiguous 5xx) is uncertain and goes to reconcile.
Reads have no side effects, so every transport failure of a read is simply transient.

The full table is in ``docs/connectors.md``; keep the two in sync.

Everything a server sends back — body, headers, reason phrase, ``Location`` — is redacted
*before* it is cut to a limit (:class:`~keepflow.connectors.secret.Redactor`): a cut must
not turn an echoed token into one that no longer matches and so leaks all but its end.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from keepflow.connectors.secret import Redactor
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

#: Bytes of a response body read at most; the rest is not downloaded.
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Characters of a non-JSON body returned to the script as ``text``.
MAX_TEXT_CHARS = 64 * 1024
#: Characters of a body quoted in an error message.
ERROR_BODY_CHARS = 500

#: Response headers never returned to scripts (they carry credentials or session state).
SENSITIVE_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "authorization", "proxy-authorization", "cookie", "x-api-key"}
)

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
_NEVER_VALID = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects)


def transport_error(exc: httpx.HTTPError, *, mutate: bool, what: str,
                    redact: Callable[[str], str] = str) -> ConnectorError:
    """Classify an exception raised while sending a request or waiting for its response."""
    reason = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, _NOT_SENT):
        return TransientError(
            f"{what}: could not connect ({reason}); the request was not sent", sent=False
        )
    if isinstance(exc, _NEVER_VALID):
        return PermanentError(f"{what}: {reason}", sent=False)
    if not mutate:
        return TransientError(f"{what}: {reason}")
    # ReadTimeout, ReadError (reset), RemoteProtocolError (server hung up), WriteError and
    # WriteTimeout (part of the request may have arrived): the server may have acted on it.
    return UncertainOutcome(
        f"{what}: {reason} after the request was sent; it may or may not have taken effect",
        sent=True,
    )


def status_error(
    response: httpx.Response, *, mutate: bool, what: str, body: bytes,
    redact: Redactor | None = None,
) -> ConnectorError | None:
    """The error a final status means, or ``None`` if the result is handed to the script.

    ``body`` is the response body as read; what is quoted of it (at most
    :data:`ERROR_BODY_CHARS`), the reason phrase and ``Location`` are redacted first.
    """
    status = response.status_code
    if 200 <= status < 300:
        return None
    redact = redact or Redactor(())
    text = body.decode(response.encoding or "utf-8", errors="replace")
    snippet, _ = redact.cut(text, ERROR_BODY_CHARS)
    said = f"{what} -> {status} {redact.text(response.reason_phrase)}".rstrip()
    details: dict[str, Any] = {"status": status, "body": snippet}
    if status == 401:
        return AuthError(f"{said}: the credentials were refused; reconnect the connection",
                         **details)
    if status == 403:
        return PermissionDenied(f"{said}: the server refused the call", **details)
    if status in (408, 429) or (status == 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return TransientError(f"{said}; try again later", retry_after=retry_after, **details)
    if status >= 500:
        if not mutate:
            return TransientError(f"{said}", **details)
        if status in (501, 505):
            return PermanentError(f"{said}: the server cannot handle this request", **details)
        return UncertainOutcome(
            f"{said}: the server failed while handling the request; it may or may not have "
            "taken effect",
            **details,
        )
    if not mutate:
        return None  # reads return 3xx/4xx as data: scripts branch on `status`
    if status in (302, 303):
        return None  # post/redirect/get: the request was processed
    if 300 <= status < 400:
        location, _ = redact.cut(response.headers.get("location", "?"), ERROR_BODY_CHARS)
        return PermanentError(
            f"{said}: redirected to {location}; the request was not applied there, use the "
            "new URL",
            **details,
        )
    if status in (404, 410):
        return PreconditionError(f"{said}: the target does not exist: {snippet}", **details)
    return PermanentError(f"{said}: {snippet}", **details)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def read_body(response: httpx.Response) -> tuple[bytes, bool]:
    """Read at most :data:`MAX_BODY_BYTES`; returns (body, truncated).

    A body that breaks off after the status line arrived is returned as far as it got and
    marked truncated: the status already tells whether the request took effect.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return b"".join(chunks)[:MAX_BODY_BYTES], True
    except httpx.HTTPError:
        return b"".join(chunks), True
    return b"".join(chunks), False


def build_result(response: httpx.Response, body: bytes, truncated: bool,
                 redact: Redactor | None = None) -> dict[str, Any]:
    """``{status, headers, json | text, truncated?}`` — the result scripts see, redacted."""
    redact = redact or Redactor(())
    headers: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        if key in SENSITIVE_RESPONSE_HEADERS:
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    headers = {redact.text(k): redact.text(v) for k, v in headers.items()}
    result: dict[str, Any] = {"status": response.status_code, "headers": headers}
    if not truncated and body and _is_json(headers.get("content-type", "")):
        try:
            parsed = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
            pass
        else:
            result["json"] = redact.deep(parsed)
            return result
    text = body.decode(response.encoding or "utf-8", errors="replace")
    text, cut = redact.cut(text, MAX_TEXT_CHARS)  # redact first: a cut must not hide a secret
    result["text"] = text
    if truncated or cut:
        result["truncated"] = True
    return result


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
