"""SMTP for the ``email`` connector (SPEC §9; docs/connectors.md#email), on ``smtplib``.

One transaction is split into the phases that decide what a failure means:

1. **connect, TLS, login, envelope** (``MAIL FROM``, every ``RCPT TO``): the server refused or
   the connection failed before the message existed for it — a definite failure, typed here
   (:class:`AuthError`, :class:`PermanentError` naming the refused recipient,
   :class:`TransientError` for 4xx, timeouts, refused connections);
2. **DATA command**: until the server's 354 arrives nothing of the message was sent (definite);
3. **transmission**: the message and its final ``CRLF.CRLF`` are written in one ``sendall``;
   if that fails, the terminator never left (definite: a server does not accept a message
   whose end it never saw);
4. **the reply**: 2xx accepted, 4xx/5xx refused (definite) — and *no reply* (the connection
   dropped, the deadline passed) is the one uncertain outcome (RFC 1047):
   :class:`NoReply` is raised and the connector decides (``email.py``).

Replies are bounded (at most :data:`MAX_REPLY_LINES` lines of ``smtplib``'s 8 KiB) and every
step runs under the time left of the call's deadline.
"""

from __future__ import annotations

import base64
import contextlib
import re
import smtplib
import socket
import ssl
from typing import Final

from keepflow.connectors.email_imap import Deadline, Endpoint
from keepflow.connectors.secret import Redactor
from keepflow.errors import AuthError, PermanentError, TransientError

MAX_REPLY_LINES: Final = 100
#: Bytes of one reply line (smtplib's own bound).
MAX_REPLY_LINE: Final = 8192
QUOTE_CHARS: Final = 200
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?\Z")


class NoReply(Exception):
    """The whole message was sent and no reply came: the outcome is unknown."""


class _Smtp(smtplib.SMTP):
    """``smtplib.SMTP`` with a bounded multi-line reply."""

    deadline: Deadline | None = None

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None:
            if self.sock is None:
                raise smtplib.SMTPServerDisconnected("not connected")
            self.file = self.sock.makefile("rb")
        lines: list[bytes] = []
        code = -1
        while True:
            try:
                line = self.file.readline(MAX_REPLY_LINE + 1)
            except OSError as exc:
                self.close()
                raise smtplib.SMTPServerDisconnected(f"connection broken: {exc}") from None
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("connection closed")
            if len(line) > MAX_REPLY_LINE or len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise smtplib.SMTPServerDisconnected("the reply is too long")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
            if self.deadline is not None and self.deadline.passed():
                self.close()
                raise smtplib.SMTPServerDisconnected("the call's deadline passed")
        return code, b"\n".join(lines)


class _SmtpTls(_Smtp, smtplib.SMTP_SSL):
    """Implicit TLS (port 465): ``smtplib.SMTP_SSL`` with the bounded reply of _Smtp."""


def helo_name() -> str:
    """The name this client gives in EHLO (the host name, without a DNS lookup)."""
    name = socket.gethostname()
    return name if _HOSTNAME.match(name) else "localhost"


def dot_stuffed(message: bytes) -> bytes:
    """``message`` as DATA content: CRLF line ends, leading dots doubled, and the final
    ``CRLF.CRLF`` (RFC 5321 §4.5.2)."""
    text = re.sub(rb"\r?\n|\r", b"\r\n", message)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    text = re.sub(rb"(?m)^\.", b"..", text)
    return text + b".\r\n"


class SmtpSession:
    """One SMTP transaction (see the module docstring). Use as a context manager."""

    def __init__(self, endpoint: Endpoint, deadline: Deadline, redact: Redactor) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self.redact = redact
        self.what = f"SMTP {endpoint.shown()}"
        self._smtp: _Smtp | None = None

    # -- phase 1 ---------------------------------------------------------------------------

    def open(self, username: str, password: str) -> None:
        ep = self.endpoint
        try:
            timeout = self._left("connecting")
            if ep.security == "ssl":
                smtp: _Smtp = _SmtpTls(ep.host, ep.port, local_hostname=helo_name(),
                                       timeout=timeout, context=ssl.create_default_context())
            else:
                smtp = _Smtp(ep.host, ep.port, local_hostname=helo_name(), timeout=timeout)
            smtp.deadline = self.deadline
            self._smtp = smtp
            self._timeout()
            smtp.ehlo()
            if ep.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise AuthError(
                        f"{self.what} does not offer STARTTLS, and smtp_security = "
                        "\"starttls\" never sends the password in clear: use the server's "
                        "TLS port with smtp_security = \"ssl\" (see docs/connectors.md#email)")
                self._timeout()
                smtp.starttls(context=ssl.create_default_context())
                self._timeout()
                smtp.ehlo()
        except ssl.SSLCertVerificationError as exc:
            raise AuthError(f"{self.what}: the server's TLS certificate was refused "
                            f"({exc.verify_message}); check smtp_host") from None
        except smtplib.SMTPConnectError as exc:
            raise TransientError(f"{self.what} refused the session ({exc.smtp_code} "
                                 f"{self._quote(exc.smtp_error)}); try again later") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"{self.what}: could not connect ({self._why(exc)}); try "
                                 "again later") from None
        self._login(username, password)

    def _login(self, username: str, password: str) -> None:
        smtp = self._require()
        if not smtp.has_extn("auth"):
            raise AuthError(f"{self.what} offers no login (AUTH) on this connection: check "
                            "smtp_port and smtp_security (docs/connectors.md#email)")
        try:
            self._timeout()
            if username.isascii() and password.isascii():
                smtp.login(username, password)
                return
            if "PLAIN" not in smtp.esmtp_features.get("auth", "").upper().split():
                raise AuthError(f"{self.what} does not offer AUTH PLAIN, which a non-ASCII "
                                "username or password needs")
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
            code, reply = smtp.docmd("AUTH", "PLAIN " + token)
            if code != 235:
                raise smtplib.SMTPAuthenticationError(code, reply)
        except smtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.smtp_code < 500:
                raise TransientError(f"{self.what} cannot log in now ({exc.smtp_code} "
                                     f"{self._quote(exc.smtp_error)}); try again later"
                                     ) from None
            raise AuthError(f"{self.what} refused the login of '{username}' "
                            f"({exc.smtp_code} {self._quote(exc.smtp_error)}): check the "
                            "username and the password (docs/connectors.md#email)") from None
        except smtplib.SMTPNotSupportedError:
            raise AuthError(f"{self.what} offers no login mechanism smtplib supports") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"{self.what}: the connection broke while logging in "
                                 f"({self._why(exc)})") from None

    def envelope(self, sender: str, recipients: list[str], size: int) -> None:
        """MAIL FROM and every RCPT TO; any refusal resets the transaction and raises."""
        smtp = self._require()
        options = [f"SIZE={size}"] if smtp.has_extn("size") else []
        limit = smtp.esmtp_features.get("size", "")
        if limit.isdigit() and 0 < int(limit) < size:
            raise PermanentError(f"{self.what} accepts messages of at most {limit} bytes; "
                                 f"this one has {size}", size=size)
        try:
            self._timeout()
            code, reply = smtp.mail(sender, options)
            if code != 250:
                self._reset()
                raise self._refused(code, reply, f"the sender <{sender}>", "from")
            for rcpt in recipients:
                self._timeout()
                code, reply = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    self._reset()
                    raise self._refused(code, reply, f"the recipient <{rcpt}>", "to",
                                        recipient=rcpt)
        except smtplib.SMTPException as exc:
            if isinstance(exc, smtplib.SMTPResponseException) and \
                    not isinstance(exc, smtplib.SMTPServerDisconnected):
                raise self._refused(exc.smtp_code, exc.smtp_error, "the envelope", "to"
                                    ) from None
            raise TransientError(f"{self.what}: the connection broke before the message "
                                 f"was sent ({self._why(exc)}); nothing was sent") from None
        except OSError as exc:
            raise TransientError(f"{self.what}: the connection broke before the message "
                                 f"was sent ({self._why(exc)}); nothing was sent") from None

    # -- phases 2 to 4 ---------------------------------------------------------------------

    def data(self, message: bytes) -> bytes:
        """DATA, the message, and the server's answer: its text when accepted. A definite
        refusal raises a typed error; no answer after the whole message raises NoReply."""
        smtp = self._require()
        try:
            self._timeout()
            code, reply = smtp.docmd("DATA")
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"{self.what}: the connection broke before the message was "
                                 f"sent ({self._why(exc)}); nothing was sent") from None
        if code != 354:
            self._reset()
            raise self._refused(code, reply, "the message", "to")
        content = dot_stuffed(message)
        try:
            self._timeout()
            smtp.send(content)  # one sendall: if it fails, the final CRLF.CRLF never left
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"{self.what}: the connection broke while the message was "
                                 f"sent, before its end ({self._why(exc)}); the server "
                                 "cannot have accepted it") from None
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(max(self.deadline.left(), 0.001))
            code, reply = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise NoReply(self._why(exc)) from None
        if code == -1:
            raise NoReply(f"a malformed reply {self._quote(reply)}")
        if not 200 <= code < 300:
            raise self._refused(code, reply, "the message", "to")
        return reply

    def close(self) -> None:
        smtp = self._smtp
        self._smtp = None
        if smtp is None:
            return
        with contextlib.suppress(Exception):
            if smtp.sock is not None:
                smtp.sock.settimeout(min(max(self.deadline.left(), 0.2), 2.0))
                smtp.quit()
        with contextlib.suppress(Exception):
            smtp.close()

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _require(self) -> _Smtp:
        if self._smtp is None:
            raise TransientError(f"{self.what}: not connected")
        return self._smtp

    def _left(self, doing: str) -> float:
        left = self.deadline.left()
        if left <= 0:
            raise TransientError(f"{self.what}: the call's deadline passed before {doing}; "
                                 "nothing was sent")
        return left

    def _timeout(self) -> None:
        smtp = self._require()
        left = self._left("the next step")
        if smtp.sock is not None:
            smtp.sock.settimeout(left)

    def _reset(self) -> None:
        with contextlib.suppress(Exception):
            self._timeout()
            self._require().rset()

    def _refused(self, code: int, reply: bytes | str, what: str, field: str, *,
                 recipient: str | None = None) -> PermanentError | TransientError | AuthError:
        """A definite refusal (nothing was accepted) as its typed error."""
        said = f"{code} {self._quote(reply)}"
        if code in (530, 534, 535, 538):
            return AuthError(f"{self.what} refused {what}: {said} — log in again with valid "
                             "credentials (docs/connectors.md#email)", smtp_code=code,
                             recipient=recipient)
        if 400 <= code < 500 or code < 0:
            return TransientError(f"{self.what} refused {what} for now: {said}; nothing was "
                                  "sent, it is tried again later", smtp_code=code,
                                  recipient=recipient)
        if recipient is not None:
            return PermanentError(f"{self.what} refused {what}: {said}; nothing was sent "
                                  "(fix or remove this address)", field=field, smtp_code=code,
                                  recipient=recipient)
        return PermanentError(f"{self.what} refused {what}: {said}; nothing was sent",
                              smtp_code=code)

    def _quote(self, reply: bytes | str) -> str:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        text = " ".join(text.split())[:QUOTE_CHARS]
        return repr(self.redact.text(text))

    def _why(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())[:QUOTE_CHARS] or type(exc).__name__
        return self.redact.text(text)
