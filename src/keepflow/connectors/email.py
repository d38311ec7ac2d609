"""The ``email`` connector: a mailbox over IMAP and sending over SMTP (SPEC §9;
docs/connectors.md#email).

Tools: ``search`` (read: new messages of a folder since a UID cursor), ``read`` (read by id:
one message, text and HTML as plain bounded text, attachments listed), and the mutation
``send``. Reads never change a flag: folders are opened with EXAMINE and bodies fetched with
``BODY.PEEK``. Parsing, bounds and cleaning of what a mailbox holds: ``email_message.py``;
the IMAP client: ``email_imap.py``; the SMTP transaction and its phases: ``email_smtp.py``;
the settings: ``email_settings.py``.

**Exactly once over SMTP.** SMTP cannot tell a client whether a message was accepted when the
connection ends after the message and before the server's reply (RFC 1047). ``send``
therefore keeps a copy whose keywords record how far it got, in the connection's Sent folder,
and gives the message a Message-ID derived from the ledger attempt's idempotency key
(``<kf-<first 32 hex of sha256(key)>@<from domain>>``):

1. IMAP: SELECT the Sent folder (it must exist and store keywords); a copy with this
   Message-ID already there is this attempt having run before (marked sent: the result is
   returned, nothing is sent again; still marked sending: the outcome is uncertain);
2. SMTP: connect, TLS, login, ``MAIL FROM``, every ``RCPT TO`` — a refusal here is definite
   and leaves nothing behind;
3. IMAP APPEND of the exact bytes to the Sent folder with ``\\Seen $KeepflowSending``;
4. SMTP ``DATA`` and the message. A refusal (4xx/5xx), or a connection that broke before the
   message's end left, is definite: the copy is marked ``$KeepflowFailed`` and deleted;
5. on 2xx: ``+$KeepflowSent``, ``-$KeepflowSending``. No reply after the whole message is an
   :class:`UncertainOutcome`.

So the message is never transmitted before its copy exists, and a copy is marked sent only
after the server accepted it. ``reconcile`` looks the Message-ID up in the Sent folder:
marked sent → APPLIED; no copy (or one marked failed) → FAILED (it was never transmitted);
still marked sending → nobody can tell by looking: :attr:`ReconcileOutcome.INDETERMINATE`,
and the person is asked whether the message arrived. With ``bcc_self`` the connection's own
address is an extra, envelope-only recipient; its copy arriving in INBOX proves the server
accepted the message (APPLIED), and reconcile waits for it (RETRY) instead of asking at once.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

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
from keepflow.connectors.email_imap import (
    FAILED,
    SENDING,
    SENT,
    Deadline,
    Folder,
    ImapSession,
    internaldate_iso,
    quoted,
)
from keepflow.connectors.email_message import (
    HEADER_FORBIDDEN,
    AddressError,
    Mailbox,
    Outgoing,
    build_message,
    check_message_id,
    message_id_for,
    parse_mailboxes,
    parse_message,
)
from keepflow.connectors.email_settings import (
    DOC,
    FOLDER_CHARS,
    Settings,
    domain_allowed,
    parse_settings,
)
from keepflow.connectors.email_smtp import NoReply, SmtpSession
from keepflow.connectors.feed import clean_text
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor
from keepflow.errors import (
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    UncertainOutcome,
)

log = logging.getLogger("keepflow.connectors.email")

PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "search": frozenset({"folder", "since_uid", "limit", "from", "subject"}),
    "read": frozenset({"id"}),
    "send": frozenset({"to", "cc", "subject", "text", "html", "reply_to", "in_reply_to"}),
}

#: Messages one search returns: at most, and by default.
MAX_LIMIT: Final = 100
DEFAULT_LIMIT: Final = 50
#: Bytes of each message a search reads (headers and the start of the body, for the snippet).
PEEK_BYTES: Final = 32 * 1024
#: A search looks at UIDs in windows of this size, at most MAX_WINDOWS of them per call (a
#: UID SEARCH answer stays small however large the folder is); ``more`` says when it stopped.
WINDOW: Final = 50_000
MAX_WINDOWS: Final = 20
#: Characters of ``text`` and ``html`` that ``read`` returns.
TEXT_CHARS: Final = 100_000
HTML_CHARS: Final = 200_000
#: Characters of a subject and of a search filter a script may give.
SUBJECT_CHARS: Final = 998
FILTER_CHARS: Final = 200
#: Copies with one Message-ID looked at, at most (there is one, normally).
MAX_COPIES: Final = 10
_ID_HEADER: Final = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]{1,1000}>)")
_OWN_ID: Final = re.compile(r"<kf-[0-9a-f]{32}@([^>]+)>\Z")

_SEARCH_RESULT: Final = ("{folder, uidvalidity, next_uid, more, messages: [{id, uid, "
                         "message_id, from, to, subject, date, snippet}]}")
_READ_RESULT: Final = ("{id, message_id, from, to, cc, subject, date, text, html, "
                       "attachments: [{filename, content_type, size}], size, truncated}")
_SEND_STRATEGY: Final = (
    "search the Sent folder (IMAP) for the Message-ID derived from the idempotency key: a "
    "copy marked $KeepflowSent = applied; no copy, or one marked $KeepflowFailed = failed "
    "(the copy is stored before the message is transmitted); a copy still marked "
    "$KeepflowSending = indeterminate, the person is asked (SMTP cannot say, RFC 1047) — "
    "with bcc_self, the connection's own copy in INBOX = applied")


@dataclass(frozen=True)
class _Search:
    folder: str
    since_uid: int | None
    limit: int
    sender: str | None
    subject: str | None


@dataclass(frozen=True)
class _Read:
    id: str
    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class _Copy:
    """A copy of a sent message in the Sent folder, by its keywords."""

    uid: int
    flags: frozenset[str]

    @property
    def sent(self) -> bool:
        return SENT.lower() in self.flags

    @property
    def failed(self) -> bool:
        return FAILED.lower() in self.flags


class EmailConnector(Connector):
    """Type ``email``. See the module docstring and ``docs/connectors.md#email``."""

    type_name: ClassVar[str] = "email"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "search": ToolSpec(
            "search", ToolKind.READ, "email.read", RiskTier.LOW,
            "Messages of a folder newer than a UID cursor (oldest first), without marking "
            "them read", ("folder",),
            params="{folder?: \"INBOX\", since_uid?, limit?: 50, from?, subject?}",
            result=_SEARCH_RESULT),
        "read": ToolSpec(
            "read", ToolKind.READ_BY_ID, "email.read", RiskTier.LOW,
            "One message by the id search returned: headers, text, HTML (as text), "
            "attachments listed", ("folder",), params="{id}", result=_READ_RESULT),
        "send": ToolSpec(
            "send", ToolKind.MUTATE, "email.send", RiskTier.HIGH,
            "Send one message over SMTP, exactly once (a copy in the Sent folder records "
            "whether it was accepted)", ("recipient_domain",), reconcile=True,
            reconcile_doc="docs/connectors.md#email-reconcile",
            params="{to, cc?, subject, text?, html?, reply_to?, in_reply_to?}",
            result="{message_id, accepted: [address], id, folder}",
            reconcile_strategy=_SEND_STRATEGY),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self._s: Settings = parse_settings(config.settings)
        self._redact = Redactor([self._s.password.reveal()])

    def __repr__(self) -> str:
        return f"EmailConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        parse_settings(settings)

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        if call.tool != "send":
            return f"{self.name}.{call.tool}"
        try:
            out = self._outgoing(call)
        except PermanentError:
            return f"{self.name}.send (invalid params)"
        rcpts = out.recipients
        subject = clean_text(out.subject, 60, self._redact) or ""
        more = f" and {len(rcpts) - 1} more" if len(rcpts) > 1 else ""
        return f'email "{subject}" to {rcpts[0].addr}{more}'

    def validate(self, call: ToolCall) -> None:
        self.tool(call.tool)
        if call.tool == "search":
            self._search_params(call)
        elif call.tool == "read":
            self._read_params(call)
        else:
            self._outgoing(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        self.tool(call.tool)
        deadline = Deadline(call.timeout)
        if call.tool == "search":
            return self._search(self._search_params(call), deadline)
        if call.tool == "read":
            return self._read(self._read_params(call), deadline)
        out = self._outgoing(call)
        if not call.idempotency_key:
            raise PermanentError(f"{self.name}.send: the host gave no idempotency key; a "
                                 "send is only made as a ledger mutation")
        return self._send(out, call.idempotency_key, deadline)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Look the attempt's Message-ID up (docs/connectors.md#email-reconcile). A failure
        to look answers RETRY; never raises for the servers' failures."""
        try:
            out = self._outgoing(call)
            if not call.idempotency_key:
                raise PermanentError("no idempotency key")
        except PermanentError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)
        mid = self._message_id(call.idempotency_key)
        sent = self._s.sent_folder
        try:
            with self._imap(Deadline(call.timeout)) as imap:
                folder = imap.select(sent, readonly=True)
                copies = self._copies(imap, mid)
                live = [c for c in copies if not c.failed]
                done = next((c for c in live if c.sent), None)
                if done is not None:
                    return ReconcileResult(
                        ReconcileOutcome.APPLIED, self._result(out, mid, folder, done.uid),
                        f"the copy of {mid} in '{sent}' is marked sent")
                if not live:
                    why = ("marked failed" if copies else "not there")
                    return ReconcileResult(
                        ReconcileOutcome.FAILED, None,
                        f"the copy of {mid} in '{sent}' is {why}: the message was never "
                        "transmitted (its copy is stored before it is sent)")
                if self._s.bcc_self:
                    own = imap.select("INBOX", readonly=True)
                    if self._copies(imap, mid):
                        return ReconcileResult(
                            ReconcileOutcome.APPLIED,
                            self._result(out, mid, folder, live[0].uid),
                            f"the connection's own copy of {mid} arrived in INBOX "
                            f"(UIDVALIDITY {own.uidvalidity}): the server accepted it")
                    return ReconcileResult(
                        ReconcileOutcome.RETRY, None,
                        f"{self._question(out, mid)} (waiting for the connection's own "
                        "copy in INBOX, which proves acceptance)")
                return ReconcileResult(ReconcileOutcome.INDETERMINATE, None,
                                       self._question(out, mid))
        except ConnectorError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)

    def check(self) -> None:
        deadline = Deadline(30.0)
        with self._imap(deadline) as imap:
            self._sent_folder(imap)
        with SmtpSession(self._s.smtp, deadline, self._redact) as smtp:
            smtp.open(self._s.username, self._s.password.reveal())

    # -- search and read ---------------------------------------------------------------------

    def _search(self, p: _Search, deadline: Deadline) -> dict[str, Any]:
        with self._imap(deadline) as imap:
            folder = imap.select(p.folder, readonly=True)
            start = p.since_uid or 1
            uids, scanned, more = self._matching(imap, folder, p, start, deadline)
            batch = uids[:p.limit]
            if len(uids) > p.limit:
                next_uid, more = batch[-1] + 1, True
            else:
                next_uid = max(start, scanned + 1)
            fetched = imap.fetch(batch, f"(UID INTERNALDATE RFC822.SIZE "
                                        f"BODY.PEEK[]<0.{PEEK_BYTES}>)")
        messages = []
        for uid in batch:
            fields = fetched.get(uid)
            if fields is None:
                continue  # expunged since the search
            raw = fields.get("BODY[]")
            raw = raw if isinstance(raw, bytes) else b""
            size = fields.get("RFC822.SIZE")
            parsed = parse_message(raw, self._redact, text_chars=4 * PEEK_BYTES,
                                   html_chars=4 * PEEK_BYTES,
                                   cut=isinstance(size, int) and size > len(raw))
            if self._is_own_copy(parsed.message_id, parsed.sender):
                continue
            messages.append({
                "id": f"{folder.name}:{folder.uidvalidity}:{uid}", "uid": uid,
                "message_id": parsed.message_id, "from": parsed.sender, "to": parsed.to,
                "subject": parsed.subject,
                "date": parsed.date or internaldate_iso(fields.get("INTERNALDATE")),
                "snippet": parsed.snippet(self._redact)})
        return {"folder": folder.name, "uidvalidity": folder.uidvalidity,
                "next_uid": next_uid, "more": more, "messages": messages}

    def _matching(self, imap: ImapSession, folder: Folder, p: _Search, start: int,
                  deadline: Deadline) -> tuple[list[int], int, bool]:
        """UIDs from ``start`` matching the filters, in windows (see WINDOW); also the last
        UID looked at and whether the search stopped before the end of the folder."""
        end = folder.uidnext - 1 if folder.uidnext else None
        if folder.exists == 0 or (end is not None and start > end):
            return [], max(start - 1, (end or 0)), False
        scanned = start - 1
        if end is None:  # no UIDNEXT: one search to the end
            uids = [u for u in self._filtered(imap, f"{start}:*", p) if u >= start]
            return uids, max([scanned, *uids]), False
        found: list[int] = []
        for _ in range(MAX_WINDOWS):
            hi = min(scanned + WINDOW, end)
            found += [u for u in self._filtered(imap, f"{scanned + 1}:{hi}", p)
                      if scanned < u <= hi]
            scanned = hi
            if scanned >= end or len(found) > p.limit or deadline.left() < 1.0:
                break
        return found, scanned, scanned < end

    def _filtered(self, imap: ImapSession, uid_range: str, p: _Search) -> list[int]:
        """UID SEARCH with the filters: ASCII ones quoted, each non-ASCII one as a UTF-8
        literal in a search of its own (one literal per command), intersected."""
        base = ["UID", uid_range, "UNDELETED"]
        plain: list[str] = []
        literal: list[tuple[str, str]] = []
        for key, value in (("FROM", p.sender), ("SUBJECT", p.subject)):
            if value is None:
                continue
            if value.isascii():
                plain += [key, quoted(value)]
            else:
                literal.append((key, value))
        if not literal:
            return imap.search(base + plain)
        result: set[int] | None = None
        for key, value in literal:
            got = set(imap.search(base + plain + [key], value.encode("utf-8")))
            result = got if result is None else result & got
        return sorted(result or ())

    def _read(self, p: _Read, deadline: Deadline) -> dict[str, Any]:
        limit = self._s.max_message_bytes
        with self._imap(deadline) as imap:
            folder = imap.select(p.folder, readonly=True)
            if folder.uidvalidity != p.uidvalidity:
                raise PreconditionError(
                    f"{self.name}.read: folder '{p.folder}' was renumbered (UIDVALIDITY "
                    f"{folder.uidvalidity}, the id says {p.uidvalidity}): ids from before are "
                    "no longer valid; search the folder again", id=p.id)
            fetched = imap.fetch([p.uid], f"(UID INTERNALDATE RFC822.SIZE "
                                          f"BODY.PEEK[]<0.{limit}>)")
        fields = fetched.get(p.uid)
        if fields is None:
            raise PreconditionError(f"{self.name}.read: there is no message {p.id} (it was "
                                    "deleted or moved)", id=p.id)
        raw = fields.get("BODY[]")
        raw = raw if isinstance(raw, bytes) else b""
        size = fields.get("RFC822.SIZE")
        size = size if isinstance(size, int) else len(raw)
        parsed = parse_message(raw, self._redact, text_chars=TEXT_CHARS,
                               html_chars=HTML_CHARS, cut=size > len(raw))
        return {"id": p.id, "message_id": parsed.message_id, "from": parsed.sender,
                "to": parsed.to, "cc": parsed.cc, "subject": parsed.subject,
                "date": parsed.date or internaldate_iso(fields.get("INTERNALDATE")),
                "text": parsed.text, "html": parsed.html, "attachments": parsed.attachments,
                "size": size, "truncated": parsed.truncated}

    # -- send --------------------------------------------------------------------------------

    def _send(self, out: Outgoing, key: str, deadline: Deadline) -> dict[str, Any]:
        s = self._s
        mid = self._message_id(key)
        message = build_message(out, s.sender, mid, datetime.now(UTC))
        if len(message) > s.max_message_bytes:
            raise PermanentError(f"{self.name}.send: the message has {len(message)} bytes, "
                                 f"more than max_message_bytes ({s.max_message_bytes})",
                                 field="text")
        envelope = [b.addr for b in out.recipients]
        if s.bcc_self and s.sender.addr.lower() not in {a.lower() for a in envelope}:
            envelope.append(s.sender.addr)
        with self._imap(deadline) as imap:
            folder = self._sent_folder(imap)
            for copy in self._copies(imap, mid):  # this attempt ran before (normally: never)
                if copy.sent:
                    return self._result(out, mid, folder, copy.uid)
                if not copy.failed:
                    raise UncertainOutcome(
                        f"{self.name}.send: an earlier try of this attempt left its copy in "
                        f"'{s.sent_folder}' marked sending: {self._question(out, mid)}",
                        message_id=mid)
            with SmtpSession(s.smtp, deadline, self._redact) as smtp:
                smtp.open(s.username, s.password.reveal())
                smtp.envelope(s.sender.addr, envelope, len(message))
                uid = imap.append(s.sent_folder, f"(\\Seen {SENDING})", message)
                if uid is None:  # no UIDPLUS: find it
                    uid = next((c.uid for c in self._copies(imap, mid) if not c.failed), None)
                try:
                    smtp.data(message)
                except NoReply as exc:
                    raise UncertainOutcome(
                        f"{smtp.what} received the whole message, then gave no answer "
                        f"({exc}): whether it accepted it is unknown (RFC 1047). "
                        f"{self._question(out, mid)}", message_id=mid) from None
                except ConnectorError:
                    if uid is not None:
                        self._discard(imap, uid)
                    raise
            if uid is not None:
                self._mark_sent(imap, uid, mid)
        return self._result(out, mid, folder, uid)

    def _sent_folder(self, imap: ImapSession) -> Folder:
        folder = imap.select(self._s.sent_folder, readonly=False)
        if not folder.keywords:
            raise PreconditionError(
                f"{imap.what}: folder '{folder.name}' does not store new keywords (its "
                "PERMANENTFLAGS lack \\*), which send needs to record whether a message was "
                f"accepted; choose another sent_folder or server ({DOC})",
                folder=folder.name)
        return folder

    def _copies(self, imap: ImapSession, mid: str) -> list[_Copy]:
        """The messages of the selected folder whose Message-ID is exactly ``mid``."""
        uids = imap.search(["HEADER", "Message-ID", quoted(mid)])[:MAX_COPIES]
        fetched = imap.fetch(uids, "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        copies = []
        for uid, fields in sorted(fetched.items()):
            header = fields.get("BODY[HEADER.FIELDS (MESSAGE-ID)]")
            m = _ID_HEADER.search(header) if isinstance(header, bytes) else None
            if m is None or m.group(1).decode("ascii", "replace") != mid:
                continue
            flags = fields.get("FLAGS")
            names = frozenset(f.decode("ascii", "replace").lower() for f in
                              (flags if isinstance(flags, list) else [])
                              if isinstance(f, bytes))
            copies.append(_Copy(uid, names))
        return copies

    def _discard(self, imap: ImapSession, uid: int) -> None:
        """The send definitely failed: its copy is marked failed and deleted (best effort:
        a copy left marked sending only means a later reconcile would ask the person)."""
        try:
            imap.store(uid, "+FLAGS.SILENT", f"\\Deleted {FAILED}")
            imap.store(uid, "-FLAGS.SILENT", SENDING)
            imap.expunge(uid)
        except ConnectorError as exc:
            log.warning("%s: the copy of a refused message stays in '%s' (uid %s): %s",
                        self.name, self._s.sent_folder, uid, exc.message)

    def _mark_sent(self, imap: ImapSession, uid: int, mid: str) -> None:
        try:
            imap.store(uid, "+FLAGS.SILENT", SENT)
            imap.store(uid, "-FLAGS.SILENT", SENDING)
        except ConnectorError as exc:  # it was sent: the ledger records that from our result
            log.warning("%s: %s was accepted, but its copy in '%s' could not be marked sent "
                        "(%s)", self.name, mid, self._s.sent_folder, exc.message)

    def _result(self, out: Outgoing, mid: str, folder: Folder, uid: int | None
                ) -> dict[str, Any]:
        return {"message_id": mid, "accepted": [b.addr for b in out.recipients],
                "id": f"{folder.name}:{folder.uidvalidity}:{uid}" if uid else None,
                "folder": folder.name}

    def _question(self, out: Outgoing, mid: str) -> str:
        subject = clean_text(out.subject, 80, self._redact) or ""
        rcpts = ", ".join(b.addr for b in out.recipients[:3])
        if len(out.recipients) > 3:
            rcpts += f" and {len(out.recipients) - 3} more"
        return (f'Did the email "{subject}" to {rcpts} arrive (Message-ID {mid})? Ask the '
                "recipient or look in their mailbox: if it arrived, answer skip; if it did "
                "not, answer it didn't happen (it is sent again)")

    def _message_id(self, key: str) -> str:
        return message_id_for(key, self._s.sender.domain)

    def _is_own_copy(self, message_id: str | None, sender: str | None) -> bool:
        """With bcc_self, INBOX receives the connection's own copies: search leaves them out."""
        if not self._s.bcc_self or message_id is None or sender is None:
            return False
        m = _OWN_ID.match(message_id)
        addr = sender.rsplit("<", 1)[-1].rstrip(">").strip().lower()
        return m is not None and m.group(1).lower() == self._s.sender.domain and \
            addr == self._s.sender.addr.lower()

    @contextlib.contextmanager
    def _imap(self, deadline: Deadline) -> Iterator[ImapSession]:
        s = self._s
        budget = max(s.max_message_bytes, MAX_LIMIT * PEEK_BYTES) + 8 * 1024 * 1024
        with ImapSession(s.imap, s.username, s.password.reveal(), deadline, self._redact,
                         max_literal=max(s.max_message_bytes, PEEK_BYTES) + 1024,
                         budget=budget) as imap:
            yield imap

    # -- params ------------------------------------------------------------------------------

    def _params(self, call: ToolCall) -> Mapping[str, Any]:
        p = call.params
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{call.tool}: params must be an object")
        known = PARAMS[call.tool]
        unknown = sorted(str(k) for k in set(p) - known)
        if unknown:
            raise self._bad(call.tool, unknown[0],
                            f"unknown parameter; {call.tool} takes {sorted(known)}")
        return {k: v for k, v in p.items() if v is not None}

    def _search_params(self, call: ToolCall) -> _Search:
        p = self._params(call)
        folder = self._folder(call.tool, "folder", p.get("folder", "INBOX"))
        since = p.get("since_uid")
        if isinstance(since, float) and since.is_integer():
            since = int(since)
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                                  or not 1 <= since <= 0xFFFFFFFF):
            raise self._bad(call.tool, "since_uid", "must be the next_uid of an earlier "
                                                    "search (a whole number from 1)")
        limit = p.get("limit", DEFAULT_LIMIT)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise self._bad(call.tool, "limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        filters: dict[str, str | None] = {}
        for key in ("from", "subject"):
            value = p.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()
                                      or len(value) > FILTER_CHARS
                                      or HEADER_FORBIDDEN.search(value)):
                raise self._bad(call.tool, key, f"must be a non-empty text of at most "
                                                f"{FILTER_CHARS} characters without control "
                                                "characters (a substring to look for)")
            filters[key] = value
        return _Search(folder, since, limit, filters["from"], filters["subject"])

    def _read_params(self, call: ToolCall) -> _Read:
        p = self._params(call)
        raw = p.get("id")
        parts = raw.rsplit(":", 2) if isinstance(raw, str) else []
        if len(parts) != 3 or not all(x.isdigit() and len(x) <= 10 for x in parts[1:]) \
                or int(parts[1]) < 1 or int(parts[2]) < 1:
            raise self._bad(call.tool, "id", "must be the id of a message as search returns "
                                             "it: \"<folder>:<uidvalidity>:<uid>\"")
        assert isinstance(raw, str)
        folder = self._folder(call.tool, "id", parts[0])
        return _Read(raw, folder, int(parts[1]), int(parts[2]))

    def _outgoing(self, call: ToolCall) -> Outgoing:
        tool = call.tool
        p = self._params(call)
        limit = self._s.max_recipients
        try:
            to = parse_mailboxes(p.get("to"), limit=limit)
        except AddressError as exc:
            raise self._bad(tool, "to", str(exc)) from None
        cc: list[Mailbox] = []
        if "cc" in p:
            try:
                cc = parse_mailboxes(p["cc"], limit=limit)
            except AddressError as exc:
                raise self._bad(tool, "cc", str(exc)) from None
        reply_to: list[Mailbox] = []
        if "reply_to" in p:
            try:
                reply_to = parse_mailboxes(p["reply_to"], limit=10)
            except AddressError as exc:
                raise self._bad(tool, "reply_to", str(exc)) from None
        subject = p.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            raise self._bad(tool, "subject", "is required: a non-empty text")
        if HEADER_FORBIDDEN.search(subject):
            raise self._bad(tool, "subject", "holds a line break or another control "
                                             "character (header injection is refused)")
        if len(subject) > SUBJECT_CHARS:
            raise self._bad(tool, "subject", f"is longer than {SUBJECT_CHARS} characters")
        bodies: dict[str, str | None] = {}
        for key in ("text", "html"):
            value = p.get(key)
            if value is not None:
                if not isinstance(value, str):
                    raise self._bad(tool, key, "must be a string")
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise self._bad(tool, key, "is not valid Unicode (it holds a lone "
                                               "surrogate)") from None
                if "\x00" in value:
                    raise self._bad(tool, key, "holds a NUL character")
                if len(value) > self._s.max_message_bytes:
                    raise self._bad(tool, key, f"is longer than max_message_bytes "
                                               f"({self._s.max_message_bytes})")
            bodies[key] = value
        if not (bodies["text"] or bodies["html"]):
            raise self._bad(tool, "text", "give the message's text, or html, or both (a "
                                          "message without a body is refused)")
        in_reply_to = None
        if "in_reply_to" in p:
            try:
                in_reply_to = check_message_id(p["in_reply_to"])
            except AddressError as exc:
                raise self._bad(tool, "in_reply_to", str(exc)) from None
        out = Outgoing(to, cc, subject, bodies["text"], bodies["html"], reply_to, in_reply_to)
        if len(out.recipients) > limit:
            raise self._bad(tool, "cc", f"to and cc name {len(out.recipients)} recipients; at "
                                        f"most {limit} (max_recipients)")
        self._check_domains(tool, out)
        return out

    def _check_domains(self, tool: str, out: Outgoing) -> None:
        allowed = self._s.allow_domains
        if allowed is None:
            return
        for field, boxes in (("to", out.to), ("cc", out.cc)):
            for box in boxes:
                if not domain_allowed(box.domain, allowed):
                    raise PermissionDenied(
                        f"{self.name}.{tool}: params.{field}: {box.addr} is in domain "
                        f"'{box.domain}', which this connection may not send to (allow_domains "
                        f"= {list(allowed)}); nothing was sent ({DOC})", field=field,
                        recipient_domain=box.domain)

    def _folder(self, tool: str, field: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > FOLDER_CHARS \
                or HEADER_FORBIDDEN.search(value):
            raise self._bad(tool, field, f"must name a folder: a non-empty text of at most "
                                         f"{FOLDER_CHARS} characters without control "
                                         "characters")
        return value

    def _bad(self, tool: str, field: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.name}.{tool}: params.{field}: {problem}", field=field)


register_connector(EmailConnector)
