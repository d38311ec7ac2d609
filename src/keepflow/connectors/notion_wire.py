"""How the ``notion`` connector talks to Notion's API, and how it reads a failure (SPEC §8,
§9; docs/connectors.md#notion-failure-classification).

Requests go through the official ``notion_client`` over an httpx client whose transport is
:class:`NotionTransport`:

* it is the ``http`` connector's :class:`~keepflow.connectors.http_transport.DeadlineTransport`,
  so every socket operation ends by the call's deadline (:func:`deadline_in`), not just each
  read (a server that trickles bytes cannot hold a call past its timeout);
* it asks for an uncompressed answer and refuses a compressed one (a small gzip body can
  decompress to gigabytes), and it stops reading an answer after ``max_bytes`` — the
  ``Content-Length`` is checked first, the body is counted as it arrives, so a huge answer is
  never held whole;
* it carries transport failures past ``notion_client`` as :class:`WireFailure`:
  ``notion_client`` would turn every timeout into one ``RequestTimeoutError`` and so lose
  whether the request had left (a connect timeout) or may have reached Notion (a read
  timeout), which is what decides between "try again" and "reconcile" for a mutation.

:func:`check_base_url` vets the ``base_url`` setting (``https``, or ``http`` for loopback
only); :func:`proxy_for` finds the proxy ``HTTPS_PROXY``/``NO_PROXY`` name for it.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from notion_client.errors import (
    HTTPResponseError,
    InvalidPathParameterError,
    RequestTimeoutError,
)

from keepflow.connectors.http_classify import parse_retry_after, transport_error
from keepflow.connectors.secret import Redactor
from keepflow.connectors.setting_checks import service_base_url
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

log = logging.getLogger("keepflow.connectors.notion")

DOC: Final = "docs/connectors.md#notion"
DEFAULT_BASE_URL: Final = "https://api.notion.com"
#: Characters of Notion's own error message quoted in ours.
MESSAGE_CHARS: Final = 300
#: Characters of an error body the connector parses itself (notion_client read it whole).
ERROR_BODY_READ: Final = 64 * 1024
_DIGITS: Final = re.compile(r"[0-9]{1,18}\Z")


class WireFailure(Exception):  # an internal signal: it never leaves the connector
    """A transport failure (connect, send, wait for or read the answer)."""

    def __init__(self, cause: httpx.TransportError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class TooLarge(Exception):  # an internal signal: it never leaves the connector
    """The answer is longer than the connector reads."""

    def __init__(self, size: int, declared: bool) -> None:
        super().__init__(f"{size} bytes")
        self.size = size
        self.declared = declared


class Compressed(Exception):  # an internal signal: it never leaves the connector
    """The answer came compressed although none was asked for."""


class NotionTransport(httpx.BaseTransport):
    """``inner`` with the guards of the module docstring."""

    def __init__(self, inner: httpx.BaseTransport, max_bytes: int) -> None:
        self._inner = inner
        self._max = max_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            raise WireFailure(exc) from None
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            response.close()
            raise Compressed(encoding[:40])
        length = response.headers.get("content-length", "").strip()
        if _DIGITS.match(length) and int(length) > self._max:
            response.close()
            raise TooLarge(int(length), declared=True)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Bounded(response.stream, self._max),
                              extensions=response.extensions, request=request)

    def close(self) -> None:
        self._inner.close()


class _Bounded(httpx.SyncByteStream):
    def __init__(self, inner: Any, max_bytes: int) -> None:
        self._inner = inner
        self._max = max_bytes

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        try:
            for chunk in self._inner:
                seen += len(chunk)
                if seen > self._max:
                    raise TooLarge(seen, declared=False)
                yield chunk
        except httpx.TransportError as exc:
            raise WireFailure(exc) from None

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


#: What :func:`classify` understands; anything else is a bug and is left to the host.
FAILURES: Final = (HTTPResponseError, RequestTimeoutError, InvalidPathParameterError,
                   WireFailure, TooLarge, Compressed, httpx.HTTPError, ValueError,
                   RecursionError)


def classify(exc: BaseException, *, mutate: bool, what: str, connection: str,
             redact: Redactor, deadline: float, max_bytes: int) -> ConnectorError:
    """The typed error an exception of a request means (the table in the docs)."""
    if isinstance(exc, HTTPResponseError):
        return _answered(exc, mutate=mutate, what=what, connection=connection, redact=redact)
    if isinstance(exc, WireFailure):
        return transport_error(exc.cause, mutate=mutate, what=what, redact=redact.text,
                               deadline=deadline)
    if isinstance(exc, RequestTimeoutError):  # not raised through NotionTransport; still:
        if mutate:
            return UncertainOutcome(f"{what}: no answer within {deadline:g} s; it may or may "
                                    "not have taken effect")
        return TransientError(f"{what}: no answer within {deadline:g} s")
    if isinstance(exc, InvalidPathParameterError):
        return PermanentError(f"{what}: the id is not a Notion id")
    if isinstance(exc, TooLarge):
        size = f"{exc.size} bytes" if exc.declared else f"more than {max_bytes} bytes"
        if mutate:
            return UncertainOutcome(f"{what}: Notion's answer was too long ({size}; the "
                                    f"connector reads {max_bytes}); the request may have "
                                    "taken effect")
        return PermanentError(f"{what}: Notion's answer is too long ({size}; the connector "
                              f"reads at most {max_bytes}): ask for fewer pages (a lower "
                              f"limit); see {DOC}", bytes=exc.size)
    return malformed(what, mutate=mutate, why=_why(exc))


def malformed(what: str, *, mutate: bool, why: str) -> ConnectorError:
    """A 2xx answer that is not what Notion's API reference says it is."""
    if mutate:
        return UncertainOutcome(f"{what}: Notion's answer could not be read ({why}); the "
                                "request may have taken effect")
    return TransientError(f"{what}: Notion's answer could not be read ({why}); try again")


def _why(exc: BaseException) -> str:
    if isinstance(exc, Compressed):
        return f"it came compressed ({exc}) although none was asked for"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, ValueError):
        return "it is not JSON"
    return type(exc).__name__


def _answered(exc: HTTPResponseError, *, mutate: bool, what: str, connection: str,
              redact: Redactor) -> ConnectorError:
    status = exc.status if isinstance(exc.status, int) else 0
    raw = exc.code
    code = str(getattr(raw, "value", raw))[:60]
    text = str(exc)
    if code == "notionhq_client_response_error":  # a code notion_client does not know
        code, text = _error_body(exc.body, code, text)
    message = _message(text, redact)
    said = f"{what} -> {status} {code}"
    details: dict[str, Any] = {"status": status, "notion_code": code}
    if code == "unauthorized" or status == 401:
        return AuthError(
            f"{said}: Notion refused the integration token ({message}); reconnect the "
            f"connection: `keepflow connection secret {connection} token` with the token of "
            f"an internal integration (see {DOC})", **details)
    if code == "restricted_resource" or status == 403:
        return PermissionDenied(
            f"{said}: the integration may not do this ({message}); give it the capability "
            "(read, insert or update content) in its settings at "
            "https://www.notion.so/profile/integrations", **details)
    if code == "object_not_found" or status == 404:
        return PreconditionError(
            f"{said}: not found, or not shared with the integration: share the database "
            f"with it (the page's ··· menu → Connections) ({message})", **details)
    if code == "rate_limited" or status == 429:
        retry_after = parse_retry_after(exc.headers.get("retry-after"))
        return TransientError(f"{said}: Notion's rate limit (an average of three requests "
                              "a second); try again later", retry_after=retry_after,
                              **details)
    if code == "conflict_error" or status == 409:
        return TransientError(f"{said}: Notion could not complete the transaction (a "
                              f"conflicting change); try again ({message})", **details)
    if status >= 500:
        if mutate:
            return UncertainOutcome(f"{said}: Notion failed while handling the request "
                                    f"({message}); it may or may not have taken effect",
                                    **details)
        return TransientError(f"{said}: Notion failed ({message}); try again", **details)
    if 300 <= status < 400:
        return PermanentError(f"{said}: redirected; check the connection's base_url "
                              f"(see {DOC})", **details)
    return PermanentError(f"{said}: Notion refused the request: {message}", **details)


def _error_body(body: Any, code: str, text: str) -> tuple[str, str]:
    """The ``code`` and ``message`` of an error body notion_client did not read (a code it
    does not know, such as ``missing_version``); the given ones when there are none."""
    if not isinstance(body, str) or len(body) > ERROR_BODY_READ:
        return code, text
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return code, text
    if not isinstance(parsed, dict):
        return code, text
    said, message = parsed.get("code"), parsed.get("message")
    if isinstance(said, str) and re.fullmatch(r"[a-z_]{1,60}", said):
        code = said
    if isinstance(message, str):
        text = message
    return code, text


def _message(text: str, redact: Redactor) -> str:
    """Notion's message, as inert, redacted, short text."""
    shown, _ = redact.cut(" ".join((text or "no message").split()), MESSAGE_CHARS)
    return "".join(c if c.isprintable() else "?" for c in shown)


def check_base_url(value: Any) -> None:
    """``https``, or ``http`` for a local server; no credentials, query or fragment."""
    service_base_url("notion", value, example=DEFAULT_BASE_URL)


def proxy_for(base_url: str) -> str | None:
    """The proxy of ``HTTPS_PROXY`` / ``HTTP_PROXY`` for ``base_url`` unless ``NO_PROXY``
    exempts its host (as Python's urllib reads them); only an http(s) proxy is used."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(base_url)
    proxy = proxies.get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    if urlsplit(proxy).scheme not in ("http", "https"):
        log.warning("the %s proxy is not an http(s) URL; the notion connector connects "
                    "directly", parts.scheme)
        return None
    return proxy
