"""Who may talk to the API and the pages, and how a state change proves it comes from our own
page (docs/security.md#the-api).

* Bound to loopback, the server answers requests addressed to a loopback name only (the
  ``Host`` header), so a web page on another domain that re-points its name at 127.0.0.1 (DNS
  rebinding) is refused.
* With an access token (required to bind elsewhere), every request carries it: as
  ``Authorization: Bearer <token>`` (API clients), or as the session cookie that ``/login``
  sets after a person pastes the token (browsers). The cookie holds an HMAC of the token, never
  the token.
* State-changing requests are POST and carry proof that our page sent them: API requests the
  header ``X-Keepflow-Request: 1`` (a cross-site page cannot add it without a CORS preflight,
  which this server never grants), form posts a CSRF field (an HMAC keyed by a server secret,
  which a cross-site page cannot read); and a POST whose ``Origin`` is another site is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from urllib.parse import urlsplit

CSRF_HEADER = "x-keepflow-request"
SESSION_COOKIE = "keepflow_session"
FLASH_COOKIE = "keepflow_flash"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def loopback_host(header: str) -> bool:
    """Whether a ``Host`` header names loopback (with or without a port): exactly a loopback
    name, then nothing or ``:`` and a port number (never ``[::1]evil``, ``localhost:x@evil``)."""
    host, port = header.strip().lower(), ""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        host, port = name + "]", rest
    elif host.count(":") == 1:
        host, port = host.split(":")
        port = ":" + port
    return host in LOOPBACK_NAMES and (port == "" or (
        port[:1] == ":" and port[1:].isascii() and port[1:].isdigit()))


def same_origin(origin: str | None, host_header: str) -> bool:
    """A missing or ``null``-free ``Origin`` that names this server's own host:port."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.lower()


class Guard:
    """The secrets of one server: the access token (when one is required) and the key that
    signs CSRF fields, session cookies and one-time messages."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        key = token.encode() if token else os.urandom(32)
        self._key = hashlib.sha256(b"keepflow web key\0" + key).digest()

    def _mac(self, purpose: str, text: str = "") -> str:
        return hmac.new(self._key, f"{purpose}\0{text}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    @staticmethod
    def _same(given: str, expected: str) -> bool:
        """Constant-time equality of a value from the request (any text: a cookie or a form
        field may hold non-ASCII, which ``compare_digest`` refuses on ``str``) and ours."""
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())

    def authorized(self, authorization: str, cookie: str | None) -> bool:
        if self.token is None:
            return True
        if self._same(authorization, f"Bearer {self.token}"):
            return True
        return cookie is not None and self._same(cookie, self.session())

    def session(self) -> str:
        return self._mac("session")

    def login(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogatepass"), self.token.encode())

    def csrf(self) -> str:
        return self._mac("csrf")

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and self._same(given, self.csrf())

    def seal(self, text: str) -> str:
        """A one-time message to show on the next page, signed so no one else can plant it."""
        stamp = str(int(time.time()))
        body = text.encode("utf-8", "replace").hex()
        return f"{stamp}.{body}.{self._mac('flash', stamp + body)}"

    def unseal(self, value: str | None, max_age: float = 120.0) -> str | None:
        if not value or value.count(".") != 2:
            return None
        stamp, body, mac = value.split(".")
        if not self._same(mac, self._mac("flash", stamp + body)):
            return None
        try:
            if time.time() - int(stamp) > max_age:
                return None
            return bytes.fromhex(body).decode("utf-8", "replace")
        except ValueError:
            return None
