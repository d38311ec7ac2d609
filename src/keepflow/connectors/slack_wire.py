"""The ``slack`` connector's side of the wire: the official client, bounded, and its failures
as keepflow's typed errors (SPEC §8, §9; docs/connectors.md#slack).

Requests are made by ``slack_sdk``'s :class:`~slack_sdk.WebClient` (it encodes each method's
arguments and parses the answer into a ``SlackResponse`` or a ``SlackApiError``), with three
changes, all in :class:`BoundedWebClient`:

* **no retry handlers**: a 429 reaches keepflow, which waits for its ``Retry-After`` and
  retries (the host's policy and per-connection back-off, docs/connectors.md#call-limits);
* **one deadline per call**: every request of a tool call gets the seconds left of
  ``call.timeout`` as its socket timeout, and the body must arrive by the deadline;
* **bounded answers, no redirects**: at most ``max_bytes`` of a body are read (more is an
  error, never held whole), decoded as UTF-8 whatever charset is claimed, and a 3xx is
  never followed (the bearer token would go along to wherever it points).

Classification (:func:`api_error`, :func:`transport_error`) asks the question SPEC §6 asks
of a mutation: could Slack have acted on it? A connection that never opened is definite
(``TransientError``, ``sent: false``); a request that was sent and then lost its answer, a
5xx, ``internal_error``/``fatal_error``, or an answer that cannot be read are uncertain for
``post_message`` (``UncertainOutcome``: the host reconciles) and transient for reads. An
answer with ``"ok": false`` and an error code is definite: Slack did not act on it.
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse

from keepflow.connectors.http_classify import parse_retry_after
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

DOC: Final = "docs/connectors.md#slack"

#: The sdk's logger. It formats whole request and response bodies whenever its logger's own
#: level is unset (to log them at DEBUG), and logs every transport failure at ERROR — which
#: the connector reports as a typed error anyway. Unless someone configured it, it is quiet.
SDK_LOG: Final = logging.getLogger("keepflow.connectors.slack.sdk")
if SDK_LOG.level == logging.NOTSET:
    SDK_LOG.setLevel(logging.CRITICAL)

_CHUNK: Final = 64 * 1024
#: What Slack writes as an error code: lower-case words joined by underscores.
_ERROR_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
#: Characters of a value Slack sends with an error (``needed``, ``provided``) in a message.
_DETAIL_CHARS: Final = 200


class NotSent(Exception):  # an internal signal: it never leaves this package
    """The request did not leave this process (the deadline had passed, a refused URL)."""


class AnswerTooLarge(Exception):  # internal
    """The answer's body is over ``max_bytes``."""


class AnswerTooSlow(Exception):  # internal
    """The call's deadline passed while the answer's body arrived."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, never followed: the Authorization header would go along."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


class BoundedWebClient(WebClient):
    """A :class:`~slack_sdk.WebClient` for one tool call: its deadline, its byte bound, no
    retries, no redirects. Built per call (cheap: urllib keeps no connection pool), so a
    connector shared by many threads shares no mutable client state."""

    def __init__(self, *, token: str, base_url: str, deadline: float, max_bytes: int) -> None:
        seconds = max(1, int(deadline - time.monotonic()) + 1)
        super().__init__(token=token, base_url=base_url, timeout=seconds, retry_handlers=[],
                         logger=SDK_LOG)
        self._deadline = deadline
        self._max_bytes = max_bytes

    def _perform_urllib_http_request_internal(self, url: str,
                                              req: urllib.request.Request) -> dict[str, Any]:
        if urlsplit(url).scheme not in ("http", "https"):
            raise NotSent("only http(s) URLs are called")
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise NotSent("the call's deadline passed before the request was sent")
        opener = urllib.request.build_opener(
            _NoRedirects, urllib.request.HTTPSHandler(context=self.ssl))
        response: Any
        try:
            response = opener.open(req, timeout=remaining)
        except urllib.error.HTTPError as exc:  # 3xx, 4xx, 5xx: an answer like any other
            response = exc
        try:
            body = self._read(response)
            status = int(getattr(response, "status", None) or response.code)
            headers = response.headers
        finally:
            response.close()
        # Slack answers UTF-8 JSON; a claimed charset is not trusted (punycode, or unknown).
        return {"status": status, "headers": headers,
                "body": body.decode("utf-8", errors="replace")}

    def _read(self, response: Any) -> bytes:
        if getattr(response, "fp", True) is None:  # an HTTPError without a body
            return b""
        read: Callable[[int], bytes] = getattr(response, "read1", None) or response.read
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > self._deadline:
                raise AnswerTooSlow
            chunk = read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_bytes:
                raise AnswerTooLarge
            chunks.append(chunk)


@dataclass(frozen=True)
class _Code:
    """What one Slack error code means."""

    kind: type[ConnectorError] | None  # None: server trouble (transient / uncertain)
    says: str  # what happened, in plain words
    todo: str = ""  # what to do
    param: str | None = None  # the call's param it is about


_RECONNECT = "store a working token: `keepflow connection secret {name} token`"
_CODES: Final[Mapping[str, _Code]] = {
    # credentials
    "not_authed": _Code(AuthError, "no token was sent", _RECONNECT),
    "invalid_auth": _Code(AuthError, "Slack refused the token", _RECONNECT),
    "token_revoked": _Code(AuthError, "the token has been revoked", _RECONNECT),
    "token_expired": _Code(AuthError, "the token has expired", _RECONNECT),
    "account_inactive": _Code(AuthError, "the token's user or bot has been deactivated",
                              _RECONNECT),
    "missing_scope": _Code(AuthError, "the token lacks a scope this method needs",
                           "add the scope to the Slack app, reinstall it and store the new "
                           "token: `keepflow connection secret {name} token`"),
    "not_allowed_token_type": _Code(AuthError, "this kind of token cannot call this method",
                                    "store a bot token (xoxb-…): `keepflow connection "
                                    "secret {name} token`"),
    "team_access_not_granted": _Code(AuthError, "the token has no access to this workspace",
                                     _RECONNECT),
    "two_factor_setup_required": _Code(AuthError, "the token's user must set up two-factor "
                                       "authentication", _RECONNECT),
    "org_login_required": _Code(AuthError, "the workspace is being migrated and needs a new "
                                "login", _RECONNECT),
    # what the call refers to
    "channel_not_found": _Code(PreconditionError, "there is no such channel, or the token "
                               "cannot see it (a private channel the bot is not in)",
                               "check the channel ID", "channel"),
    "thread_not_found": _Code(PreconditionError, "there is no such thread in the channel",
                              "check thread_ts", "thread_ts"),
    "message_not_found": _Code(PreconditionError, "there is no such message in the channel"),
    "user_not_found": _Code(PreconditionError, "there is no such user"),
    "unknown_method": _Code(PreconditionError, "base_url does not serve this Slack Web API "
                            "method", "check the connection's base_url"),
    # refused for this resource
    "not_in_channel": _Code(PermissionDenied, "the bot is not a member of the channel",
                            "invite it (/invite @your-app in the channel)", "channel"),
    "is_archived": _Code(PermissionDenied, "the channel is archived",
                         "unarchive it, or use another channel", "channel"),
    "restricted_action": _Code(PermissionDenied, "the workspace does not let this bot post "
                               "there", "ask a workspace admin", "channel"),
    "restricted_action_read_only_channel": _Code(PermissionDenied, "the channel is read-only",
                                                 "use another channel", "channel"),
    "restricted_action_thread_only_channel": _Code(
        PermissionDenied, "the channel only takes replies in threads", "pass thread_ts",
        "thread_ts"),
    "restricted_action_non_threadable_channel": _Code(
        PermissionDenied, "the channel takes no replies in threads", "leave thread_ts out",
        "thread_ts"),
    "cannot_reply_to_message": _Code(PermissionDenied, "this message cannot be replied to",
                                     "reply to another message", "thread_ts"),
    "no_permission": _Code(PermissionDenied, "the token may not do this here",
                           "add the app to the conversation", "channel"),
    "access_denied": _Code(PermissionDenied, "access to this resource was denied"),
    "ekm_access_denied": _Code(PermissionDenied, "the workspace's key management denied "
                               "access", "ask a workspace admin"),
    # rate limits
    "ratelimited": _Code(TransientError, "Slack rate-limited the call"),
    "rate_limited": _Code(TransientError, "Slack rate-limited the call"),
    "message_limit_exceeded": _Code(TransientError, "the workspace is sending too many "
                                    "messages"),
    "team_added_to_org": _Code(TransientError, "the workspace is being migrated"),
    # Slack's own trouble
    "fatal_error": _Code(None, "Slack failed while handling the call"),
    "internal_error": _Code(None, "Slack failed while handling the call"),
    "service_unavailable": _Code(None, "Slack is unavailable"),
    "request_timeout": _Code(None, "Slack timed out while handling the call"),
    # the request itself
    "invalid_arguments": _Code(PermanentError, "Slack refused the call's arguments"),
    "msg_too_long": _Code(PermanentError, "the message text is too long", "shorten text",
                          "text"),
    "no_text": _Code(PermanentError, "the message has no text", "pass text", "text"),
    "invalid_blocks": _Code(PermanentError, "Slack refused the blocks",
                            "check them in Slack's Block Kit Builder", "blocks"),
    "invalid_blocks_format": _Code(PermanentError, "the blocks are not a list of block "
                                   "objects", "check them in Slack's Block Kit Builder",
                                   "blocks"),
    "msg_blocks_too_long": _Code(PermanentError, "the blocks are too long", "shorten them",
                                 "blocks"),
    "too_many_attachments": _Code(PermanentError, "the message has too many attachments"),
    "invalid_metadata_format": _Code(PermanentError, "Slack refused the message metadata"),
    "invalid_metadata_schema": _Code(PermanentError, "Slack refused the message metadata"),
    "metadata_too_large": _Code(PermanentError, "the message metadata is too large"),
    "invalid_cursor": _Code(PermanentError, "the cursor is not one Slack gave (or it "
                            "expired)", "start again without cursor", "cursor"),
    "invalid_ts_latest": _Code(PermanentError, "latest is not a message timestamp", "",
                               "latest"),
    "invalid_ts_oldest": _Code(PermanentError, "oldest is not a message timestamp", "",
                               "oldest"),
    "invalid_limit": _Code(PermanentError, "Slack refused the limit", "", "limit"),
    "invalid_thread_ts": _Code(PermanentError, "thread_ts is not a message timestamp", "",
                               "thread_ts"),
}


def header(headers: Any, name: str) -> str | None:
    """A response header by name, in any letter case (the sdk keeps the server's)."""
    if not isinstance(headers, Mapping):
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else None
    return None


def error_code(data: Any) -> str | None:
    """The ``error`` of an answer when it is a real Slack error code, else ``None`` (the sdk
    puts its own sentence there for an answer that is not JSON)."""
    code = data.get("error") if isinstance(data, Mapping) else None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else None


def api_error(exc: SlackApiError, *, mutate: bool, what: str, connection: str,
              redact: Redactor) -> ConnectorError:
    """The typed error of an answer that is not ``"ok": true``."""
    response = exc.response
    status = getattr(response, "status_code", None)
    status = status if isinstance(status, int) else 0
    data = getattr(response, "data", None)
    headers = getattr(response, "headers", None)
    code = error_code(data)
    meaning = _CODES.get(code) if code is not None else None
    said = f"{what}: Slack answered {status}" + (f" {code}" if code else "")
    details: dict[str, Any] = {"status": status, "error": code}
    if status == 429 or (meaning is not None and meaning.kind is TransientError):
        retry_after = parse_retry_after(header(headers, "retry-after"))
        wait = f"waits {retry_after:g} s (Retry-After) and " if retry_after is not None else ""
        why = meaning.says if meaning is not None else "Slack rate-limited the call"
        return TransientError(f"{said}: {why}; keepflow {wait}tries again ({DOC})",
                              retry_after=retry_after, **details)
    if status >= 500 or (meaning is not None and meaning.kind is None):
        why = meaning.says if meaning is not None else "Slack failed"
        return server_trouble(f"{said}: {why}", mutate=mutate, **details)
    if meaning is not None:
        assert meaning.kind is not None
        message = f"{said}: {meaning.says}"
        if code == "missing_scope":
            message += _scopes(data, redact)
        if meaning.todo:
            message += f"; {meaning.todo.format(name=connection)}"
        if meaning.param is not None:
            details["field"] = meaning.param
        return meaning.kind(f"{message} ({DOC})", **details)
    if code is not None:  # a code this connector does not know: still a definite refusal
        return PermanentError(f"{said}: Slack refused the call ({code}); see Slack's "
                              f"documentation of the method for what the code means ({DOC})",
                              **details)
    # No Slack error code: the status decides, or the answer is unreadable.
    if status == 401:
        return AuthError(f"{said}: the token was refused; {_RECONNECT.format(name=connection)}"
                         f" ({DOC})", **details)
    if status == 403:
        return PermissionDenied(f"{said}: Slack refused the call ({DOC})", **details)
    if status in (404, 410):
        return PreconditionError(f"{said}: no Slack Web API method there; check the "
                                 f"connection's base_url ({DOC})", **details)
    if 300 <= status < 400:
        return PermanentError(f"{said}: a redirect, which is never followed (the token would "
                              f"go along); check the connection's base_url ({DOC})", **details)
    if status != 200:
        return PermanentError(f"{said}: Slack refused the call ({DOC})", **details)
    return malformed(what, "it is not a Slack answer (no \"ok\": true, no error code)"
                     + _start(data, redact), mutate=mutate)


def server_trouble(message: str, *, mutate: bool, **details: Any) -> ConnectorError:
    if mutate:
        return UncertainOutcome(f"{message}; the message may or may not have been posted: "
                                f"keepflow looks for it ({DOC})", **details)
    return TransientError(f"{message}; keepflow tries again ({DOC})", **details)


def malformed(what: str, problem: str, *, mutate: bool) -> ConnectorError:
    """An answer that cannot be read: keepflow cannot tell what Slack did."""
    return server_trouble(f"{what}: Slack's answer cannot be read: {problem}", mutate=mutate,
                          malformed=True)


def transport_error(exc: BaseException, *, mutate: bool, what: str, max_bytes: int,
                    timeout: float, redact: Redactor) -> ConnectorError:
    """Classify an exception raised while a request was made or its answer read."""
    if isinstance(exc, NotSent):
        return TransientError(f"{what}: {exc}; the request was not sent ({DOC})", sent=False)
    if isinstance(exc, urllib.error.URLError):
        # urllib wraps what fails while connecting and writing the request: nothing complete
        # reached the server (http.client writes a small request in one piece).
        reason = redact.text(_reason(exc.reason))
        return TransientError(f"{what}: could not reach Slack ({reason}); the request was not "
                              f"sent ({DOC})", sent=False)
    if isinstance(exc, AnswerTooLarge):
        return malformed(what, f"it is larger than max_bytes ({max_bytes} bytes)",
                         mutate=mutate)
    if isinstance(exc, AnswerTooSlow):
        return server_trouble(f"{what}: the answer did not arrive within the {timeout:g} s "
                              "the call may take", mutate=mutate, sent=True)
    if isinstance(exc, SlackClientError):  # the sdk refused to build the request
        return PermanentError(f"{what}: the Slack client refused the request "
                              f"({type(exc).__name__}) ({DOC})", sent=False)
    if isinstance(exc, (http.client.HTTPException, OSError)):
        # After the request was written: the server hung up, reset, or did not answer in time.
        reason = redact.text(_reason(exc))
        return server_trouble(f"{what}: the connection failed after the request was sent "
                              f"({reason})", mutate=mutate, sent=True)
    return malformed(what, f"{type(exc).__name__}", mutate=mutate)


def ok_data(response: SlackResponse, what: str, *, mutate: bool) -> dict[str, Any]:
    """The parsed answer of a call the sdk accepted: a JSON object with ``"ok": true``."""
    data = response.data
    if not isinstance(data, dict) or data.get("ok") is not True:
        raise malformed(what, "it is not a JSON object with \"ok\": true", mutate=mutate)
    return data


def _scopes(data: Any, redact: Redactor) -> str:
    needed = data.get("needed") if isinstance(data, Mapping) else None
    if not isinstance(needed, str) or not needed.strip():
        return ""
    shown, _ = redact.cut(" ".join(needed.split()), _DETAIL_CHARS)
    return f" (it needs {_inert(shown)})"


def _start(data: Any, redact: Redactor) -> str:
    text = data.get("error") if isinstance(data, Mapping) else None
    if not isinstance(text, str):
        return ""
    shown, _ = redact.cut(" ".join(text.split()), 120)
    return f"; {_inert(shown)}"


def _reason(exc: BaseException | str | None) -> str:
    if isinstance(exc, BaseException):
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        text = str(exc)
    return _inert(text[:200])


def _inert(text: str) -> str:
    """Control and non-ASCII characters escaped: server text goes into a message people
    read."""
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)
