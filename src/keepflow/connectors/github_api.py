"""The HTTP layer of the ``github`` connector: a thin client of GitHub's REST API (SPEC §9).

There is no light official Python client, so the connector speaks REST itself, through
``httpx`` and the ``http`` connector's transport pieces (docs/connectors.md#github):

* every request carries ``Accept: application/vnd.github+json``, ``X-GitHub-Api-Version:
  2022-11-28``, ``Authorization: Bearer <token>`` and a ``User-Agent`` (GitHub refuses
  requests without one);
* every exchange — connecting, TLS, the answer's headers and body — ends by the call's
  deadline (:func:`~keepflow.connectors.http_transport.deadline_in`; the sockets are
  :class:`~keepflow.connectors.http_transport.DeadlineTransport`'s), and the body is read
  with the ``http`` connector's bounded reader (at most 2 MiB, decompression bounded too);
* requests go straight to the transport: no cookie jar, no redirect logic of httpx's on a
  server's ``Location``. A read follows at most :data:`MAX_REDIRECTS` redirects on the
  origin of ``base_url`` (GitHub answers ``301`` for a renamed repository); a mutation
  follows none (a ``307`` means it was not applied there);
* every answer is classified here (:func:`classify`): the status, GitHub's rate-limit
  headers and its error body (``message``, the ``errors`` array of a ``422``) decide the
  typed error; a ``2xx`` whose body is not the JSON GitHub documents is a classified error
  too — transient for a read, uncertain for a mutation (the request was applied, its answer
  is unreadable: reconcile finds what it made).

Everything a server sends back that ends up in a message is redacted (the token, should a
server echo it) and cut before it is kept.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx

from keepflow import __version__
from keepflow.connectors.http_body import ACCEPT_ENCODING, MAX_BODY_BYTES, read_body
from keepflow.connectors.http_classify import parse_retry_after, transport_error
from keepflow.connectors.http_transport import DeadlineTransport, remaining
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

log = logging.getLogger("keepflow.connectors.github")

DEFAULT_BASE_URL: Final = "https://api.github.com"
API_VERSION: Final = "2022-11-28"
ACCEPT: Final = "application/vnd.github+json"
USER_AGENT: Final = f"keepflow/{__version__} (github connector)"
DOC: Final = "docs/connectors.md#github"
#: Redirects a read follows at most (on base_url's origin only).
MAX_REDIRECTS: Final = 3
#: Seconds to connect at most (within the call's deadline).
CONNECT_TIMEOUT: Final = 10.0
#: Seconds a request waits when there is no deadline at all (check()).
DEFAULT_TIMEOUT: Final = 30.0
#: Characters of GitHub's ``message`` quoted in an error.
MESSAGE_CHARS: Final = 300
#: A secondary rate limit without ``retry-after``: GitHub asks to wait at least a minute.
SECONDARY_WAIT: Final = 60.0
#: A primary rate limit's reset is honoured up to an hour (the window is one hour).
MAX_RESET_WAIT: Final = 3600.0
#: Characters of a ``Link`` header looked at.
LINK_CHARS: Final = 16 * 1024
#: Pagination keys a cursor may carry (GitHub's page numbers, or its opaque cursors).
CURSOR_KEYS: Final = ("page", "per_page", "after", "before")
CURSOR_CHARS: Final = 512

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_DIGITS: Final = re.compile(r"[0-9]{1,12}\Z")
_OPAQUE: Final = re.compile(r"[A-Za-z0-9+/=_.:-]{1,300}\Z")
_LINK: Final = re.compile(r"<([^<>]*)>([^<]*)")
_REL: Final = re.compile(r'rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))', re.I)
#: What GitHub says when a token lacks a permission (fine-grained tokens, GitHub Apps), or
#: is not authorized for an organization that enforces SAML single sign-on.
_NOT_ACCESSIBLE: Final = re.compile(r"resource not accessible by|saml enforcement", re.I)


# -- time ------------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """GitHub's ISO 8601 timestamp (``2011-04-22T13:33:48Z``) as an aware datetime."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- pagination cursors ----------------------------------------------------------------------


def cursor_params(pairs: list[tuple[str, str]]) -> dict[str, str] | None:
    """The pagination keys of a query (a ``Link``'s next URL, or a script's cursor), checked;
    ``None`` when a key is unknown, repeated or its value malformed."""
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in CURSOR_KEYS or key in out:
            return None
        if key in ("page", "per_page"):
            if not _DIGITS.match(value) or int(value) < 1:
                return None
        elif not _OPAQUE.match(value):
            return None
        out[key] = value
    if not out or not ({"page", "after", "before"} & set(out)):
        return None
    return out


def encode_cursor(params: Mapping[str, str]) -> str:
    return urlencode(sorted(params.items()))


def decode_cursor(text: str) -> dict[str, str] | None:
    if len(text) > CURSOR_CHARS:
        return None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None
    return cursor_params(pairs)


def next_page(headers: httpx.Headers) -> dict[str, str] | None:
    """The query of the ``rel="next"`` link (RFC 8288) GitHub paginates with, reduced to its
    pagination keys; ``None`` on the last page (or when the link is unusable)."""
    raw = ", ".join(headers.get_list("link"))[:LINK_CHARS]
    for match in _LINK.finditer(raw):
        rels = {word.lower() for m in _REL.finditer(match.group(2))
                for word in (m.group(1) or m.group(2) or "").split()}
        if "next" not in rels:
            continue
        try:
            query = urlsplit(match.group(1).strip()).query
            pairs = parse_qsl(query, keep_blank_values=True)
        except ValueError:
            pairs = []
        found = cursor_params([(k, v) for k, v in pairs if k in CURSOR_KEYS])
        if found is None:
            log.warning("GitHub's Link header names a next page that cannot be followed; "
                        "the listing ends here")
        return found
    return None


# -- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A ``2xx`` answer: its status, headers and parsed JSON body (``None`` when empty)."""

    status: int
    headers: httpx.Headers
    data: Any

    def next_page(self) -> dict[str, str] | None:
        return next_page(self.headers)


@dataclass(frozen=True)
class Target:
    """What a request is about, for its messages."""

    #: ``GET /repos/acme/web/issues`` (no host: the connection names it).
    what: str
    #: Said of a 404, e.g. "no such repository acme/web, or the token cannot see it".
    missing: str
    #: GitHub's field names -> the param a script sets (a 422 names the param).
    fields: Mapping[str, str]


def malformed(target: Target, why: str, *, mutate: bool, status: int) -> ConnectorError:
    """A ``2xx`` GitHub's API does not document: unreadable, so it cannot be relied on."""
    if mutate:
        return UncertainOutcome(
            f"{target.what}: GitHub answered {status}, but {why}; the request was probably "
            "applied and its answer is unusable: reconcile looks for what it made "
            f"({DOC})", status=status)
    return TransientError(f"{target.what}: GitHub answered {status}, but {why}; try again "
                          f"({DOC})", status=status)


def _message(data: Any, redact: Redactor) -> str:
    """GitHub's ``message``, inert and short ('' when there is none)."""
    value = data.get("message") if isinstance(data, Mapping) else None
    if not isinstance(value, str):
        return ""
    shown, _ = redact.cut(" ".join(value.split()), MESSAGE_CHARS)
    return "".join(c if c.isprintable() else "?" for c in shown)


def _json(body: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


def rate_limit_wait(status: int, headers: httpx.Headers, message: str,
                    now: float | None = None) -> float | None:
    """Seconds to wait when an answer is one of GitHub's rate limits, else ``None``.

    Primary limit: ``403``/``429`` with ``x-ratelimit-remaining: 0`` — wait until
    ``x-ratelimit-reset`` (epoch seconds). Secondary limit: ``403``/``429`` with
    ``retry-after`` — wait that long; without either header, but saying so, at least a
    minute (docs.github.com, "Rate limits for the REST API")."""
    if status not in (403, 429):
        return None
    retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is not None:
        return retry_after
    if headers.get("x-ratelimit-remaining", "").strip() == "0":
        reset = headers.get("x-ratelimit-reset", "").strip()
        if _DIGITS.match(reset):
            wait = int(reset) - (time.time() if now is None else now)
            return min(max(1.0, wait), MAX_RESET_WAIT)
        return SECONDARY_WAIT
    if status == 429 or "rate limit" in message.lower():
        return SECONDARY_WAIT
    return None


def _field_error(data: Any, target: Target, redact: Redactor) -> tuple[str | None, str]:
    """The param a ``422`` names (from GitHub's ``errors`` array), and what it says."""
    errors = data.get("errors") if isinstance(data, Mapping) else None
    if not isinstance(errors, list):
        return None, ""
    for entry in errors[:20]:
        if isinstance(entry, str):
            text, _ = redact.cut(" ".join(entry.split()), MESSAGE_CHARS)
            return None, text
        if not isinstance(entry, Mapping):
            continue
        raw_field = entry.get("field")
        field = raw_field if isinstance(raw_field, str) and len(raw_field) <= 64 else None
        parts = []
        for key in ("code", "message", "value"):
            value = entry.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                text, _ = redact.cut(" ".join(str(value).split()), 120)
                parts.append(f"{key} {text!a}" if key == "value" else f"{key}: {text}")
        shown = "".join(c if c.isprintable() else "?" for c in "; ".join(parts))
        if field is None:
            return None, shown
        return target.fields.get(field, field), shown
    return None, ""


def classify(response: httpx.Response, body: bytes, cut: bool, target: Target, *,
             mutate: bool, redact: Redactor) -> Answer:
    """The answer of a request whose status is known, or the typed error it means."""
    status = response.status_code
    headers = response.headers
    if 200 <= status < 300:
        if cut:
            if len(body) < MAX_BODY_BYTES and not mutate:
                raise TransientError(
                    f"{target.what}: GitHub's answer broke off after {len(body)} bytes (the "
                    "connection ended, or the call's deadline passed while it arrived); try "
                    "again", status=status)
            if not mutate:
                raise PermanentError(
                    f"{target.what}: GitHub's answer is larger than the "
                    f"{MAX_BODY_BYTES // (1024 * 1024)} MiB the connector reads; ask for "
                    f"fewer items (a smaller limit) ({DOC})", status=status, field="limit")
            raise malformed(target, "its body was cut short", mutate=True, status=status)
        if not body.strip():
            return Answer(status, headers, None)
        try:
            return Answer(status, headers, _json(body))
        except (ValueError, RecursionError):
            raise malformed(target, "its body is not JSON", mutate=mutate,
                            status=status) from None
    try:
        data = _json(body) if body and not cut else None
    except (ValueError, RecursionError):
        data = None
    message = _message(data, redact)
    said = f"{target.what} -> {status}" + (f" {message!r}" if message else "")
    details: dict[str, Any] = {"status": status}
    if status == 401:
        raise AuthError(f"{said}: GitHub refused the token (wrong, expired or revoked); "
                        "reconnect the connection with a valid token "
                        f"({DOC})", **details)
    wait = rate_limit_wait(status, headers, message)
    if wait is not None:
        raise TransientError(f"{said}: GitHub's rate limit; the call is retried after "
                             f"{wait:.0f} s", retry_after=wait, **details)
    if status == 403:
        if _NOT_ACCESSIBLE.search(message) or _lacks_scope(headers):
            needed = _needed(headers)
            raise AuthError(f"{said}: the token lacks the permission this needs"
                            f"{needed}; reconnect the connection with a token that has it "
                            f"({DOC})", **details)
        raise PermissionDenied(f"{said}: GitHub refused the call for this resource (the "
                               "token's user may not do this here)", **details)
    if status == 404:
        raise PreconditionError(f"{target.what} -> 404: {target.missing}", **details)
    if status == 410:
        raise PreconditionError(f"{said}: gone (issues are disabled in the repository, or "
                                "the issue was deleted or transferred)", **details)
    if status == 422:
        field, problem = _field_error(data, target, redact)
        where = f" params.{field}:" if field else ""
        raise PermanentError(f"{said}:{where} {problem or 'GitHub refused the values'}; "
                             "nothing was applied", field=field, **details)
    if status in _REDIRECTS:
        raise PermanentError(f"{said}: GitHub answered with a redirect (a renamed or "
                             "transferred repository?); nothing was applied there: use the "
                             "repository's current name", **details)
    if status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        if not mutate:
            raise TransientError(f"{said}: GitHub failed; try again", retry_after=retry_after,
                                 **details)
        raise UncertainOutcome(f"{said}: GitHub failed while handling the request; it may or "
                               "may not have taken effect", **details)
    raise PermanentError(f"{said}: GitHub refused the request", **details)


def _lacks_scope(headers: httpx.Headers) -> bool:
    """A classic OAuth token without the scope the endpoint accepts (``x-accepted-oauth-
    scopes`` names them, ``x-oauth-scopes`` the token's)."""
    accepted = {s.strip() for s in headers.get("x-accepted-oauth-scopes", "").split(",")}
    granted = {s.strip() for s in headers.get("x-oauth-scopes", "").split(",")}
    accepted.discard("")
    return bool(accepted) and "x-oauth-scopes" in headers and not (accepted & granted)


def _needed(headers: httpx.Headers) -> str:
    for name in ("x-accepted-github-permissions", "x-accepted-oauth-scopes"):
        value = headers.get(name, "").strip()
        if value and len(value) <= 200 and value.isprintable():
            return f" (GitHub accepts: {value})"
    return ""


# -- the client ------------------------------------------------------------------------------


def segment(value: str | int) -> str:
    """One path segment, percent-encoded (names are validated before; this is defence)."""
    return quote(str(value), safe="")


class GitHubApi:
    """Sends requests to ``base_url`` with the token; thread-safe (one pool per connection)."""

    def __init__(self, base_url: httpx.URL, token: str, redact: Redactor) -> None:
        self.base_url = base_url
        self._redact = redact
        self._transport = DeadlineTransport()
        self._client = httpx.Client(
            transport=self._transport, trust_env=False, follow_redirects=False,
            headers={"Accept": ACCEPT, "X-GitHub-Api-Version": API_VERSION,
                     "User-Agent": USER_AGENT, "Authorization": f"Bearer {token}",
                     "Accept-Encoding": ACCEPT_ENCODING})

    def close(self) -> None:
        self._client.close()

    def url(self, path: str) -> httpx.URL:
        return self.base_url.copy_with(raw_path=self.base_url.raw_path.rstrip(b"/")
                                       + path.encode("ascii"))

    def request(self, method: str, path: str, target: Target, *, mutate: bool,
                query: Mapping[str, str] | None = None, body: Any = None) -> Answer:
        """One exchange, within the current deadline; raises the typed error it means."""
        left = remaining()
        timeout = DEFAULT_TIMEOUT if left is None else left
        if timeout <= 0:
            raise TransientError(f"{target.what}: no time was left of the call's deadline; "
                                 "nothing was sent", sent=False)
        try:
            request = self._client.build_request(
                method, self.url(path), params=dict(query or {}),
                json=body,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))
        except (ValueError, TypeError, UnicodeError, httpx.InvalidURL) as exc:
            raise PermanentError(f"{target.what}: the request could not be built "
                                 f"({type(exc).__name__}); nothing was sent",
                                 sent=False) from None
        response = self._send(request, target, mutate=mutate, deadline=timeout)
        try:
            data, cut = read_body(response)
        except Exception as exc:  # a bug, never the server's say: the status decides
            log.warning("the body of %s could not be read (%s)", target.what,
                        type(exc).__name__)
            data, cut = b"", True
        finally:
            response.close()
        return classify(response, data, cut, target, mutate=mutate, redact=self._redact)

    def _send(self, request: httpx.Request, target: Target, *, mutate: bool,
              deadline: float) -> httpx.Response:
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                response = self._transport.handle_request(request)
            except httpx.HTTPError as exc:
                error = transport_error(exc, mutate=mutate, what=target.what,
                                        redact=self._redact.text, deadline=deadline)
                if isinstance(exc, httpx.TimeoutException):
                    # Gave up waiting: GitHub may still be working on it (see reconcile).
                    error.details["timed_out"] = True
                raise error from None
            response.request = request
            location = response.headers.get("location")
            if mutate or response.status_code not in _REDIRECTS or location is None:
                return response
            response.close()
            request = self._redirect(request, location, target)
        raise TransientError(f"{target.what}: more than {MAX_REDIRECTS} redirects; try again "
                             "later, or check the repository's name")

    def _redirect(self, request: httpx.Request, location: str, target: Target
                  ) -> httpx.Request:
        """The next hop of a read, only on ``base_url``'s origin (the token goes nowhere
        else)."""
        try:
            url = request.url.join(location.strip())
        except (httpx.InvalidURL, UnicodeError, ValueError):
            url = None
        if url is None or (url.scheme, url.host, url.port) != (
                self.base_url.scheme, self.base_url.host, self.base_url.port) or url.userinfo:
            shown, _ = self._redact.cut(location, 200)
            raise PermanentError(
                f"{target.what}: GitHub redirected to {shown!a}, which is not on the "
                f"connection's base_url; it was not followed ({DOC})", sent=False)
        left = remaining()
        timeout = dict(request.extensions.get("timeout", {}))
        if left is not None:
            timeout["pool"] = max(0.0, left)
        return self._client.build_request(request.method, url,
                                          extensions={"timeout": timeout})
