"""A fake Slack Web API, built from Slack's published method references.

It serves what the ``slack`` connector calls, as ``slack_sdk`` sends it (every method is a
POST; ``chat.postMessage`` with a JSON body, the others form-encoded), under ``/api/``:

* ``auth.test`` — https://api.slack.com/methods/auth.test
* ``chat.postMessage`` — https://api.slack.com/methods/chat.postMessage (message metadata:
  https://api.slack.com/metadata/using)
* ``chat.getPermalink`` — https://api.slack.com/methods/chat.getPermalink
* ``conversations.history`` — https://api.slack.com/methods/conversations.history
* ``conversations.replies`` — https://api.slack.com/methods/conversations.replies
* ``users.list`` — https://api.slack.com/methods/users.list

As Slack does, it answers **HTTP 200 with** ``{"ok": false, "error": "<code>"}`` for almost
every error (``not_authed``, ``invalid_auth``, ``token_revoked``, ``missing_scope`` with
``needed``/``provided``, ``channel_not_found``, ``not_in_channel``, ``is_archived``,
``no_text``, ``msg_too_long``, ``invalid_blocks``, ``thread_not_found``, ``invalid_cursor``,
…), HTTP 429 with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}`` when rate
limited (https://api.slack.com/docs/rate-limits), and HTTP 404 ``unknown_method`` for a path
that is no method. Pagination is cursor-based (https://api.slack.com/apis/pagination): the
answer's ``response_metadata.next_cursor`` is opaque base64 (``next_ts:<ts>`` /
``user:<id>``), empty on the last page; ``conversations.history`` is newest first and also
says ``has_more``; ``conversations.replies`` is oldest first, the parent message first.
Message metadata is only returned with ``include_all_metadata``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.fake_api import FakeApi, Request, Response

BOT_USER = "U0KEEPBOT"
BOT_ID = "B0KEEPBOT"
TEAM_ID = "T0KEEPFLW"
#: Every scope the connector's methods need; a token in ``FakeSlack.scopes`` may have fewer.
ALL_SCOPES = frozenset({"chat:write", "channels:history", "groups:history", "users:read"})
_NEEDS = {"chat.postMessage": "chat:write", "conversations.history": "channels:history",
          "conversations.replies": "channels:history", "users.list": "users:read"}


@dataclass
class Channel:
    id: str
    name: str
    member: bool = True
    archived: bool = False
    #: Top-level messages and replies, oldest first.
    messages: list[dict[str, Any]] = field(default_factory=list)


def _ok(**body: Any) -> Response:
    return 200, {}, {"ok": True, **body}


def _error(code: str, status: int = 200, **extra: Any) -> Response:
    return status, {}, {"ok": False, "error": code, **extra}


def _cursor(prefix: str, value: str) -> str:
    return base64.b64encode(f"{prefix}:{value}".encode()).decode()


def _uncursor(prefix: str, cursor: str) -> str | None:
    try:
        text = base64.b64decode(cursor, validate=True).decode()
    except ValueError:
        return None
    head, sep, value = text.partition(":")
    return value if sep and head == prefix else None


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


@dataclass
class FakeSlack(FakeApi):
    channels: dict[str, Channel] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)
    #: token -> its scopes (a token not listed has all of ALL_SCOPES).
    scopes: dict[str, frozenset[str]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    _seq: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._initial_tokens = set(self.tokens)
        for name, handler in (("auth.test", self._auth_test),
                              ("chat.postMessage", self._post_message),
                              ("chat.getPermalink", self._permalink),
                              ("conversations.history", self._history),
                              ("conversations.replies", self._replies),
                              ("users.list", self._users_list)):
            pattern = "/api/" + re.escape(name)
            self.route("POST", pattern, self._scoped(name, handler))
            self.route("GET", pattern, self._scoped(name, handler))
        if not self.channels:
            self._default_channels()

    def _default_channels(self) -> None:
        self.add_channel("C0GENERAL", "general")
        self.add_channel("C0OUTSIDE", "outside", member=False)
        self.add_channel("C0ARCHIVE", "old-news", archived=True)

    def reset(self) -> None:
        """Back to a fresh workspace (one server serves many tests: stopping one takes
        half a second)."""
        with self.lock:
            self.requests.clear()
            self._faults.clear()
            self.tokens = set(self._initial_tokens)
            self.channels.clear()
            self._default_channels()
            self.members.clear()
            self.scopes.clear()
            self.revoked.clear()
            self._seq = 0

    # -- set-up and inspection -------------------------------------------------------------

    def add_channel(self, cid: str, name: str, *, member: bool = True,
                    archived: bool = False) -> Channel:
        channel = Channel(cid, name, member, archived)
        self.channels[cid] = channel
        return channel

    def add_member(self, uid: str, name: str, real_name: str, **extra: Any) -> None:
        self.members.append({
            "id": uid, "team_id": TEAM_ID, "name": name, "deleted": False,
            "real_name": real_name, "tz": "Europe/Berlin", "tz_offset": 3600,
            "is_bot": False, "is_admin": False,
            "profile": {"real_name": real_name, "display_name": name,
                        "email": f"{name}@example.com", "phone": "+49 30 1234567",
                        "image_72": "https://avatars.example/x.png"},
            **extra})

    def seed(self, cid: str, count: int, *, user: str = "U0SOMEONE", text: str = "msg"
             ) -> list[str]:
        """``count`` messages by someone else; their ts, oldest first."""
        with self.lock:
            return [self._store(self.channels[cid], {"user": user, "text": f"{text} {i}"})["ts"]
                    for i in range(count)]

    def posted(self, cid: str) -> list[dict[str, Any]]:
        """Messages this bot posted to the channel (replies too), oldest first."""
        with self.lock:
            return [dict(m) for m in self.channels[cid].messages if m.get("bot_id") == BOT_ID]

    def with_key(self, key: str) -> list[dict[str, Any]]:
        """Every message, in any channel, whose metadata carries ``key``."""
        with self.lock:
            return [dict(m) for c in self.channels.values() for m in c.messages
                    if (m.get("metadata") or {}).get("event_payload", {})
                    .get("idempotency_key") == key]

    # -- what Slack answers ----------------------------------------------------------------

    def auth_error(self, req: Request) -> Response:
        if req.token is None:
            return _error("not_authed")
        return _error("token_revoked" if req.token in self.revoked else "invalid_auth")

    def rate_limited(self, req: Request, retry_after: float | None) -> Response:
        headers = {} if retry_after is None else {"Retry-After": str(int(retry_after))}
        return 429, headers, {"ok": False, "error": "ratelimited"}

    def not_found(self, req: Request) -> Response:
        return _error("unknown_method", 404, req_method=req.path.rsplit("/", 1)[-1])

    def authorized(self, req: Request) -> bool:
        return super().authorized(req) and req.token not in self.revoked

    # -- methods ---------------------------------------------------------------------------

    def _scoped(self, method: str, handler: Any) -> Any:
        def serve(req: Request, _m: re.Match[str]) -> Response:
            needed = _NEEDS.get(method)
            have = self.scopes.get(req.token or "", ALL_SCOPES)
            if needed is not None and needed not in have:
                return _error("missing_scope", needed=needed, provided=",".join(sorted(have)))
            return handler(_params(req))
        return serve

    def _auth_test(self, p: dict[str, Any]) -> Response:
        return _ok(url="https://keepflow-fake.slack.com/", team="Keepflow Fake",
                   user="keepflow", team_id=TEAM_ID, user_id=BOT_USER, bot_id=BOT_ID,
                   is_enterprise_install=False)

    def _channel(self, p: dict[str, Any]) -> Channel | Response:
        channel = self.channels.get(str(p.get("channel") or ""))
        if channel is None:
            return _error("channel_not_found")
        if not channel.member:
            return _error("not_in_channel")
        return channel

    def _post_message(self, p: dict[str, Any]) -> Response:
        channel = self._channel(p)
        if not isinstance(channel, Channel):
            return channel
        if channel.archived:
            return _error("is_archived")
        text, blocks = p.get("text"), p.get("blocks")
        if isinstance(blocks, str):  # form-encoded: a JSON string
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return _error("invalid_blocks_format")
        if blocks is not None and (not isinstance(blocks, list) or not blocks
                                   or len(blocks) > 50 or not all(
                                       isinstance(b, dict) and isinstance(b.get("type"), str)
                                       for b in blocks)):
            return _error("invalid_blocks")
        if not text and not blocks:
            return _error("no_text")
        if isinstance(text, str) and len(text) > 40_000:
            return _error("msg_too_long")
        metadata = p.get("metadata")
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                return _error("invalid_metadata_format")
        if metadata is not None and not (
                isinstance(metadata, dict) and isinstance(metadata.get("event_type"), str)
                and isinstance(metadata.get("event_payload"), dict)):
            return _error("invalid_metadata_format")
        message: dict[str, Any] = {"user": BOT_USER, "bot_id": BOT_ID, "app_id": "A0KEEPAPP",
                                   "text": text or ""}
        if blocks is not None:
            message["blocks"] = blocks
        if metadata is not None:
            message["metadata"] = metadata
        thread_ts = p.get("thread_ts")
        if thread_ts:
            parent = self._find(channel, str(thread_ts))
            if parent is None or parent.get("thread_ts", parent["ts"]) != parent["ts"]:
                return _error("thread_not_found")
            message["thread_ts"] = parent["ts"]
        stored = self._store(channel, message)
        if thread_ts:
            parent = self._find(channel, str(thread_ts))
            assert parent is not None
            parent["thread_ts"] = parent["ts"]
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent["latest_reply"] = stored["ts"]
        return _ok(channel=channel.id, ts=stored["ts"],
                   message={k: v for k, v in stored.items() if k != "metadata"})

    def _permalink(self, p: dict[str, Any]) -> Response:
        channel = self.channels.get(str(p.get("channel") or ""))
        if channel is None:
            return _error("channel_not_found")
        ts = str(p.get("message_ts") or "")
        if self._find(channel, ts) is None:
            return _error("message_not_found")
        return _ok(channel=channel.id, permalink="https://keepflow-fake.slack.com/archives/"
                   f"{channel.id}/p{ts.replace('.', '')}")

    def _history(self, p: dict[str, Any]) -> Response:
        channel = self._channel(p)
        if not isinstance(channel, Channel):
            return channel
        top = [m for m in reversed(channel.messages)
               if m.get("thread_ts", m["ts"]) == m["ts"]]  # newest first, no replies
        inclusive = _truthy(p.get("inclusive"))
        for key, keep in (("oldest", lambda ts, b: ts > b or (inclusive and ts == b)),
                          ("latest", lambda ts, b: ts < b or (inclusive and ts == b))):
            bound = p.get(key)
            if bound in (None, ""):
                continue
            try:
                value = float(str(bound))
            except ValueError:
                return _error(f"invalid_ts_{key}")
            top = [m for m in top if keep(float(m["ts"]), value)]
        return self._page(top, p, "next_ts", lambda m: m["ts"], "messages", has_more=True)

    def _replies(self, p: dict[str, Any]) -> Response:
        channel = self._channel(p)
        if not isinstance(channel, Channel):
            return channel
        parent = self._find(channel, str(p.get("ts") or ""))
        if parent is None:
            return _error("thread_not_found")
        thread = [parent] + [m for m in channel.messages
                             if m.get("thread_ts") == parent["ts"] and m is not parent]
        return self._page(thread, p, "next_ts", lambda m: m["ts"], "messages", has_more=True)

    def _users_list(self, p: dict[str, Any]) -> Response:
        members = self.members or [{"id": BOT_USER, "name": "keepflow", "is_bot": True,
                                    "deleted": False, "profile": {"real_name": "keepflow"}}]
        return self._page(members, p, "user", lambda u: u["id"], "members")

    def _page(self, items: list[dict[str, Any]], p: dict[str, Any], prefix: str,
              key: Any, name: str, *, has_more: bool = False) -> Response:
        start = 0
        cursor = p.get("cursor")
        if cursor:
            at = _uncursor(prefix, str(cursor))
            ids = [key(i) for i in items]
            if at is None or at not in ids:
                return _error("invalid_cursor")
            start = ids.index(at)
        try:
            limit = int(p.get("limit") or 0)
        except ValueError:
            return _error("invalid_limit")
        limit = min(limit, 999) if limit > 0 else (100 if has_more else len(items) or 1)
        page = items[start:start + limit]
        more = start + limit < len(items)
        body: dict[str, Any] = {
            name: [self._shown(i, p) for i in page],
            "response_metadata": {"next_cursor": _cursor(prefix, key(items[start + limit]))
                                  if more else ""}}
        if has_more:
            body["has_more"] = more
        return _ok(**body)

    def _shown(self, item: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
        if "metadata" in item and not _truthy(p.get("include_all_metadata")):
            return {k: v for k, v in item.items() if k != "metadata"}
        return dict(item)

    def _find(self, channel: Channel, ts: str) -> dict[str, Any] | None:
        return next((m for m in channel.messages if m["ts"] == ts), None)

    def _store(self, channel: Channel, message: dict[str, Any]) -> dict[str, Any]:
        # Slack's ts is the posting time (seconds.microseconds), unique in a channel.
        self._seq += 1
        self._last_ts = max(getattr(self, "_last_ts", 0.0) + 0.000001, time.time())
        stored = {"type": "message", **message, "ts": f"{self._last_ts:.6f}"}
        channel.messages.append(stored)
        return stored


def _params(req: Request) -> dict[str, Any]:
    """A method's arguments from the query string, a form body or a JSON body."""
    params: dict[str, Any] = {k: v[-1] for k, v in req.query.items()}
    kind = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        body = req.json
        if isinstance(body, dict):
            params.update(body)
    elif kind == "application/x-www-form-urlencoded":
        params.update(req.form)
    return params
