"""Reading a response body a hostile server controls: bounded while it is decoded, and
turned into text without ever failing (docs/connectors.md#http-response-bodies).

Two traps this module closes:

* **Decompression bombs.** 1.8 KB sent with ``Content-Encoding: gzip, gzip`` inflates to
  gigabytes. httpx decodes each raw chunk completely before the caller sees a byte, so a
  cap applied afterwards comes too late. Here the raw bytes are inflated layer by layer
  with ``zlib``'s ``max_length``, pulling from the layer above only what the layer below
  needs, and stop at :data:`MAX_BODY_BYTES` of output. Only ``gzip`` and ``deflate`` can
  be bounded like this (we ask for nothing else: :data:`ACCEPT_ENCODING`); a body in any
  other coding, or in more than :data:`MAX_CODINGS` layers, is returned as it arrived.
* **Charsets that are not charsets.** ``charset=rot13`` (or ``hex``, ``zlib``, ``base64``,
  ``idna``, ``punycode``) names a Python codec that raises, transforms, or takes quadratic
  time on bytes. :func:`decode_text` uses only real text encodings and falls back to UTF-8
  with replacement characters: it never raises.

The caller's deadline (:func:`~keepflow.connectors.http_transport.deadline_in`) is checked
between chunks, so a body that trickles in ends with the call as far as it got.
"""

from __future__ import annotations

import codecs
import zlib
from typing import Final

import httpx

from keepflow.connectors.http_transport import deadline_passed

#: Bytes of a (decoded) response body read at most; the rest is not downloaded.
MAX_BODY_BYTES: Final = 2 * 1024 * 1024
#: Raw bytes read at most (a compressed body is smaller than its content, so this is only
#: reached by a body that decodes to almost nothing, e.g. endless empty gzip members).
MAX_RAW_BYTES: Final = 2 * MAX_BODY_BYTES
#: Content codings undone at most; a body in more layers is returned as it arrived.
MAX_CODINGS: Final = 2
#: Bytes one inner layer may produce at most (its output is the next layer's compressed
#: input, so a real body never comes close).
MAX_LAYER_BYTES: Final = 4 * MAX_BODY_BYTES
#: gzip members per layer at most (RFC 1952 allows several; a bomb sends millions).
MAX_MEMBERS: Final = 64
#: What we ask servers to send: only codings this module can bound.
ACCEPT_ENCODING: Final = "gzip, deflate"

_STEP: Final = 64 * 1024
_GZIP: Final = frozenset({"gzip", "x-gzip"})
_CODINGS: Final = _GZIP | {"deflate"}
#: Text codecs that are not charsets: they reinterpret the text (escapes) or take time
#: quadratic in the body's length (punycode; idna decodes label by label with punycode).
_NOT_CHARSETS: Final = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape",
                                  "undefined"})
_MAX_CHARSET_NAME: Final = 40


class _Inflate:
    """One ``gzip`` or ``deflate`` layer; :meth:`take` returns at most ``n`` bytes."""

    def __init__(self, coding: str) -> None:
        self._gzip = coding in _GZIP
        self._z: zlib._Decompress | None = None
        self._tail = b""  # input not yet consumed
        self._members = 0
        self.done = False
        self.capped = False  # stopped at MAX_MEMBERS: the rest of the body was dropped
        self.produced = 0

    def feed(self, data: bytes) -> None:
        if not self.done:
            self._tail += data

    def take(self, n: int) -> bytes:
        """Up to ``n`` inflated bytes; ``b""`` when more input is needed (or the end)."""
        while not self.done:
            if self._z is None and not self._start():
                return b""
            assert self._z is not None
            out = self._z.decompress(self._tail, n)
            self._tail = self._z.unconsumed_tail
            if self._z.eof:
                self._next_member(self._z.unused_data)
            if out:
                self.produced += len(out)
                return out
            if self._z is not None:
                return b""  # everything fed so far is consumed
        return b""

    def _next_member(self, rest: bytes) -> None:
        """RFC 1952: another gzip member may follow (:meth:`_start` looks); a deflate stream
        is over."""
        self._z = None
        self._tail = rest
        if not self._gzip:
            self._tail = b""
            self.done = True

    def _start(self) -> bool:
        if self._gzip:
            if not self._tail or (self._members and len(self._tail) < 2):
                return False  # wait for more input
            if self._members and not self._tail.startswith(b"\x1f\x8b"):
                self._tail, self.done = b"", True  # not another member: ignored
                return False
            if self._members >= MAX_MEMBERS:
                self._tail, self.done, self.capped = b"", True, True
                return False
            self._members += 1
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
            return True
        if len(self._tail) < 2:
            return False
        # "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2); some servers send it raw.
        first, second = self._tail[0], self._tail[1]
        wrapped = first & 0x0F == 8 and (first << 8 | second) % 31 == 0
        self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        self._members += 1
        return True


class _Decoder:
    """The layers of one body, outermost first; an empty list passes bytes through."""

    def __init__(self, codings: list[str]) -> None:
        self._layers = [_Inflate(c) for c in codings]
        self._plain = b""
        self.overflowed = False  # an inner layer produced more than any real body would

    @property
    def finished(self) -> bool:
        """Nothing more can come out (asked after :meth:`take` returned ``b""``)."""
        return any(layer.done for layer in self._layers)

    @property
    def cut(self) -> bool:
        """Decoding stopped at a bound before the body's end."""
        return self.overflowed or any(layer.capped for layer in self._layers)

    def feed(self, raw: bytes) -> None:
        if self._layers:
            self._layers[0].feed(raw)
        else:
            self._plain += raw

    def take(self, n: int) -> bytes:
        """At most ``n`` decoded bytes from what was fed so far (``b""``: need more)."""
        if not self._layers:
            out, self._plain = self._plain[:n], self._plain[n:]
            return out
        return self._pull(len(self._layers) - 1, n)

    def _pull(self, i: int, n: int) -> bytes:
        layer = self._layers[i]
        while True:
            out = layer.take(n)
            if out or layer.done or i == 0:
                return out
            if deadline_passed():
                return b""
            upper = self._layers[i - 1]
            if upper.produced > MAX_LAYER_BYTES:
                self.overflowed = True
                return b""
            more = self._pull(i - 1, _STEP)
            if not more:
                return b""
            layer.feed(more)


def content_codings(headers: httpx.Headers) -> list[str] | None:
    """The codings to undo, outermost first; ``None`` when they cannot all be bounded."""
    listed = [c.strip().lower() for value in headers.get_list("content-encoding")
              for c in value.split(",")]
    codings = [c for c in listed if c and c != "identity"]
    if len(codings) > MAX_CODINGS or any(c not in _CODINGS for c in codings):
        return None
    return codings[::-1]


def read_body(response: httpx.Response) -> tuple[bytes, bool]:
    """Read and decode at most :data:`MAX_BODY_BYTES`; returns (body, truncated).

    A body that breaks off, cannot be decoded further, or is still arriving when the call's
    deadline passes is returned as far as it got and marked truncated: the status already
    tells whether the request took effect.
    """
    codings = content_codings(response.headers)
    decoder = _Decoder(codings if codings is not None else [])
    out = bytearray()
    raw = 0
    try:
        for chunk in response.iter_raw():
            raw += len(chunk)
            decoder.feed(chunk)
            while piece := decoder.take(MAX_BODY_BYTES + 1 - len(out)):
                out += piece
                if len(out) > MAX_BODY_BYTES:
                    return bytes(out[:MAX_BODY_BYTES]), True
            if raw > MAX_RAW_BYTES or decoder.cut or deadline_passed():
                return bytes(out), True
            if decoder.finished:  # the coded content ended; whatever follows is ignored
                break
    except (httpx.HTTPError, zlib.error):
        return bytes(out), True
    return bytes(out), False


def charset_of(content_type: str) -> str | None:
    """The ``charset`` parameter of a ``Content-Type`` value, if any."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def text_codec(charset: str | None) -> str:
    """The codec to decode a body with: the charset if it names a real text encoding,
    else UTF-8."""
    if not charset or len(charset) > _MAX_CHARSET_NAME or not charset.isascii():
        return "utf-8"
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError, TypeError):
        return "utf-8"
    # rot13, hex, base64, zlib, … are bytes-to-bytes transforms, not text encodings.
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return "utf-8"
    return info.name


def decode_text(body: bytes, content_type: str) -> str:
    """``body`` as text in its declared charset; never raises (unknown, non-text or broken
    charsets give UTF-8 with U+FFFD for what does not decode)."""
    try:
        return body.decode(text_codec(charset_of(content_type)), errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return body.decode("utf-8", errors="replace")
