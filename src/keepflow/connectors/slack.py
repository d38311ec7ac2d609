"""The ``slack`` connector: post messages and read channels through Slack's Web API
(SPEC §9; docs/connectors.md#slack).

Tools: ``post_message`` (mutate: ``chat.postMessage``), ``history`` (read:
``conversations.history``) and ``users`` (read: ``users.list``); ``check()`` calls
``auth.test``. Requests go through the official ``slack_sdk`` client, bounded and without
its retries (``slack_wire.py``); every failure becomes one typed error there.

**Idempotency and reconcile.** Slack's ``chat.postMessage`` has no idempotency key, but a
message can carry *metadata* (https://api.slack.com/metadata/using). Every post carries
``{"event_type": "keepflow_mutation", "event_payload": {"idempotency_key": <key>}}``. After
an uncertain post, :meth:`SlackConnector.reconcile` reads the channel's newest messages
(``conversations.history`` with ``include_all_metadata``; a reply's thread with
``conversations.replies``) and looks for a message by this connection's own bot user whose
metadata carries the key: found → applied (``{channel, ts, permalink}``); not among the
newest ``reconcile_messages`` messages (or anywhere in a thread read to its end) → not
applied; a thread longer than that, or any error while looking → ask again later.

Everything Slack sends back is cleaned (no control characters, lone surrogates, NUL or
bidirectional overrides), redacted of the token and cut to a size; identifiers (channel and
user IDs, timestamps, cursors) must have their documented shapes or the answer counts as
malformed. ``users`` returns no e-mail addresses, phone numbers or profile pictures.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.feed import clean_link
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret
from keepflow.connectors.setting_checks import (
    bearer_token,
    reject_unknown,
    service_base_url,
)
from keepflow.connectors.slack_wire import (
    DOC,
    BoundedWebClient,
    api_error,
    malformed,
    ok_data,
    transport_error,
)
from keepflow.errors import ConfigError, ConnectorError, PermanentError

DEFAULT_BASE_URL: Final = "https://slack.com/api/"
#: Bytes of one answer read at most: default, and the range of the ``max_bytes`` setting.
DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024
MIN_MAX_BYTES: Final = 64 * 1024
MAX_MAX_BYTES: Final = 32 * 1024 * 1024
#: Messages reconcile reads at most (newest first): default and range.
DEFAULT_RECONCILE_MESSAGES: Final = 1000
MIN_RECONCILE_MESSAGES: Final = 100
MAX_RECONCILE_MESSAGES: Final = 10_000
#: Messages per history page while reconciling (Slack's recommended maximum).
RECONCILE_PAGE: Final = 200
#: Seconds before the attempt's time a reconcile also reads: clocks of the host and Slack
#: may disagree by that much.
SKEW_SECONDS: Final = 300.0

#: Items one ``history`` / ``users`` call returns at most, and by default.
MAX_LIMIT: Final = 200
DEFAULT_LIMIT: Final = 100
#: Characters of a message ``text`` a post accepts (Slack truncates longer ones).
MAX_POST_TEXT: Final = 40_000
#: Blocks in one message (Slack's limit) and bytes of their JSON.
MAX_BLOCKS: Final = 50
MAX_BLOCKS_BYTES: Final = 64 * 1024
#: Characters of a message's text returned by ``history`` (then ``truncated: true``).
TEXT_CHARS: Final = 4000
#: Characters of a user's name or real name, and of a time zone name.
NAME_CHARS: Final = 256
TZ_CHARS: Final = 64
CURSOR_CHARS: Final = 1024
#: Seconds ``check()`` may take.
CHECK_SECONDS: Final = 30.0
TOKEN_CHARS: Final = 512

#: The metadata ``event_type`` that marks keepflow's posts.
EVENT_TYPE: Final = "keepflow_mutation"

_SETTINGS: Final = frozenset({"token", "base_url", "max_bytes", "reconcile_messages"})
_PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "post_message": frozenset({"channel", "text", "blocks", "thread_ts"}),
    "history": frozenset({"channel", "oldest", "latest", "limit", "cursor"}),
    "users": frozenset({"limit", "cursor"}),
}

_CHANNEL: Final = re.compile(r"[CGD][A-Z0-9]{2,20}\Z")
_USER: Final = re.compile(r"[UW][A-Z0-9]{1,20}\Z")
_TS: Final = re.compile(r"[0-9]{1,12}\.[0-9]{6}\Z")
_TIME: Final = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?\Z")
_CURSOR: Final = re.compile(rf"[\x21-\x7e]{{1,{CURSOR_CHARS}}}\Z")
#: What a text sent to Slack never holds: C0 controls but tab, newline and carriage return.
_BAD_INPUT: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
#: What a text handed back never holds: C0/C1 controls but tab and newline, DEL, lone
#: surrogates, U+FFFE/U+FFFF, and the bidirectional embeddings, overrides and isolates.
_CONTROL: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")

_HISTORY_RESULT: Final = ("{messages: [{ts, user, text, thread_ts?, reply_count?, "
                          "truncated?}], next_cursor}")
_USERS_RESULT: Final = "{users: [{id, name, real_name, is_bot, deleted, tz?}], next_cursor}"
_RECONCILE: Final = (
    "read the channel's newest messages (conversations.history with include_all_metadata; "
    "for a reply, its thread with conversations.replies) for one by this bot whose metadata "
    "carries the idempotency key: found = applied; absent from the whole channel or thread, "
    "or from the channel's newest reconcile_messages (default 1000) = not applied; a longer "
    "thread, or an error = ask again")


@dataclass(frozen=True)
class _Post:
    channel: str
    text: str
    blocks: list[Any] | None
    thread_ts: str | None


@dataclass(frozen=True)
class _History:
    channel: str
    oldest: str | None
    latest: str | None
    limit: int
    cursor: str | None


@dataclass(frozen=True)
class _Users:
    limit: int
    cursor: str | None


class SlackConnector(Connector):
    """Type ``slack``. See the module docstring and ``docs/connectors.md#slack``."""

    type_name: ClassVar[str] = "slack"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "post_message": ToolSpec(
            "post_message", ToolKind.MUTATE, "slack.post", RiskTier.MEDIUM,
            "Post a message to a channel (or a thread), marked with the idempotency key",
            ("channel",), reconcile=True, reconcile_doc="docs/connectors.md#slack-reconcile",
            params="{channel, text, blocks?, thread_ts?}", result="{channel, ts, permalink}",
            reconcile_strategy=_RECONCILE),
        "history": ToolSpec(
            "history", ToolKind.READ, "slack.read", RiskTier.LOW,
            "Read a channel's messages, newest first, a page at a time", ("channel",),
            params="{channel, oldest?, latest?, limit?, cursor?}", result=_HISTORY_RESULT),
        "users": ToolSpec(
            "users", ToolKind.READ, "slack.read", RiskTier.LOW,
            "List the workspace's users (no e-mail addresses), a page at a time",
            params="{limit?, cursor?}", result=_USERS_RESULT),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        self._token: Secret = s["token"]
        self._base_url = _base_url(s.get("base_url", DEFAULT_BASE_URL))
        self._max_bytes: int = s.get("max_bytes", DEFAULT_MAX_BYTES)
        self._reconcile_messages: int = s.get("reconcile_messages", DEFAULT_RECONCILE_MESSAGES)
        self._redact = Redactor([self._token.reveal()])

    def __repr__(self) -> str:
        return f"SlackConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("slack", settings, _SETTINGS)
        bearer_token("slack", settings, what="a Slack bot token (xoxb-…)",
                     max_chars=TOKEN_CHARS)
        _base_url(settings.get("base_url", DEFAULT_BASE_URL))
        for key, low, high in (("max_bytes", MIN_MAX_BYTES, MAX_MAX_BYTES),
                               ("reconcile_messages", MIN_RECONCILE_MESSAGES,
                                MAX_RECONCILE_MESSAGES)):
            value = settings.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not low <= value <= high):
                raise ConfigError(f"must be a whole number from {low} to {high} ({DOC})",
                                  key=key)

    # -- declarations ------------------------------------------------------------------------

    def can_reconcile(self, call: ToolCall) -> bool:
        return call.tool == "post_message" and bool(call.idempotency_key)

    def describe(self, call: ToolCall) -> str:
        p = call.params if isinstance(call.params, Mapping) else {}
        channel = p.get("channel")
        where = channel if isinstance(channel, str) and _CHANNEL.match(channel) else "?"
        if call.tool != "post_message":
            return f"slack {self.name}.{call.tool} {where}"
        text = p.get("text")
        preview = " ".join(_CONTROL.sub("", text).split()) if isinstance(text, str) else ""
        preview = preview if len(preview) <= 60 else preview[:59] + "…"
        return f'post to Slack {where} ({self.name}): "{preview}"'

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        parsed = self._parse(call)
        deadline = time.monotonic() + max(call.timeout, 0.0)
        if isinstance(parsed, _Post):
            return self._post(parsed, call, deadline)
        if isinstance(parsed, _History):
            return self._history(parsed, call.timeout, deadline)
        return self._users(parsed, call.timeout, deadline)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Look for the post by its key (docs/connectors.md#slack-reconcile). Never raises
        for Slack's failures: they answer ``RETRY``."""
        key = call.idempotency_key
        try:
            p = self._parse(call)
            if not isinstance(p, _Post) or not key:
                raise PermanentError(f"{self.name}.{call.tool}: nothing to reconcile")
            deadline = time.monotonic() + max(call.timeout, 0.0)
            who = f"slack {self.name} auth.test"
            me = ok_data(self._request(lambda c: c.auth_test(), who, call.timeout, deadline,
                                       mutate=False), who, mutate=False)
            oldest = (None if call.attempted_at is None else
                      f"{call.attempted_at.timestamp() - SKEW_SECONDS:.6f}")
            found, looked, covered = self._find(p, key, me, call.timeout, deadline, oldest)
        except ConnectorError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)
        where = f"thread {p.thread_ts} of {p.channel}" if p.thread_ts else p.channel
        if found is not None:
            result = {"channel": p.channel, "ts": found,
                      "permalink": self._permalink(p.channel, found, call.timeout, deadline)}
            return ReconcileResult(ReconcileOutcome.APPLIED, result,
                                   f"message {found} in {where} carries the key")
        if covered == "all":
            return ReconcileResult(ReconcileOutcome.FAILED, None,
                                   f"none of the {looked} messages of {where} (all of them) "
                                   "carries the key")
        if covered == "newest" and oldest is None:
            return ReconcileResult(ReconcileOutcome.FAILED, None,
                                   f"none of the newest {looked} messages of {where} carries "
                                   "the key (reconcile_messages)")
        if covered == "newest":  # more were posted since the attempt than reconcile reads
            return ReconcileResult(ReconcileOutcome.RETRY, None,
                                   f"none of the newest {looked} messages of {where} carries "
                                   "the key, and more were posted since the attempt "
                                   "(reconcile_messages)")
        return ReconcileResult(ReconcileOutcome.RETRY, None,
                               f"the {looked} oldest messages of {where} do not carry the key, "
                               "and the thread has more (its newest were not read)")

    def check(self) -> None:
        who = f"slack {self.name} auth.test"
        deadline = time.monotonic() + CHECK_SECONDS
        ok_data(self._request(lambda c: c.auth_test(), who, CHECK_SECONDS, deadline,
                              mutate=False), who, mutate=False)

    # -- the tools ---------------------------------------------------------------------------

    def _post(self, p: _Post, call: ToolCall, deadline: float) -> dict[str, Any]:
        what = f"slack {self.name} chat.postMessage to {p.channel}"
        metadata = ({"event_type": EVENT_TYPE,
                     "event_payload": {"idempotency_key": call.idempotency_key}}
                    if call.idempotency_key else None)

        def post(c: BoundedWebClient) -> SlackResponse:
            return c.chat_postMessage(channel=p.channel, text=p.text, blocks=p.blocks,
                                      thread_ts=p.thread_ts, metadata=metadata)

        data = ok_data(self._request(post, what, call.timeout, deadline, mutate=True), what,
                       mutate=True)
        ts, channel = data.get("ts"), data.get("channel")
        if not (isinstance(ts, str) and _TS.match(ts)):
            raise malformed(what, "no message timestamp (ts) in it", mutate=True)
        if not (isinstance(channel, str) and _CHANNEL.match(channel)):
            channel = p.channel
        return {"channel": channel, "ts": ts,
                "permalink": self._permalink(channel, ts, call.timeout, deadline)}

    def _permalink(self, channel: str, ts: str, timeout: float, deadline: float) -> str | None:
        """The message's permalink, or ``None`` when it cannot be had in the time left (the
        message is posted either way)."""
        what = f"slack {self.name} chat.getPermalink"
        try:
            data = ok_data(self._request(
                lambda c: c.chat_getPermalink(channel=channel, message_ts=ts), what, timeout,
                deadline, mutate=False), what, mutate=False)
        except ConnectorError:
            return None
        return clean_link(data.get("permalink"), "", self._redact)

    def _history(self, p: _History, timeout: float, deadline: float) -> dict[str, Any]:
        what = f"slack {self.name} conversations.history of {p.channel}"
        data = ok_data(self._request(
            lambda c: c.conversations_history(channel=p.channel, oldest=p.oldest,
                                              latest=p.latest, limit=p.limit,
                                              cursor=p.cursor),
            what, timeout, deadline, mutate=False), what, mutate=False)
        raw = data.get("messages")
        if not isinstance(raw, list):
            raise malformed(what, "no list of messages in it", mutate=False)
        messages = [self._message(m, what) for m in raw[:p.limit]]
        return {"messages": messages, "next_cursor": _next_cursor(data, what)}

    def _users(self, p: _Users, timeout: float, deadline: float) -> dict[str, Any]:
        what = f"slack {self.name} users.list"
        data = ok_data(self._request(
            lambda c: c.users_list(limit=p.limit, cursor=p.cursor), what, timeout, deadline,
            mutate=False), what, mutate=False)
        raw = data.get("members")
        if not isinstance(raw, list):
            raise malformed(what, "no list of members in it", mutate=False)
        return {"users": [self._user(u, what) for u in raw[:p.limit]],
                "next_cursor": _next_cursor(data, what)}

    def _find(self, p: _Post, key: str, me: Mapping[str, Any], timeout: float,
              deadline: float, oldest: str | None) -> tuple[str | None, int, str]:
        """The ``ts`` of this bot's message carrying ``key`` (or ``None``), how many messages
        were read, and what they cover: ``"all"`` (the whole channel or thread — since
        ``oldest``, the attempt's time less the skew margin, when the host gave it),
        ``"newest"`` (the newest ``reconcile_messages`` of the channel) or ``"oldest"`` (the
        start of a longer thread)."""
        user_id, bot_id = me.get("user_id"), me.get("bot_id")
        mine = {v for v in (user_id, bot_id) if isinstance(v, str) and v}
        if not mine:
            raise malformed(f"slack {self.name} auth.test", "no user_id in it", mutate=False)
        what = (f"slack {self.name} conversations.replies of {p.thread_ts} in {p.channel}"
                if p.thread_ts else f"slack {self.name} conversations.history of {p.channel}")
        cursor: str | None = None
        looked = 0
        while looked < self._reconcile_messages:
            page = min(RECONCILE_PAGE, self._reconcile_messages - looked)

            def read(c: BoundedWebClient, cursor: str | None = cursor,
                     page: int = page) -> SlackResponse:
                if p.thread_ts:
                    return c.conversations_replies(channel=p.channel, ts=p.thread_ts,
                                                   include_all_metadata=True, limit=page,
                                                   cursor=cursor, oldest=oldest)
                return c.conversations_history(channel=p.channel, include_all_metadata=True,
                                               limit=page, cursor=cursor, oldest=oldest)

            data = ok_data(self._request(read, what, timeout, deadline, mutate=False), what,
                           mutate=False)
            raw = data.get("messages")
            if not isinstance(raw, list):
                raise malformed(what, "no list of messages in it", mutate=False)
            for m in raw:
                looked += 1
                ts = _carries(m, key, mine)
                if ts is not None:
                    return ts, looked, "all"
            cursor = _next_cursor(data, what)
            if cursor is None:
                return None, looked, "all"
            if not raw:
                raise malformed(what, "an empty page with a next_cursor", mutate=False)
        # History is newest first: its newest reconcile_messages were read. A thread is
        # oldest first: its newest replies were not.
        return None, looked, "oldest" if p.thread_ts else "newest"

    # -- the wire ----------------------------------------------------------------------------

    def _request(self, send: Callable[[BoundedWebClient], SlackResponse], what: str,
                 timeout: float, deadline: float, *, mutate: bool) -> SlackResponse:
        client = BoundedWebClient(token=self._token.reveal(), base_url=self._base_url,
                                  deadline=deadline, max_bytes=self._max_bytes)
        try:
            return send(client)
        except SlackApiError as exc:
            raise api_error(exc, mutate=mutate, what=what, connection=self.name,
                            redact=self._redact) from None
        except Exception as exc:  # transport, and anything a hostile answer provokes
            raise transport_error(exc, mutate=mutate, what=what, max_bytes=self._max_bytes,
                                  timeout=timeout, redact=self._redact) from None

    # -- what Slack sends back ---------------------------------------------------------------

    def _message(self, m: Any, what: str) -> dict[str, Any]:
        if not isinstance(m, dict) or not (isinstance(m.get("ts"), str) and _TS.match(m["ts"])):
            raise malformed(what, "a message without a valid ts", mutate=False)
        text, cut = self._text(m.get("text"), TEXT_CHARS, multiline=True)
        user = m.get("user")
        out: dict[str, Any] = {"ts": m["ts"],
                               "user": user if isinstance(user, str) and _USER.match(user)
                               else None,
                               "text": text}
        thread = m.get("thread_ts")
        if isinstance(thread, str) and _TS.match(thread):
            out["thread_ts"] = thread
        count = m.get("reply_count")
        if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**53:
            out["reply_count"] = count
        if cut:
            out["truncated"] = True
        return out

    def _user(self, u: Any, what: str) -> dict[str, Any]:
        if not isinstance(u, dict) or not (isinstance(u.get("id"), str)
                                           and _USER.match(u["id"])):
            raise malformed(what, "a member without a valid id", mutate=False)
        profile = u.get("profile")
        real = u.get("real_name")
        if not isinstance(real, str) and isinstance(profile, dict):
            real = profile.get("real_name")
        out: dict[str, Any] = {
            "id": u["id"],
            "name": self._text(u.get("name"), NAME_CHARS)[0],
            "real_name": self._text(real, NAME_CHARS)[0] or None,
            "is_bot": u.get("is_bot") is True,
            "deleted": u.get("deleted") is True,
        }
        tz = self._text(u.get("tz"), TZ_CHARS)[0]
        if tz:
            out["tz"] = tz
        return out

    def _text(self, value: Any, limit: int, *, multiline: bool = False) -> tuple[str, bool]:
        """``value`` as storable, inert text of at most ``limit`` characters, the token
        masked; and whether it was cut."""
        if not isinstance(value, str):
            return "", False
        text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
        if not multiline:
            text = " ".join(text.split())
        text, cut = self._redact.cut(text, limit)
        return text, cut

    # -- params ------------------------------------------------------------------------------

    def _parse(self, call: ToolCall) -> _Post | _History | _Users:
        """Check the params (SPEC §6: malformed calls are refused before anything is sent)."""
        tool = call.tool
        self.tool(tool)
        p = call.params
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{tool}: params must be an object")
        known = _PARAMS[tool]
        unknown = sorted(str(k) for k in set(p) - known)
        if unknown:
            raise self._bad(tool, unknown[0], f"unknown parameter; {tool} takes "
                                              f"{sorted(known)}")
        if tool == "users":
            return _Users(self._limit(tool, p), self._cursor(tool, p))
        channel = p.get("channel")
        if not isinstance(channel, str) or not _CHANNEL.match(channel):
            raise self._bad(tool, "channel", "must be a channel ID such as C0123ABCD (Slack "
                            "shows it in the channel's details); a #name is not accepted: "
                            "names change, and reconcile needs the ID")
        if tool == "history":
            return _History(channel, self._time(tool, p, "oldest"),
                            self._time(tool, p, "latest"), self._limit(tool, p),
                            self._cursor(tool, p))
        text = p.get("text")
        if not isinstance(text, str) or not text.strip():
            raise self._bad(tool, "text", "is required: the message (with blocks, the text "
                            "notifications and screen readers show)")
        if len(text) > MAX_POST_TEXT:
            raise self._bad(tool, "text", f"is {len(text)} characters; Slack takes at most "
                            f"{MAX_POST_TEXT}")
        if _BAD_INPUT.search(text):
            raise self._bad(tool, "text", "holds a control character, NUL or lone surrogate")
        thread_ts = p.get("thread_ts")
        if thread_ts is not None and not (isinstance(thread_ts, str) and _TS.match(thread_ts)):
            raise self._bad(tool, "thread_ts", "must be the ts of the thread's first message, "
                            "such as \"1700000000.123456\"")
        return _Post(channel, text, self._blocks(tool, p.get("blocks")), thread_ts)

    def _blocks(self, tool: str, blocks: Any) -> list[Any] | None:
        if blocks is None:
            return None
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS or not all(
                isinstance(b, Mapping) and isinstance(b.get("type"), str) for b in blocks):
            raise self._bad(tool, "blocks", f"must be a list of 1 to {MAX_BLOCKS} Block Kit "
                            "blocks, each an object with a \"type\"")
        try:
            data = json.dumps(blocks, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError):  # lone surrogates: UnicodeEncodeError
            raise self._bad(tool, "blocks", "must be plain JSON text (no lone surrogates, no "
                            "NaN)") from None
        if len(data) > MAX_BLOCKS_BYTES:
            raise self._bad(tool, "blocks", f"are {len(data)} bytes of JSON; at most "
                            f"{MAX_BLOCKS_BYTES}")
        if b"\\u0000" in data:
            raise self._bad(tool, "blocks", "hold a NUL character")
        parsed: list[Any] = json.loads(data)
        return parsed

    def _limit(self, tool: str, p: Mapping[str, Any]) -> int:
        limit = p.get("limit")
        if limit is None:
            return DEFAULT_LIMIT
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise self._bad(tool, "limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        return limit

    def _cursor(self, tool: str, p: Mapping[str, Any]) -> str | None:
        cursor = p.get("cursor")
        if cursor is None or cursor == "":
            return None
        if not isinstance(cursor, str) or not _CURSOR.match(cursor):
            raise self._bad(tool, "cursor", "must be the next_cursor of an earlier result")
        return cursor

    def _time(self, tool: str, p: Mapping[str, Any], key: str) -> str | None:
        value = p.get(key)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value) and 0 <= value < 1e12:
            return f"{value:.6f}"
        if isinstance(value, str) and _TIME.match(value):
            return value
        raise self._bad(tool, key, "must be a message ts such as \"1700000000.123456\" (or "
                        "Unix seconds)")

    def _bad(self, tool: str, field: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.name}.{tool}: params.{field}: {problem} ({DOC})",
                              field=field)


def _base_url(value: Any) -> str:
    """The API's base URL, ending in ``/``; a ``ConfigError`` for anything else."""
    url = service_base_url("slack", value, example=DEFAULT_BASE_URL)
    return url if url.endswith("/") else url + "/"


def _carries(m: Any, key: str, mine: set[str]) -> str | None:
    """The ``ts`` of ``m`` when it is this bot's message with ``key`` in its metadata."""
    if not isinstance(m, dict):
        return None
    metadata = m.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != EVENT_TYPE:
        return None
    payload = metadata.get("event_payload")
    if not isinstance(payload, dict) or payload.get("idempotency_key") != key:
        return None
    if not any(isinstance(v, str) and v in mine for v in (m.get("user"), m.get("bot_id"))):
        return None  # someone else's message cannot stand for this bot's post
    ts = m.get("ts")
    return ts if isinstance(ts, str) and _TS.match(ts) else None


def _next_cursor(data: Mapping[str, Any], what: str) -> str | None:
    meta = data.get("response_metadata")
    cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
    if cursor is None or cursor == "":
        return None
    if not isinstance(cursor, str) or not _CURSOR.match(cursor):
        raise malformed(what, "its next_cursor is not a cursor", mutate=False)
    return cursor


register_connector(SlackConnector)
