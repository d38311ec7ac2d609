"""Messages of the ``email`` connector (SPEC §9; docs/connectors.md#email): addresses checked
before anything is sent, the outgoing message built once, and incoming messages — whatever a
mailbox holds — reduced to plain, bounded, storable values.

Every message in a mailbox is someone else's, so parsing assumes hostility:

* at most the first :data:`MAX_DELIMITERS` MIME delimiter lines are parsed (a message of
  50,000 sibling parts, or a thousand nested multiparts, costs seconds of CPU and then a
  ``RecursionError`` in Python's ``email`` package): the rest is cut and ``truncated`` says so;
* every header value is cut to :data:`HEADER_CHARS` before the ``email`` package parses it (a
  megabyte of encoded words exhausts memory in ``email.headerregistry``), and a header the
  package cannot parse (it raises ``IndexError`` or ``RecursionError`` on some inputs) is used
  as the plain text it is;
* charsets are only ever real text codecs (``keepflow.connectors.http_body.text_codec``: a
  declared ``punycode``, ``rot13`` or unknown charset decodes as UTF-8), undecodable bytes
  become U+FFFD;
* every string handed back is cleaned (no control characters, NUL, lone surrogates or
  bidirectional overrides), redacted and cut to a size.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from typing import Any, Final

from keepflow.connectors.feed import clean_text, html_to_text
from keepflow.connectors.http_body import text_codec
from keepflow.connectors.secret import Redactor

#: Characters of one header value the ``email`` package is given.
HEADER_CHARS: Final = 16 * 1024
#: MIME delimiter lines (``--boundary``) parsed at most; the message is cut before the next.
MAX_DELIMITERS: Final = 500
#: Multipart levels descended at most.
MAX_DEPTH: Final = 32
#: Attachments listed at most.
MAX_ATTACHMENTS: Final = 100
#: Addresses returned per header (To, Cc) at most.
MAX_ADDRESSES: Final = 100
#: Characters of a subject, an address, a file name or a Message-ID returned.
SUBJECT_CHARS: Final = 1000
ADDRESS_CHARS: Final = 320
NAME_CHARS: Final = 255
MESSAGE_ID_CHARS: Final = 998
#: Characters of a search snippet.
SNIPPET_CHARS: Final = 300

# -- text --------------------------------------------------------------------------------

#: C0 controls except tab and newline, DEL, C1, lone surrogates, U+FFFE/U+FFFF and the
#: bidirectional embeddings, overrides and isolates (what a stored text never holds).
_CONTROL: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")
_BLANK_LINES: Final = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING: Final = re.compile(r"[ \t]+\n")
#: Anything a header value given by a script may not hold: CR and LF (header injection),
#: every other control character, lone surrogates.
HEADER_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def clean_body(value: str | None, limit: int, redact: Redactor) -> tuple[str | None, bool]:
    """A message body as storable text: line breaks kept (at most one blank line in a row),
    controls removed, redacted, cut to ``limit`` characters; and whether it was cut."""
    if value is None:
        return None, False
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    text = _BLANK_LINES.sub("\n\n", _TRAILING.sub("\n", text)).strip()
    text, cut = redact.cut(text, limit)
    return (text or None), cut


# -- addresses ---------------------------------------------------------------------------

_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR: Final = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})+)\Z")
_NAMED: Final = re.compile(r"\s*(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>\s*\Z")
_MSG_ID: Final = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,990}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>\Z")


class AddressError(ValueError):
    """Why a string is not an address a message can be sent to (for a PermanentError)."""


@dataclass(frozen=True)
class Mailbox:
    """``Name <local@domain>`` or a bare address, checked (:func:`parse_mailbox`)."""

    addr: str
    name: str = ""

    @property
    def domain(self) -> str:
        return self.addr.rsplit("@", 1)[1].lower()

    @property
    def shown(self) -> str:
        return f"{self.name} <{self.addr}>" if self.name else self.addr

    def header(self) -> Address:
        return Address(display_name=self.name, addr_spec=self.addr)


def parse_mailbox(value: Any) -> Mailbox:
    """An address as a script writes it: ``"bob@example.com"`` or ``"Bob <bob@example.com>"``.

    The address is a plain ``local@domain``: a dot-atom local part (no quoted strings, no
    comments) of at most 64 characters and an ASCII domain of at least two labels (an
    international domain in its ``xn--`` form), 254 characters in all. The display name may
    hold any text but ``<``, ``>`` and control characters (it is encoded for the header)."""
    if not isinstance(value, str):
        raise AddressError("must be a string (an e-mail address)")
    if HEADER_FORBIDDEN.search(value):
        raise AddressError("holds a line break or another control character (header "
                           "injection is refused)")
    named = _NAMED.match(value)
    name, addr = ((named.group("name"), named.group("addr").strip()) if named
                  else ("", value.strip()))
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].strip()
    if len(name) > NAME_CHARS:
        raise AddressError(f"has a display name longer than {NAME_CHARS} characters")
    if not addr.isascii():
        raise AddressError(f"{addr[:80]!r} is not an ASCII address (write an international "
                           "domain in its xn-- form; non-ASCII local parts are not supported)")
    m = _ADDR.match(addr)
    if m is None or "<" in name or ">" in name:
        raise AddressError(f"{addr[:80]!r} is not an e-mail address of the form "
                           "name@example.com")
    if len(m.group(1)) > 64 or len(addr) > 254:
        raise AddressError(f"{addr[:80]!r} is too long (64 characters before the @, 254 in "
                           "all)")
    return Mailbox(addr, name)


def parse_mailboxes(value: Any, *, limit: int) -> list[Mailbox]:
    """A string or a list of them (see :func:`parse_mailbox`); duplicates kept once."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise AddressError("must be an address or a non-empty list of addresses")
    if len(items) > limit:
        raise AddressError(f"lists {len(items)} addresses; at most {limit}")
    out: list[Mailbox] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            box = parse_mailbox(item)
        except AddressError as exc:
            raise AddressError(f"[{i}] {exc}" if len(items) > 1 else str(exc)) from None
        if box.addr.lower() not in seen:
            seen.add(box.addr.lower())
            out.append(box)
    return out


def check_message_id(value: Any) -> str:
    """A Message-ID a script refers to (``in_reply_to``): ``<left@right>``, printable ASCII."""
    if not isinstance(value, str) or HEADER_FORBIDDEN.search(value):
        raise AddressError("must be a Message-ID string without line breaks or control "
                           "characters")
    found = value.strip()
    if not _MSG_ID.match(found):
        raise AddressError("must be a Message-ID such as <abc@example.com> (printable ASCII, "
                           "no spaces)")
    return found


def message_id_for(idempotency_key: str, domain: str) -> str:
    """The Message-ID of a send: the same for every try of one ledger attempt."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<kf-{digest}@{domain}>"


# -- the outgoing message ----------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """A checked ``send`` (its params as the connector will use them)."""

    to: list[Mailbox]
    cc: list[Mailbox]
    subject: str
    text: str | None
    html: str | None
    reply_to: list[Mailbox] = field(default_factory=list)
    in_reply_to: str | None = None

    @property
    def recipients(self) -> list[Mailbox]:
        seen: set[str] = set()
        out = []
        for box in (*self.to, *self.cc):
            if box.addr.lower() not in seen:
                seen.add(box.addr.lower())
                out.append(box)
        return out


def build_message(out: Outgoing, sender: Mailbox, message_id: str, when: datetime) -> bytes:
    """The message as it is stored in the Sent folder and transmitted (the same bytes)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender.header()
    msg["To"] = [b.header() for b in out.to]
    if out.cc:
        msg["Cc"] = [b.header() for b in out.cc]
    if out.reply_to:
        msg["Reply-To"] = [b.header() for b in out.reply_to]
    msg["Subject"] = out.subject
    msg["Date"] = email.utils.format_datetime(when.astimezone(UTC))
    msg["Message-ID"] = message_id
    if out.in_reply_to:
        msg["In-Reply-To"] = out.in_reply_to
        msg["References"] = out.in_reply_to
    # RFC 3834: an automated message; auto-responders do not answer it (no mail loops).
    msg["Auto-Submitted"] = "auto-generated"
    if out.text is not None and out.html is not None:
        msg.set_content(out.text, cte="quoted-printable")
        msg.add_alternative(out.html, subtype="html", cte="quoted-printable")
    elif out.html is not None:
        msg.set_content(out.html, subtype="html", cte="quoted-printable")
    else:
        msg.set_content(out.text or "", cte="quoted-printable")
    return msg.as_bytes()


# -- incoming messages -------------------------------------------------------------------


class _BoundedPolicy(email.policy.EmailPolicy):
    """``email.policy.default``, except that a header value is cut to :data:`HEADER_CHARS`
    before it is parsed, and one that cannot be parsed is kept as its plain text."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if isinstance(value, str):
            value = value[:HEADER_CHARS]
        try:
            return super().header_fetch_parse(name, value)
        except Exception:  # the email package raises on some hostile headers
            return " ".join(str(value).split())


POLICY: Final = _BoundedPolicy()
_DELIMITER: Final = re.compile(rb"^--", re.M)
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")


@dataclass
class Parsed:
    """What a message says, cleaned and bounded."""

    message_id: str | None = None
    sender: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str | None = None
    date: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    #: Part of the message was left out (cut at a size, too many parts, unparseable).
    truncated: bool = False

    def snippet(self, redact: Redactor) -> str | None:
        source = self.text if self.text else (
            html_to_text(self.html, SNIPPET_CHARS) if self.html else None)
        return clean_text(source, SNIPPET_CHARS, redact)


def parse_message(raw: bytes, redact: Redactor, *, text_chars: int, html_chars: int,
                  cut: bool = False) -> Parsed:
    """``raw`` (a whole message, or its first bytes when ``cut``) as :class:`Parsed`."""
    data, over = _bounded(raw)
    out = Parsed(truncated=cut or over)
    msg: Message | None
    try:
        msg = BytesParser(policy=POLICY).parsebytes(data)
    except Exception:  # recursion, or a bug of the email package on this input
        out.truncated = True
        msg = _headers_only(data)
    if msg is None:
        return out
    _read_headers(msg, out, redact)
    try:
        _read_body(msg, out, redact, text_chars, html_chars)
    except Exception:
        out.truncated = True
    return out


def _bounded(raw: bytes) -> tuple[bytes, bool]:
    """``raw`` cut before its (MAX_DELIMITERS + 1)-th MIME delimiter line."""
    for n, m in enumerate(_DELIMITER.finditer(raw), 1):
        if n > MAX_DELIMITERS:
            return raw[:m.start()], True
    return raw, False


def _headers_only(data: bytes) -> Message | None:
    end = _HEADER_END.search(data)
    head = data[:end.end()] if end else data[:256 * 1024]
    try:
        return BytesHeaderParser(policy=POLICY).parsebytes(head)
    except Exception:
        return None


def _header(msg: Message, name: str) -> Any:
    try:
        return msg.get(name)
    except Exception:
        return None


def _read_headers(msg: Message, out: Parsed, redact: Redactor) -> None:
    out.subject = clean_text(_text(_header(msg, "subject")), SUBJECT_CHARS, redact)
    senders = _addresses(_header(msg, "from"), redact)
    out.sender = senders[0] if senders else None
    out.to = _addresses(_header(msg, "to"), redact)
    out.cc = _addresses(_header(msg, "cc"), redact)
    out.message_id = clean_text(_text(_header(msg, "message-id")), MESSAGE_ID_CHARS, redact)
    out.date = _date(_header(msg, "date"))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(value)
    except Exception:
        return None


def _addresses(value: Any, redact: Redactor) -> list[str]:
    """The addresses of an address header, ``Name <addr>``, cleaned; a header that did not
    parse as addresses is its cleaned text."""
    if value is None:
        return []
    found: list[str] = []
    try:
        boxes = list(value.addresses)[:MAX_ADDRESSES]
    except Exception:
        shown = clean_text(_text(value), ADDRESS_CHARS, redact)
        return [shown] if shown else []
    for box in boxes:
        try:
            addr, name = str(box.addr_spec), str(box.display_name or "")
        except Exception:  # noqa: S112 - an address the email package cannot show: left out
            continue
        shown = clean_text(f"{name} <{addr}>" if name else addr, ADDRESS_CHARS, redact)
        if shown:
            found.append(shown)
    return found


def _date(value: Any) -> str | None:
    when = getattr(value, "datetime", None)
    if not isinstance(when, datetime):
        text = _text(value)
        try:
            when = email.utils.parsedate_to_datetime(text) if text else None
        except Exception:
            when = None
    return iso_utc(when) if isinstance(when, datetime) else None


def iso_utc(when: datetime) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ``; a time without a zone is taken to be UTC."""
    try:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return None


def _leaves(msg: Message) -> Iterator[tuple[Message, str]]:
    """The non-multipart parts, in order, at most MAX_DEPTH levels down (no recursion)."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        try:
            ctype = part.get_content_type()
        except Exception:
            ctype = "application/octet-stream"
        if ctype.startswith("multipart/") and part.is_multipart():
            if depth < MAX_DEPTH:
                children = [c for c in part.get_payload() if isinstance(c, Message)]
                stack.extend((c, depth + 1) for c in reversed(children))
            continue
        yield part, ctype


def _read_body(msg: Message, out: Parsed, redact: Redactor, text_chars: int,
               html_chars: int) -> None:
    for part, ctype in _leaves(msg):
        try:
            disposition = part.get_content_disposition()
        except Exception:
            disposition = None
        inline = disposition != "attachment"
        if ctype == "text/plain" and inline and out.text is None:
            out.text, cut = clean_body(_decoded(part), text_chars, redact)
            out.truncated |= cut
        elif ctype == "text/html" and inline and out.html is None:
            out.html, cut = clean_body(_decoded(part), html_chars, redact)
            out.truncated |= cut
        elif len(out.attachments) < MAX_ATTACHMENTS:
            out.attachments.append({"filename": _filename(part, redact),
                                    "content_type": clean_text(ctype, 255, redact),
                                    "size": _size(part)})
        else:
            out.truncated = True


def _decoded(part: Message) -> str | None:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return None
    if not isinstance(data, bytes):
        return None
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    try:
        return data.decode(text_codec(charset), errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")


def _filename(part: Message, redact: Redactor) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return clean_text(name, NAME_CHARS, redact)


def _size(part: Message) -> int | None:
    """Bytes of the part's decoded content (of an attached message: its bytes)."""
    try:
        if part.is_multipart():
            return len(part.as_bytes())
        data = part.get_payload(decode=True)
    except Exception:
        return None
    return len(data) if isinstance(data, bytes) else None
