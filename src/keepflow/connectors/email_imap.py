"""IMAP for the ``email`` connector (SPEC §9; docs/connectors.md#email), on ``imaplib``.

:class:`ImapSession` is one logged-in connection for one call. What the server sends is
bounded before ``imaplib`` keeps it: a line longer than :data:`MAX_LINE`, a literal longer
than the caller allows (a server that ignores a partial ``BODY[]<0.n>`` fetch), more bytes in
all than the session's budget, or anything after the call's deadline raises instead of being
read. Every network step runs under the time left of the call's deadline.

Failures are typed (``keepflow.errors``): a refused login is an :class:`AuthError`, a folder
that does not exist a :class:`PreconditionError`, a connection that cannot be made or breaks,
a timeout, or an answer that makes no sense a :class:`TransientError`. Nothing here decides
the outcome of a send: the connector does (``email.py``), from the phase it was in.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from keepflow.connectors.secret import Redactor
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
)

#: Bytes of one response line kept at most (a UID SEARCH of 50,000 UIDs is ~400 KB).
MAX_LINE: Final = 1024 * 1024
#: Characters of a server's text quoted in a message.
QUOTE_CHARS: Final = 200
#: Keywords of the send protocol (docs/connectors.md#email-reconcile).
SENDING: Final = "$KeepflowSending"
SENT: Final = "$KeepflowSent"
FAILED: Final = "$KeepflowFailed"


class Deadline:
    """The end of a call: every network step gets the time left, never more."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + max(seconds, 0.0)

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    security: str  # "starttls" | "ssl" | "none"

    def shown(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Folder:
    """What SELECT / EXAMINE said about a folder."""

    name: str
    uidvalidity: int
    uidnext: int | None
    exists: int
    keywords: bool  # PERMANENTFLAGS allows new keywords (\*)


class _Limits:
    """What one session may read: per line, per literal, in all, and until when."""

    def __init__(self, max_literal: int, budget: int, deadline: Deadline) -> None:
        self.max_literal = max_literal
        self.budget = budget
        self.deadline = deadline


class _Imap(imaplib.IMAP4):
    """``imaplib.IMAP4`` whose reads are bounded (``read``/``readline`` are the documented
    places to override)."""

    def __init__(self, host: str, port: int, limits: _Limits) -> None:
        self.limits = limits
        super().__init__(host, port, timeout=max(limits.deadline.left(), 0.001))

    def _take(self, n: int) -> None:
        self.limits.budget -= n
        if self.limits.budget < 0:
            raise self.abort("the server sent more data than this call reads")
        if self.limits.deadline.passed():
            raise self.abort("the call's deadline passed while the server was answering")

    def readline(self) -> bytes:
        got = self.file.readline(MAX_LINE + 1)
        line = got if isinstance(got, bytes) else got.encode("latin-1")
        if len(line) > MAX_LINE:
            raise self.abort(f"the server sent a line longer than {MAX_LINE} bytes")
        self._take(len(line))
        return line

    def read(self, size: int) -> bytes:
        if size > self.limits.max_literal:
            raise self.abort(f"the server announced {size} bytes where at most "
                             f"{self.limits.max_literal} were asked for")
        self._take(size)
        got = self.file.read(size)
        return got if isinstance(got, bytes) else got.encode("latin-1")


class _ImapTls(_Imap, imaplib.IMAP4_SSL):
    """Implicit TLS (port 993): ``imaplib.IMAP4_SSL`` with the bounded reads of _Imap."""

    def __init__(self, host: str, port: int, limits: _Limits, context: ssl.SSLContext
                 ) -> None:
        self.limits = limits
        imaplib.IMAP4_SSL.__init__(self, host, port, ssl_context=context,
                                   timeout=max(limits.deadline.left(), 0.001))


def imap_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=")
                       .replace("/", ",") + "-")
            pending.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            pending.append(c)
    flush()
    return "".join(out)


def quoted(value: str) -> str:
    """An IMAP quoted string (the value holds no CR, LF or NUL: checked by the caller)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_arg(name: str) -> str:
    return quoted(imap_utf7(name))


_CODE: Final = re.compile(rb"\[([A-Z-]+)")


def _text(data: Any) -> str:
    """A server's answer as a short, inert text for a message."""
    if isinstance(data, list):
        data = b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data
                         if d is not None)
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    text = " ".join(str(data).split())
    return text[:QUOTE_CHARS]


def _code(data: Any) -> str | None:
    raw = data[-1] if isinstance(data, list) and data else data
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    if not isinstance(raw, bytes):
        return None
    m = _CODE.match(raw.lstrip())
    return m.group(1).decode("ascii") if m else None


class ImapSession:
    """One IMAP connection, logged in (see the module docstring). Use as a context manager."""

    def __init__(self, endpoint: Endpoint, username: str, password: str, deadline: Deadline,
                 redact: Redactor, *, max_literal: int, budget: int) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self.redact = redact
        self.what = f"IMAP {endpoint.shown()}"
        self._limits = _Limits(max_literal, budget, deadline)
        self._imap = self._connect()
        self._caps: frozenset[str] = frozenset()
        try:
            self._login(username, password)
        except BaseException:
            self.close()
            raise

    # -- connection ------------------------------------------------------------------------

    def _connect(self) -> _Imap:
        ep = self.endpoint
        self._check_time("connecting")
        try:
            if ep.security == "ssl":
                return _ImapTls(ep.host, ep.port, self._limits, ssl.create_default_context())
            imap = _Imap(ep.host, ep.port, self._limits)
            if ep.security == "starttls":
                if "STARTTLS" not in imap.capabilities:
                    with contextlib.suppress(Exception):
                        imap.shutdown()
                    raise AuthError(
                        f"{self.what} does not offer STARTTLS, and imap_security = "
                        "\"starttls\" never sends the password in clear: use the server's "
                        "TLS port with imap_security = \"ssl\" (see docs/connectors.md#email)")
                self._step(imap)
                imap.starttls(ssl.create_default_context())
            return imap
        except ssl.SSLCertVerificationError as exc:
            raise AuthError(f"{self.what}: the server's TLS certificate was refused "
                            f"({exc.verify_message}); check imap_host") from None
        except ConnectorError:
            raise
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TransientError(f"{self.what}: could not connect ({self._why(exc)}); "
                                 "try again later") from None

    def _login(self, username: str, password: str) -> None:
        imap = self._imap
        self._step(imap)
        try:
            if username.isascii() and password.isascii() and \
                    "LOGINDISABLED" not in imap.capabilities:
                imap.login(quoted(username), password)
            else:
                creds = f"\0{username}\0{password}".encode()
                imap.authenticate("PLAIN", lambda _challenge: creds)
        except imaplib.IMAP4.abort as exc:
            raise TransientError(f"{self.what}: the connection broke while logging in "
                                 f"({self._why(exc)})") from None
        except (imaplib.IMAP4.error, OSError) as exc:
            if isinstance(exc, OSError):
                raise TransientError(f"{self.what}: the connection broke while logging in "
                                     f"({self._why(exc)})") from None
            code = _code(list(exc.args))
            if code in ("UNAVAILABLE", "INUSE", "LIMIT"):
                raise TransientError(f"{self.what}: the server cannot log in now "
                                     f"({self._why(exc)}); try again later") from None
            raise AuthError(f"{self.what} refused the login of '{username}' "
                            f"({self._why(exc)}): check the username and the password "
                            "(docs/connectors.md#email)") from None
        try:
            self._step(imap)
            typ, data = imap.capability()
            if typ == "OK" and data and isinstance(data[0], bytes):
                self._caps = frozenset(data[0].decode("ascii", "replace").upper().split())
        except (imaplib.IMAP4.error, OSError) as exc:
            raise TransientError(f"{self.what}: the connection broke after logging in "
                                 f"({self._why(exc)})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._imap.sock.settimeout(min(max(self.deadline.left(), 0.2), 2.0))
            self._imap.logout()
        with contextlib.suppress(Exception):
            self._imap.shutdown()

    def __enter__(self) -> ImapSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uidplus(self) -> bool:
        return "UIDPLUS" in self._caps

    # -- commands --------------------------------------------------------------------------

    def select(self, folder: str, *, readonly: bool) -> Folder:
        """SELECT (or EXAMINE, which never changes a flag) ``folder``."""
        with self._guard(f"opening folder '{folder}'"):
            typ, data = self._imap.select(mailbox_arg(folder), readonly=readonly)
        if typ != "OK":
            code = _code(data)
            if code in ("UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG"):
                raise TransientError(f"{self.what}: folder '{folder}' cannot be opened now "
                                     f"({self._why(data)}); try again later", folder=folder)
            if code in ("NOPERM", "AUTHORIZATIONFAILED"):
                raise PermissionDenied(f"{self.what}: access to folder '{folder}' is refused "
                                       f"({self._why(data)})", folder=folder)
            raise PreconditionError(f"{self.what}: there is no folder '{folder}' "
                                    f"({self._why(data)}); create it, or name an existing "
                                    "one", folder=folder)
        uidvalidity = self._number("UIDVALIDITY")
        if uidvalidity is None or uidvalidity < 1:
            raise TransientError(f"{self.what}: folder '{folder}' has no UIDVALIDITY (the "
                                 "server's answer is malformed)", folder=folder)
        flags = self._response("PERMANENTFLAGS")
        exists = self._number("EXISTS", from_data=data)
        return Folder(folder, uidvalidity, self._number("UIDNEXT"), exists or 0,
                      keywords=any(b"\\*" in f for f in flags if isinstance(f, bytes)))

    def search(self, criteria: list[str], literal: bytes | None = None) -> list[int]:
        """UID SEARCH; ``literal`` is the value of the last criterion (UTF-8 text)."""
        args = (["CHARSET", "UTF-8"] if literal is not None else []) + criteria
        with self._guard("searching"):
            self._imap.literal = literal  # type: ignore[assignment]  # imaplib takes bytes
            typ, data = self._imap.uid("SEARCH", *args)
        if typ != "OK":
            if _code(data) == "BADCHARSET":
                raise PermanentError(f"{self.what} cannot search for non-ASCII text "
                                     f"({self._why(data)}); filter in the script instead")
            raise TransientError(f"{self.what}: the search was refused ({self._why(data)})")
        uids: list[int] = []
        for line in data:
            if not isinstance(line, bytes):
                continue
            for word in line.split():
                if not word.isdigit() or len(word) > 10:
                    raise TransientError(f"{self.what}: the search answered {_text(line)!r}, "
                                         "which is not a list of UIDs")
                uids.append(int(word))
        return sorted(set(uids))

    def fetch(self, uids: list[int], items: str) -> dict[int, dict[str, Any]]:
        """UID FETCH: UID -> its items (``FLAGS``, ``BODY[]``, …); messages that are gone
        (or that the server did not return) are absent."""
        if not uids:
            return {}
        with self._guard("fetching messages"):
            typ, data = self._imap.uid("FETCH", uid_set(uids), items)
        if typ != "OK":
            raise TransientError(f"{self.what}: the fetch was refused ({self._why(data)})")
        wanted = set(uids)
        out: dict[int, dict[str, Any]] = {}
        try:
            for fields in parse_fetch(data):
                uid = fields.get("UID")
                if isinstance(uid, int) and uid in wanted:
                    out[uid] = fields
        except ValueError as exc:
            raise TransientError(f"{self.what}: a FETCH answer is malformed ({exc})") from None
        return out

    def append(self, folder: str, flags: str, message: bytes) -> int | None:
        """APPEND ``message`` to ``folder``; its UID when the server says (UIDPLUS)."""
        with self._guard(f"storing the message in '{folder}'"):
            typ, data = self._imap.append(mailbox_arg(folder), flags, None, message)
        if typ != "OK":
            code = _code(data)
            if code == "TRYCREATE":
                raise PreconditionError(f"{self.what}: there is no folder '{folder}' "
                                        f"({self._why(data)}); create it, or set "
                                        "sent_folder", folder=folder)
            if code in ("NOPERM", "AUTHORIZATIONFAILED"):
                raise PermissionDenied(f"{self.what}: storing in '{folder}' is refused "
                                       f"({self._why(data)})", folder=folder)
            if code in ("TOOBIG", "LIMIT"):
                raise PermanentError(f"{self.what}: '{folder}' refused the message "
                                     f"({self._why(data)})", folder=folder)
            raise TransientError(f"{self.what}: '{folder}' refused the message "
                                 f"({self._why(data)}); try again later", folder=folder)
        m = re.search(rb"\[APPENDUID (\d{1,10}) (\d{1,10})\]", b" ".join(
            d for d in data if isinstance(d, bytes)))
        return int(m.group(2)) if m else None

    def store(self, uid: int, change: str, flags: str) -> None:
        """UID STORE ``change`` (``+FLAGS.SILENT`` / ``-FLAGS.SILENT``) ``(flags)``."""
        with self._guard("changing flags"):
            typ, data = self._imap.uid("STORE", str(uid), change, f"({flags})")
        if typ != "OK":
            raise TransientError(f"{self.what}: changing flags was refused "
                                 f"({self._why(data)})")

    def expunge(self, uid: int) -> None:
        """UID EXPUNGE one message (UIDPLUS only; without it the message stays \\Deleted)."""
        if not self.uidplus:
            return
        with self._guard("expunging"):
            self._imap.uid("EXPUNGE", str(uid))

    # -- internals -------------------------------------------------------------------------

    def _check_time(self, doing: str) -> None:
        if self.deadline.passed():
            raise TransientError(f"{self.what}: the call's deadline passed before {doing}")

    def _step(self, imap: imaplib.IMAP4) -> None:
        left = self.deadline.left()
        if left <= 0:
            raise TransientError(f"{self.what}: the call's deadline passed")
        imap.sock.settimeout(left)

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        self._check_time(doing)
        self._step(self._imap)
        try:
            yield
        except imaplib.IMAP4.abort as exc:
            raise TransientError(f"{self.what}: the connection broke while {doing} "
                                 f"({self._why(exc)})") from None
        except imaplib.IMAP4.error as exc:  # BAD: the server did not understand us
            raise TransientError(f"{self.what}: the server refused the command while "
                                 f"{doing} ({self._why(exc)})") from None
        except OSError as exc:
            raise TransientError(f"{self.what}: the connection broke while {doing} "
                                 f"({self._why(exc)})") from None

    def _response(self, code: str) -> list[Any]:
        _, data = self._imap.response(code)
        return [d for d in data if d is not None] if isinstance(data, list) else []

    def _number(self, code: str, from_data: Any = None) -> int | None:
        values = self._response(code)
        if not values and from_data is not None:
            values = from_data if isinstance(from_data, list) else []
        found = None
        for v in values:
            if isinstance(v, bytes) and v.strip().isdigit() and len(v.strip()) <= 10:
                found = int(v.strip())
        return found

    def _why(self, exc: Any) -> str:
        if isinstance(exc, BaseException):
            exc = list(exc.args) if exc.args else type(exc).__name__
        return self.redact.text(_text(exc)) or "no reason given"


def uid_set(uids: list[int]) -> str:
    """``1:3,7`` for [1, 2, 3, 7]."""
    ordered = sorted(set(uids))
    ranges: list[str] = []
    start = prev = ordered[0]
    for u in ordered[1:]:
        if u == prev + 1:
            prev = u
            continue
        ranges.append(f"{start}:{prev}" if prev > start else str(start))
        start = prev = u
    ranges.append(f"{start}:{prev}" if prev > start else str(start))
    return ",".join(ranges)


def internaldate_iso(value: Any) -> str | None:
    """IMAP's INTERNALDATE (``03-Dec-2026 08:23:52 +0000``) as ISO 8601 UTC."""
    if not isinstance(value, bytes):
        return None
    try:
        when = datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except (UnicodeDecodeError, ValueError):
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- FETCH responses ---------------------------------------------------------------------

_LITERAL_END: Final = re.compile(rb"\{(\d{1,10})\}\s*\Z")
_PARTIAL: Final = re.compile(r"<\d+>\Z")


class _Literal:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def parse_fetch(data: list[Any]) -> list[dict[str, Any]]:
    """``imaplib``'s FETCH data as one dict per message: upper-case item names (a partial
    ``BODY[]<0>`` as ``BODY[]``) to ints, bytes (strings and literals), None (NIL) or lists.

    ``imaplib`` gives each untagged response as its literals' ``(line, literal)`` pairs
    followed by the rest of the line; this puts them back together and parses the list.
    Raises ``ValueError`` for anything malformed."""
    out: list[dict[str, Any]] = []
    segments: list[bytes | _Literal] = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], bytes) or \
                    not isinstance(item[1], bytes):
                raise ValueError("unexpected item")
            m = _LITERAL_END.search(item[0])
            if m is None:
                raise ValueError("a literal without its size")
            segments += [item[0][:m.start()], _Literal(item[1])]
            continue
        if not isinstance(item, bytes):
            raise ValueError("unexpected item")
        segments.append(item)
        parsed = _parse_response(segments)
        if parsed is not None:
            out.append(parsed)
        segments = []
    return out


def _parse_response(segments: list[bytes | _Literal]) -> dict[str, Any] | None:
    tokens = list(_tokens(segments))
    if len(tokens) < 2 or not isinstance(tokens[0], bytes) or not tokens[0].isdigit():
        return None  # not "<seq> (...)": some other untagged answer
    value, end = _value(tokens, 1)
    if not isinstance(value, list) or end != len(tokens):
        raise ValueError("not a parenthesized list")
    fields: dict[str, Any] = {}
    for i in range(0, len(value) - 1, 2):
        key = value[i]
        if not isinstance(key, bytes):
            raise ValueError("an item name that is not an atom")
        name = _PARTIAL.sub("", key.decode("ascii", "replace").upper())
        item = value[i + 1]
        if name in ("UID", "RFC822.SIZE"):
            if not (isinstance(item, bytes) and item.isdigit() and len(item) <= 12):
                raise ValueError(f"{name} is not a number")
            item = int(item)
        fields[name] = item
    return fields


_OPEN, _CLOSE = object(), object()


def _tokens(segments: list[bytes | _Literal]) -> Iterator[Any]:
    """Atoms and quoted strings as bytes, literals as :class:`_Literal`, NIL as None,
    parentheses as markers."""
    for seg in segments:
        if isinstance(seg, _Literal):
            yield seg
            continue
        i, n = 0, len(seg)
        while i < n:
            c = seg[i:i + 1]
            if c in (b" ", b"\r", b"\n", b"\t"):
                i += 1
            elif c == b"(":
                yield _OPEN
                i += 1
            elif c == b")":
                yield _CLOSE
                i += 1
            elif c == b'"':
                j, buf = i + 1, bytearray()
                while j < n and seg[j:j + 1] != b'"':
                    if seg[j:j + 1] == b"\\" and j + 1 < n:
                        j += 1
                    buf += seg[j:j + 1]
                    j += 1
                if j >= n:
                    raise ValueError("a quoted string that never ends")
                yield bytes(buf)
                i = j + 1
            else:
                j = i
                depth = 0
                while j < n:
                    d = seg[j:j + 1]
                    if d == b"[":
                        depth += 1
                    elif d == b"]":
                        depth -= 1
                    elif depth <= 0 and d in (b" ", b"(", b")", b"\r", b"\n"):
                        break
                    j += 1
                atom = seg[i:j]
                yield None if atom.upper() == b"NIL" else atom
                i = j


def _value(tokens: list[Any], i: int) -> tuple[Any, int]:
    """The value starting at ``tokens[i]`` and the index after it (lists without recursion
    limits beyond what a FETCH answer needs: 64 levels)."""
    tok = tokens[i]
    if tok is _CLOSE:
        raise ValueError("an unexpected ')'")
    if tok is not _OPEN:
        return (tok.data if isinstance(tok, _Literal) else tok), i + 1
    stack: list[list[Any]] = [[]]
    i += 1
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok is _OPEN:
            if len(stack) >= 64:
                raise ValueError("nested too deeply")
            stack.append([])
        elif tok is _CLOSE:
            done = stack.pop()
            if not stack:
                return done, i
            stack[-1].append(done)
        else:
            stack[-1].append(tok.data if isinstance(tok, _Literal) else tok)
    raise ValueError("a list that never ends")
