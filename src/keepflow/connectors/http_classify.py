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

Once a response's status is known the outcome is definite: :func:`settle` builds the
result so that nothing a server adds (a charset, headers by the thousand, a number no one
foresaw) can turn it into an uncertain one.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from keepflow.connectors.http_body import MAX_BODY_BYTES, decode_text
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

__all__ = ["MAX_BODY_BYTES", "build_result", "parse_retry_after", "settle", "status_error",
           "transport_error"]

log = logging.getLogger("keepflow.connectors.http")

#: Characters of a non-JSON body returned to the script as ``text``.
MAX_TEXT_CHARS = 64 * 1024
#: Characters of a body quoted in an error message.
ERROR_BODY_CHARS = 500
#: Characters of a reason phrase quoted in an error message (a server may send 100 KB).
MAX_REASON_CHARS = 100
#: Response headers returned to the script at most, and characters of each value.
MAX_RESULT_HEADERS = 100
MAX_HEADER_CHARS = 8192
#: A server's ``Retry-After`` is honoured up to this many seconds: the wait happens inside
#: the run, and ``Retry-After: 99999999999`` (or a date in year 9999) must not hold it.
MAX_RETRY_AFTER_SECONDS = 300.0
_DELTA_SECONDS = re.compile(r"[0-9]+\Z")  # ASCII digits only: "²".isdigit() is true

#: Response headers never returned to scripts (they carry credentials or session state).
SENSITIVE_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "authorization", "proxy-authorization", "cookie", "x-api-key"}
)

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
_NEVER_VALID = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects)


def transport_error(exc: httpx.HTTPError, *, mutate: bool, what: str,
                    redact: Callable[[str], str] = str,
                    deadline: float | None = None) -> ConnectorError:
    """Classify an exception raised while sending a request or waiting for its response.

    ``deadline``: the seconds the whole call had (docs/connectors.md#http-deadline), named
    in the message of a timeout.
    """
    reason = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException) and deadline is not None:
        reason = (f"{type(exc).__name__}: the exchange did not finish within the "
                  f"{deadline:g} s the call may take (see docs/connectors.md#http-deadline)")
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
    text = decode_text(body, response.headers.get("content-type", ""))
    snippet, _ = redact.cut(text, ERROR_BODY_CHARS)
    reason, _ = redact.cut(response.reason_phrase, MAX_REASON_CHARS)
    said = f"{what} -> {status} {_inert(reason)}".rstrip()
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
            f"{said}: redirected to {_inert(location)}; the request was not applied there, use the "
            "new URL",
            **details,
        )
    if status in (404, 410):
        return PreconditionError(f"{said}: the target does not exist: {snippet}", **details)
    return PermanentError(f"{said}: {snippet}", **details)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3),
    at most :data:`MAX_RETRY_AFTER_SECONDS`; ``None`` when it says nothing readable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.match(value):  # 10**400 digits would still be "a long time"
        return min(float(value) if len(value) < 16 else math.inf, MAX_RETRY_AFTER_SECONDS)
    if len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def build_result(response: httpx.Response, body: bytes, truncated: bool,
                 redact: Redactor | None = None) -> dict[str, Any]:
    """``{status, headers, json | text, truncated?}`` — the result scripts see, redacted."""
    redact = redact or Redactor(())
    joined: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        if key in SENSITIVE_RESPONSE_HEADERS:
            continue
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    headers: dict[str, str] = {}
    headers_cut = len(joined) > MAX_RESULT_HEADERS  # a server may send thousands…
    for key, value in list(joined.items())[:MAX_RESULT_HEADERS]:
        headers[redact.text(key)], cut = redact.cut(value, MAX_HEADER_CHARS)  # …or 100 KB
        headers_cut = headers_cut or cut
    result: dict[str, Any] = {"status": response.status_code, "headers": headers}
    content_type = joined.get("content-type", "")
    if not truncated and body and _is_json(content_type):
        try:
            parsed = json.loads(body, parse_constant=_reject_constant)
            # Redacting walks the value recursively: a document json parsed in C may still
            # nest too deeply for that walk. Then it is returned as text, like any non-JSON.
            result["json"] = redact.deep(parsed)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to walk
            result.pop("json", None)
        else:
            if headers_cut:
                result["truncated"] = True
            return result
    text = decode_text(body, content_type)
    text, cut = redact.cut(text, MAX_TEXT_CHARS)  # redact first: a cut must not hide a secret
    result["text"] = text
    if truncated or cut or headers_cut:
        result["truncated"] = True
    return result


def settle(response: httpx.Response, body: bytes, truncated: bool, *, mutate: bool,
           what: str, redact: Redactor) -> tuple[dict[str, Any], ConnectorError | None]:
    """The result of a response whose status is known, and the error that status means.

    SPEC §6: once the status is known the outcome is definite. Whatever goes wrong while
    the result is built from a server's bytes — a value nobody foresaw, a bug — must not
    turn an applied ``201`` into "did it happen?" (an untyped exception is read as an
    uncertain outcome). So each step falls back to what the status alone says.
    """
    try:
        result = build_result(response, body, truncated, redact)
    except Exception as exc:  # the status decides; see the docstring
        log.warning("the result of %s could not be built (%s); only its status is kept",
                    what, type(exc).__name__)
        result = {"status": response.status_code, "headers": {}, "text": "",
                  "truncated": True}
    try:
        error = status_error(response, mutate=mutate, what=what, body=body, redact=redact)
    except Exception as exc:  # the same: classify by the status alone
        log.warning("the answer of %s could not be read (%s); it is classified by its status",
                    what, type(exc).__name__)
        error = status_error(httpx.Response(response.status_code), mutate=mutate, what=what,
                             body=b"")
    return result, error


def _inert(text: str) -> str:
    """``text`` with control and non-ASCII characters escaped (``\\x1b``): a server's reason
    phrase or ``Location`` goes into the first line of a message people read."""
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
