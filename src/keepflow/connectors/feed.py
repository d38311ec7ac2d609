"""The ``feed`` connector: RSS and Atom feeds as plain, bounded items (docs/connectors.md#feed).

One read, ``fetch``: a GET of the feed's URL (conditional when the script passes the ``etag``
or ``modified`` of its last fetch), parsed by ``feedparser`` into
``{status, etag, modified, feed, items, truncated}``. Every item has a stable ``id`` (the
feed's guid or id, else its link, else a hash of its title, date and summary), so a producer
can publish one event per item with ``messageId: item.id`` and a second poll adds nothing.

Fetching is the ``http`` connector's, not a second HTTP stack: this connector drives an
:class:`~keepflow.connectors.http.HttpConnector` built from its ``allow`` and ``headers``
settings, so the egress rules (docs/security.md#network-egress, checked on every redirect
hop), the call's deadline, the bounded decoding of a body and the classification of
statuses are exactly those of ``http``.

Everything in a feed is the server's, and ``feedparser`` was not written for hostile input:

* it never fetches anything: it is handed the bytes, wrapped in a file object (a ``str``
  would be taken for a URL or a file name);
* it is handed a **normalized** document (:func:`normalize`): decoded here with a real text
  codec (a declared ``punycode`` would take quadratic time inside feedparser), re-encoded as
  UTF-8, without its prolog — so no DTD, no entity declaration (XXE, "billion laughs") and
  no megabytes of prolog for feedparser's quadratic prolog regexes — and with the content
  of author-like elements emptied when it is oversized or could make feedparser's e-mail
  regex backtrack quadratically (:func:`bound_authors`);
* its HTML sanitizer and relative-URI rewriting are off (both are quadratic on unclosed
  comments): HTML is reduced to plain text here, by a linear scanner (:func:`html_to_text`);
* every string of the result is cleaned (no control characters, no lone surrogates or NUL:
  docs/security.md#text-the-host-can-store), redacted like an ``http`` body and cut to a
  size; links are kept only as absolute ``http(s)`` URLs.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import io
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from urllib.parse import urljoin, urlsplit

import feedparser  # type: ignore[import-untyped]
import httpx

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.http_body import MAX_BODY_BYTES, charset_of, text_codec
from keepflow.connectors.http_classify import ERROR_BODY_CHARS, status_error
from keepflow.connectors.http_egress import Resolver
from keepflow.connectors.http_settings import check_settings
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret
from keepflow.connectors.setting_checks import reject_unknown
from keepflow.errors import (
    ConfigError,
    PermanentError,
    PreconditionError,
    TransientError,
)

log = logging.getLogger("keepflow.connectors.feed")

SETTINGS: Final = frozenset({"allow", "headers", "max_bytes", "max_items"})
PARAMS: Final = frozenset({"url", "etag", "modified", "limit"})

#: Bytes of a feed read at most, by default and at most (the http connector's body bound).
DEFAULT_MAX_BYTES: Final = MAX_BODY_BYTES
MIN_MAX_BYTES: Final = 1024
#: Items returned at most, by default and as the largest ``max_items`` accepted.
DEFAULT_MAX_ITEMS: Final = 200
MAX_MAX_ITEMS: Final = 1000

#: Characters of an item's plain-text summary.
SUMMARY_CHARS: Final = 2000
#: Characters of a title or an author.
TEXT_CHARS: Final = 1000
#: Characters of a link; a longer one is dropped (a cut URL points somewhere else).
LINK_CHARS: Final = 2048
#: Characters of an id used as it is: a ``messageId`` has at most 256 (SPEC §3); a longer
#: guid or link becomes ``sha256:<hex>`` of itself.
ID_CHARS: Final = 256
#: Characters of an ETag or Last-Modified value kept (and accepted as a param).
VALIDATOR_CHARS: Final = 1024
#: HTML characters scanned for a summary at most (the text needs far fewer).
HTML_SCAN_CHARS: Final = 256 * 1024
#: Author-like elements: their content (markup included) is emptied when it is longer than
#: this, or holds a run of more than AUTHOR_RUN e-mail characters (see normalize()).
AUTHOR_SPAN: Final = 2048
AUTHOR_RUN: Final = 64

ACCEPT: Final = ("application/rss+xml, application/atom+xml, application/xml;q=0.9, "
                 "text/xml;q=0.9, */*;q=0.5")
USER_AGENT: Final = "keepflow-feed"

_RESULT: Final = ("{status: 200|304, etag, modified, feed: {title, link, updated}, items: "
                  "[{id, title, link, published, updated, summary, author}], truncated}")

# -- text cleaning -----------------------------------------------------------------------

#: What a stored or displayed text never holds: C0/C1 controls except tab, newline and
#: carriage return (whitespace, collapsed), DEL, lone surrogates, U+FFFE/U+FFFF, and the
#: bidirectional embeddings, overrides and isolates that reorder how text is displayed.
_CONTROL: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")
#: Characters XML 1.0 forbids (a document holding one could only be parsed loosely).
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SPACES: Final = re.compile(r"[^\S\n]+")
_NEWLINES: Final = re.compile(r"\s*\n\s*")
_VISIBLE_ASCII: Final = re.compile(r"[\x20-\x7e]+\Z")


def clean_text(value: Any, limit: int, redact: Redactor, *, multiline: bool = False
               ) -> str | None:
    """``value`` as storable, single-spaced text of at most ``limit`` characters (``None``
    when nothing is left). ``multiline`` keeps line breaks (one at most in a row)."""
    if not isinstance(value, str):
        return None
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    if multiline:
        text = _NEWLINES.sub("\n", _SPACES.sub(" ", text)).strip()
    else:
        text = " ".join(text.split())
    text, _ = redact.cut(text, limit)
    text = text.rstrip()
    return text or None


def clean_link(value: Any, base: str, redact: Redactor) -> str | None:
    """An absolute ``http(s)`` URL, resolved against ``base``; anything else is ``None``
    (``javascript:``, ``data:``, a link with spaces or control characters, an overlong
    one)."""
    if not isinstance(value, str):
        return None
    raw = value.strip()
    if not raw or len(raw) > LINK_CHARS or _CONTROL.search(raw) or any(c.isspace() for c in raw):
        return None
    try:
        url = urljoin(base, raw)
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > LINK_CHARS:
        return None
    return redact.text(url)


# -- HTML to text ------------------------------------------------------------------------

#: Elements whose content is not text a reader sees.
_SKIPPED: Final = frozenset({"script", "style", "template", "noscript", "head", "title"})
#: Elements that end a line of text.
_BLOCKS: Final = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
    "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
    "nav", "ol", "p", "pre", "section", "table", "tr", "ul"})
_TAG_NAME: Final = re.compile(r"</?([A-Za-z][A-Za-z0-9:_-]*)")
_TAG_STOP: Final = re.compile(r"[>\"']")


def html_to_text(markup: str, limit: int) -> str:
    """The text a reader of ``markup`` sees, in time linear in its length.

    Tags, comments, declarations and processing instructions are dropped, the content of
    ``script``/``style``/``template``/``noscript`` too; block elements end a line;
    character references are decoded. Every search either moves past what it scanned or
    ends the scan, so no input is quadratic (Python's ``html.parser`` is, on unclosed
    comments, in the versions keepflow supports). Scanning stops once the text is long
    enough for ``limit``.
    """
    text = markup[:HTML_SCAN_CHARS]
    out: list[str] = []
    size = 0
    i, n = 0, len(text)
    while i < n and size <= 4 * limit:
        j = text.find("<", i)
        if j < 0:
            out.append(html.unescape(text[i:]))
            break
        if j > i:
            piece = html.unescape(text[i:j])
            out.append(piece)
            size += len(piece)
        if text.startswith("<!--", j):
            end = text.find("-->", j + 4)
            i = n if end < 0 else end + 3
            continue
        if text.startswith(("<!", "<?"), j):
            end = text.find(">", j + 2)
            i = n if end < 0 else end + 1
            continue
        m = _TAG_NAME.match(text, j)
        if m is None:  # a "<" that starts no tag is text
            out.append("<")
            size += 1
            i = j + 1
            continue
        end = _tag_end(text, m.end())
        if end < 0:
            break  # an unterminated tag: the rest is inside it
        name = m.group(1).lower()
        closing = text.startswith("</", j)
        i = end
        if name in _BLOCKS:
            out.append("\n")
        if name in _SKIPPED and not closing and not text.endswith("/>", 0, end):
            close = re.compile(rf"</{re.escape(name)}\s*>", re.I).search(text, i)
            i = n if close is None else close.end()
    return "".join(out)


def _tag_end(text: str, i: int) -> int:
    """The index after the ``>`` that ends the tag whose attributes start at ``i`` (quoted
    values may hold ``>``), or -1."""
    n = len(text)
    while i < n:
        m = _TAG_STOP.search(text, i)
        if m is None:
            return -1
        if m.group() == ">":
            return m.end()
        close = text.find(m.group(), m.end())
        if close < 0:
            return -1
        i = close + 1
    return -1


# -- the document feedparser sees --------------------------------------------------------

class NotAFeed(Exception):  # an internal signal: it never leaves this module
    """The body cannot be an XML feed (what it is, for the message)."""


_XML_ENCODING: Final = re.compile(
    rb"\A[ \t\r\n]{0,64}<\?xml[^>]{0,200}?encoding[ \t\r\n]*=[ \t\r\n]*[\"']"
    rb"([A-Za-z][A-Za-z0-9._:-]{0,39})[\"']")
_BOMS: Final = ((b"\xef\xbb\xbf", "utf-8"), (b"\x00\x00\xfe\xff", "utf-32-be"),
                (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\xfe\xff", "utf-16-be"),
                (b"\xff\xfe", "utf-16-le"))
_BLANK: Final = re.compile(r"[ \t\r\n]*")
_DOCTYPE_STOP: Final = re.compile(r"[\[>\"']")
_SUBSET_STOP: Final = re.compile(r"[\]\"']|<!--")
_SUBSET_END: Final = re.compile(r"\][ \t\r\n]*>")
#: Elements feedparser runs its e-mail regex over (RSS author, managingEditor, webMaster,
#: dc:creator/publisher, itunes:author/owner, Atom author name/email), any prefix.
_AUTHORISH: Final = re.compile(
    r"<((?:[A-Za-z_][\w.-]*:)?(?:author|creator|managingeditor|webmaster|publisher|owner|"
    r"name|email|contributor))(?=[\s/>])", re.I)
_EMAIL_RUN: Final = re.compile(rf"[A-Za-z0-9_.+-]{{{AUTHOR_RUN + 1}}}")
_DECLARATION: Final = "<?xml version='1.0' encoding='utf-8'?>\n"
#: A numeric character reference, as XML writes it and as a lenient parser reads it.
_CHAR_REF: Final = re.compile(r"&#(?:[xX]([0-9a-fA-F]+)|([0-9]+));?")
#: Characters beyond 0x10FFFF need at most 7 digits: a longer reference is refused unread.
_REF_DIGITS: Final = 8


def decode_document(body: bytes, content_type: str) -> str:
    """The body as text: its BOM, else the HTTP ``charset``, else the XML declaration's
    ``encoding``, else UTF-8 — each only if it names a real text codec (never punycode,
    idna, rot13, …); what does not decode becomes U+FFFD."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(codec, errors="replace")
    declared = charset_of(content_type)
    if declared is None:
        m = _XML_ENCODING.match(body)
        declared = m.group(1).decode("ascii") if m else None
    codec = text_codec(declared)
    if codec.startswith(("utf-16", "utf-32")) and body.lstrip()[:1] == b"<":
        codec = "utf-8"  # it says UTF-16, yet "<" is one byte: an ASCII-compatible body
    try:
        return body.decode(codec, errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return body.decode("utf-8", errors="replace")


def normalize(body: bytes, content_type: str) -> bytes:
    """The document feedparser is given (see the module docstring): UTF-8 with a fresh XML
    declaration, no prolog, no character XML forbids, author-like elements bounded.
    Raises :class:`NotAFeed` for a prolog that never ends."""
    text = _NOT_XML.sub("", decode_document(body, content_type))
    start = prolog_end(text)
    text = _CHAR_REF.sub(_char_ref, bound_authors(text[start:]))
    return (_DECLARATION + text).encode("utf-8", errors="replace")


def _char_ref(m: re.Match[str]) -> str:
    """A reference to a character XML forbids (NUL, a control, a lone surrogate, beyond
    U+10FFFF) as U+FFFD: feedparser's lenient parser would otherwise produce it."""
    digits, base = (m.group(1), 16) if m.group(1) is not None else (m.group(2), 10)
    significant = digits.lstrip("0") or "0"
    if len(significant) <= _REF_DIGITS:
        code = int(significant, base)
        if code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or \
                0x10000 <= code <= 0x10FFFF:
            return m.group()
    return "&#xFFFD;"


def prolog_end(text: str) -> int:
    """Where the first element starts: after the BOM, XML declaration, processing
    instructions, comments and the DOCTYPE (with its internal subset), in one linear scan."""
    i = 1 if text.startswith("\ufeff") else 0
    n = len(text)
    while True:
        blank = _BLANK.match(text, i)
        assert blank is not None  # it matches the empty string
        i = blank.end()
        if text.startswith("<?", i):
            end = text.find("?>", i + 2)
            if end < 0:
                raise NotAFeed("a processing instruction that never ends")
            i = end + 2
        elif text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                raise NotAFeed("a comment that never ends")
            i = end + 3
        elif text[i:i + 9].upper() == "<!DOCTYPE":
            i = _doctype_end(text, i + 9)
        else:
            return min(i, n)


def _doctype_end(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        m = _DOCTYPE_STOP.search(text, i)
        if m is None:
            break
        c = m.group()
        if c == ">":
            return m.end()
        if c in "\"'":
            close = text.find(c, m.end())
            if close < 0:
                break
            i = close + 1
            continue
        i = m.end()  # "[": the internal subset, up to "]" and ">"
        while i < n:
            s = _SUBSET_STOP.search(text, i)
            if s is None:
                raise NotAFeed("a DOCTYPE that never ends")
            stop = s.group()
            if stop == "]":
                end = _SUBSET_END.match(text, s.start())
                if end is None:
                    i = s.end()
                    continue
                return end.end()
            stop = "-->" if stop == "<!--" else stop
            close = text.find(stop, s.end())
            if close < 0:
                raise NotAFeed("a DOCTYPE that never ends")
            i = close + len(stop)
        break
    raise NotAFeed("a DOCTYPE that never ends")


def bound_authors(text: str) -> str:
    """``text`` with the content of every author-like element emptied when it is longer
    than :data:`AUTHOR_SPAN` characters or holds a run of more than :data:`AUTHOR_RUN`
    characters an e-mail address is made of.

    feedparser searches such values with an e-mail regex that backtracks quadratically on
    a long run of those characters (80,000 of them take 20 s). An element that is never
    closed ends the document there: everything after it would be its content. Linear: the
    scan continues after each element's end.
    """
    out: list[str] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _AUTHORISH.search(text, pos)
        if m is None:
            break
        start_end = _tag_end(text, m.end())
        if start_end < 0:
            out.append(text[pos:m.start()])
            pos = n
            break
        if text[start_end - 2] == "/":  # <author/>
            out.append(text[pos:start_end])
            pos = start_end
            continue
        close = re.compile(rf"</{re.escape(m.group(1))}\s*>", re.I).search(text, start_end)
        if close is None:
            out.append(text[pos:m.start()])
            pos = n
            break
        span = text[start_end:close.start()]
        if len(span) > AUTHOR_SPAN or _EMAIL_RUN.search(span):
            out.append(text[pos:start_end])
        else:
            out.append(text[pos:close.start()])
        out.append(close.group())
        pos = close.end()
    out.append(text[pos:])
    return "".join(out)


# -- dates and ids -----------------------------------------------------------------------


def iso_utc(value: Any) -> str | None:
    """feedparser's parsed date (a UTC ``struct_time``) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not isinstance(value, time.struct_time):
        return None
    try:
        when = datetime.fromtimestamp(calendar.timegm(value), UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def content_hash(title: str | None, published: str | None, summary: str | None) -> str:
    """The id of an item with neither guid nor link: ``sha256:`` and the hex SHA-256 of the
    compact JSON array ``[title, published, summary]`` of the values returned."""
    data = json.dumps([title, published, summary], ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(data.encode("utf-8")).hexdigest()


def stable_id(raw: str | None) -> str | None:
    """A guid or link as an id: itself when it fits a ``messageId``, else its hash."""
    if raw is None:
        return None
    if len(raw) <= ID_CHARS:
        return raw
    return "sha256:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()


# -- the connector -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetch:
    url: httpx.URL
    etag: str | None
    modified: str | None
    limit: int


class FeedConnector(Connector):
    """Type ``feed``. See the module docstring and ``docs/connectors.md#feed``."""

    type_name: ClassVar[str] = "feed"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "fetch": ToolSpec(
            "fetch", ToolKind.READ, "feed.read", RiskTier.LOW,
            "Fetch an RSS or Atom feed as items with stable ids (conditional GET with "
            "etag/modified)", ("host",),
            params="{url, etag?, modified?, limit?}", result=_RESULT),
    }

    def __init__(self, config: ConnectionConfig, *, resolver: Resolver | None = None) -> None:
        """``resolver`` replaces the system's DNS lookup (tests of the egress policy)."""
        super().__init__(config)
        self.validate_settings(config.settings)
        settings = config.settings
        self._max_bytes: int = settings.get("max_bytes", DEFAULT_MAX_BYTES)
        self._max_items: int = settings.get("max_items", DEFAULT_MAX_ITEMS)
        # The http connector's stack: egress, redirects, deadline, bounded bodies, statuses.
        shared = {key: settings[key] for key in ("allow", "headers") if key in settings}
        self._http = HttpConnector(ConnectionConfig(config.name, "http", shared),
                                   resolver=resolver)

    def __repr__(self) -> str:
        return f"FeedConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("feed", settings, SETTINGS)
        for key, low, high in (("max_bytes", MIN_MAX_BYTES, MAX_BODY_BYTES),
                               ("max_items", 1, MAX_MAX_ITEMS)):
            value = settings.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"must be a whole number from {low} to {high}", key=key)
        headers = settings.get("headers", {})
        if isinstance(headers, Mapping) and settings.get("allow") is None and any(
                isinstance(v, Secret) for v in headers.values()):
            raise ConfigError(
                "holds a credential, and a feed connection sends credentials only to the "
                "origins in its allow list: set allow = [\"https://…\"] (see "
                "docs/security.md#network-egress)", key="headers_env")
        check_settings({key: settings[key] for key in ("allow", "headers") if key in settings})

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        try:
            url = self._http.resolve(call.params.get("url"), "url")
        except PermanentError:
            return f"{self.name}.{call.tool} (invalid url)"
        return f"GET {self._http.display(url)}"

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        req = self._parse(call)
        what = f"GET {self._http.display(req.url)}"
        headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT}
        if req.etag is not None:
            headers["If-None-Match"] = req.etag
        if req.modified is not None:
            headers["If-Modified-Since"] = req.modified
        # docs/connectors.md#http-deadline: every hop and the body end by the call's deadline.
        response, body, cut = self._http.fetch(req.url, headers, call.timeout)
        return self._answer(req, response, body, cut, what)

    def close(self) -> None:
        self._http.close()

    # -- internals ---------------------------------------------------------------------------

    def _answer(self, req: _Fetch, response: httpx.Response, body: bytes, cut: bool,
                what: str) -> dict[str, Any]:
        """The result of a response whose body was read, or the error its status means."""
        redact = self._http.redactor
        status = response.status_code
        etag = _validator(response.headers.get("etag"))
        modified = _validator(response.headers.get("last-modified"))
        if status == 304:
            return {"status": 304, "etag": etag or req.etag, "modified": modified or req.modified,
                    "feed": {"title": None, "link": None, "updated": None}, "items": [],
                    "truncated": False}
        error = status_error(response, mutate=False, what=what, body=body, redact=redact)
        if error is not None:  # 401, 403, 408, 429, 5xx: as for http
            raise error
        if status in (404, 410):
            raise PreconditionError(
                f"{what} -> {status}: the feed is gone (no feed at this URL any more); check "
                "the URL, or stop polling it", status=status)
        if not 200 <= status < 300:
            raise PermanentError(
                f"{what} -> {status}: the server did not send the feed"
                f"{_quoted(body, response, redact)}", status=status)
        if cut and len(body) < self._max_bytes:
            raise TransientError(
                f"{what}: the feed's body ended after {len(body)} bytes (it broke off, or the "
                "call's deadline passed while it arrived); try again", status=status,
                bytes=len(body))
        oversized = cut or len(body) > self._max_bytes
        content_type = response.headers.get("content-type", "")
        try:
            document = normalize(body[:self._max_bytes], content_type)
            # No content-location: feedparser would resolve relative guids against it, and
            # an id must not change with the URL the feed was fetched from.
            parsed = feedparser.parse(
                io.BytesIO(document), sanitize_html=False, resolve_relative_uris=False,
                response_headers={"content-type": "application/xml; charset=utf-8"})
        except NotAFeed as exc:
            raise PermanentError(f"{what}: the answer is not an RSS or Atom feed ({exc})"
                                 f"{_quoted(body, response, redact)}", status=status) from None
        except Exception as exc:  # feedparser failed on this document: it will again
            raise PermanentError(f"{what}: the feed could not be parsed "
                                 f"({type(exc).__name__})", status=status) from None
        base = str(response.request.url)  # the last hop: relative links resolve against it
        feed = _field(parsed, "feed")
        feed = feed if isinstance(feed, Mapping) else {}
        title = _text_of(feed, "title", TEXT_CHARS, redact)
        entries = [e for e in _field(parsed, "entries") or [] if isinstance(e, Mapping)]
        if not entries and title is None and (_field(parsed, "bozo")
                                              or not _field(parsed, "version")):
            raise PermanentError(
                f"{what}: the answer is not an RSS or Atom feed (no items, no feed title)"
                f"{_quoted(body, response, redact)}; point url at the feed itself (a page "
                "names it in <link rel=\"alternate\" type=\"application/rss+xml\">)",
                status=status)
        if oversized and entries:
            entries.pop()  # it may have been cut in the middle
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        more = False
        for entry in entries:
            item = _item(entry, base, redact)
            if item["id"] in seen:
                continue
            if len(items) == req.limit:
                more = True
                break
            seen.add(item["id"])
            items.append(item)
        updated = (iso_utc(_field(feed, "updated_parsed"))
                   or iso_utc(_field(feed, "published_parsed")))
        return {"status": 200, "etag": etag, "modified": modified,
                "feed": {"title": title, "link": clean_link(_field(feed, "link"), base, redact),
                         "updated": updated},
                "items": items, "truncated": oversized or more}

    def _parse(self, call: ToolCall) -> _Fetch:
        """Check the params (SPEC §6: malformed calls are rejected before anything runs)."""
        p = call.params
        tool = call.tool
        self.tool(tool)
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{tool}: params must be an object")
        unknown = sorted(set(p) - PARAMS)
        if unknown:
            raise self._bad(tool, unknown[0], f"unknown parameter; known: {sorted(PARAMS)}")
        url = self._http.resolve(p.get("url"), "url")
        validators: dict[str, str | None] = {}
        for key in ("etag", "modified"):
            value = p.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > VALIDATOR_CHARS
                                      or not _VISIBLE_ASCII.match(value)):
                raise self._bad(tool, key, f"must be the {key} of an earlier fetch: printable "
                                f"ASCII, at most {VALIDATOR_CHARS} characters")
            validators[key] = value or None
        limit = p.get("limit")
        if limit is None:
            limit = self._max_items
        elif isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise self._bad(tool, "limit", "must be a whole number of items, at least 1")
        return _Fetch(url, validators["etag"], validators["modified"],
                      min(limit, self._max_items))

    def _bad(self, tool: str, field: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.name}.{tool}: params.{field}: {problem}", field=field)


def _field(source: Any, key: str) -> Any:
    """``source[key]`` of a feedparser dict, without its key aliases (``guid`` -> ``id``,
    and an ``updated`` that falls back to ``published`` with a DeprecationWarning)."""
    return dict.get(source, key) if isinstance(source, dict) else None


def _item(entry: Mapping[str, Any], base: str, redact: Redactor) -> dict[str, Any]:
    title = _text_of(entry, "title", TEXT_CHARS, redact)
    raw_link = _field(entry, "link")
    # An RSS guid is a permalink unless it says otherwise, so feedparser makes a link of
    # "1234" too: a link that is only the guid counts only when it is an absolute URL.
    from_guid = raw_link is not None and raw_link == _field(entry, "id")
    link = clean_link(raw_link, "" if from_guid else base, redact)
    published = iso_utc(_field(entry, "published_parsed"))
    summary = _summary(entry, redact)
    guid = clean_text(_field(entry, "id"), 1 << 20, redact)
    item_id = stable_id(guid) or stable_id(link) or content_hash(title, published, summary)
    return {"id": item_id, "title": title, "link": link, "published": published,
            "updated": iso_utc(_field(entry, "updated_parsed")), "summary": summary,
            "author": clean_text(_field(entry, "author"), TEXT_CHARS, redact)}


def _is_html(detail: Any) -> bool:
    kind = _field(detail, "type")
    return isinstance(kind, str) and ("html" in kind or "xml" in kind)


def _text_of(source: Mapping[str, Any], key: str, limit: int, redact: Redactor) -> str | None:
    """A text construct (a title): its HTML reduced to text when its type says HTML."""
    value = _field(source, key)
    if isinstance(value, str) and _is_html(_field(source, f"{key}_detail")):
        value = html_to_text(value, limit)
    return clean_text(value, limit, redact)


def _summary(entry: Mapping[str, Any], redact: Redactor) -> str | None:
    value, detail = _field(entry, "summary"), _field(entry, "summary_detail")
    if not isinstance(value, str) or not value.strip():
        content = _field(entry, "content")
        if isinstance(content, list) and content and isinstance(content[0], dict):
            value, detail = _field(content[0], "value"), content[0]
    if not isinstance(value, str):
        return None
    if detail is None or _is_html(detail):  # RSS descriptions are HTML
        value = html_to_text(value, SUMMARY_CHARS)
    return clean_text(value, SUMMARY_CHARS, redact, multiline=True)


def _validator(value: str | None) -> str | None:
    """An ETag or Last-Modified a script can send back: printable ASCII, bounded."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > VALIDATOR_CHARS or not _VISIBLE_ASCII.match(value):
        return None
    return value


def _quoted(body: bytes, response: httpx.Response, redact: Redactor) -> str:
    """``; Content-Type …, it starts with '…'`` for a message: inert, redacted, short."""
    kind = response.headers.get("content-type", "none")[:100]
    start = body[:ERROR_BODY_CHARS].decode("utf-8", errors="replace")
    shown, _ = redact.cut(" ".join(start.split()), 80)
    return f"; Content-Type {kind!a}, it starts with {shown!a}"


register_connector(FeedConnector)
