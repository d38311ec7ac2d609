"""Real mail servers on loopback for the ``email`` connector's tests.

* :class:`Dovecot` — Debian's ``/usr/sbin/dovecot`` with a generated configuration: IMAP only,
  on 127.0.0.1 and a free port, no TLS, cleartext logins allowed (loopback), users in a
  static passdb (one password for every login: a test's new address is a new, empty
  mailbox, so each test gets its own), Maildir storage. Its mail processes run as the
  ``dovecot`` user (dovecot refuses root), so its directory is a fresh
  ``/tmp/kf-dovecot-*`` (pytest's ``tmp_path`` lies under a directory only root may enter),
  removed at :meth:`Dovecot.stop`.
* :class:`SmtpFront` — an ``aiosmtpd`` server with AUTH that delivers every accepted message
  into the recipients' dovecot INBOX (IMAP APPEND) and records each delivery (the external
  system's own record, which the tests compare with keepflow's ledger). Its ``plan`` is a
  queue of behaviours, one per transaction that reaches DATA: ``ok``; ``temp_451`` (the
  message refused with 451 after its end); ``drop_before_accept`` (the connection closed at
  the DATA command, before anything of the message was sent); ``drop_after_data`` (the whole
  message read, then the connection closed without a reply and without delivering);
  ``accept_then_drop`` (delivered, then the connection closed without the 250);
  ``accept_then_kill`` (delivered, then SIGKILL of ``kill_pid``, before the 250). Recipients
  in ``refuse`` get ``550`` at RCPT.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DOVECOT = "/usr/sbin/dovecot"
BEHAVIOURS = frozenset({"ok", "temp_451", "drop_before_accept", "drop_after_data",
                        "accept_then_drop", "accept_then_kill"})


def dovecot_or_skip() -> Dovecot:
    """A started :class:`Dovecot`; without dovecot the test is skipped, except under
    ``CI=true``, where it fails."""
    import pytest

    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if dovecot_version() is None:
        if in_ci:
            pytest.fail(f"dovecot is required in CI ({DOVECOT} is missing)")
        pytest.skip(f"dovecot is not installed ({DOVECOT}); the email tests run in CI")
    try:
        return Dovecot().start()
    except RuntimeError as exc:
        if in_ci:
            pytest.fail(f"dovecot could not be started: {exc}")
        pytest.skip(f"dovecot could not be started here: {exc}")


def write_tls_files(root: Path) -> None:
    """``ca.pem`` (a throwaway CA) and ``cert.pem`` / ``key.pem`` (a server certificate it
    signed, for ``localhost`` and 127.0.0.1) in ``root``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keepflow test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (root / "key.pem").chmod(0o600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dovecot_version() -> tuple[int, ...] | None:
    """The installed dovecot's version, or None when there is none."""
    if not os.path.exists(DOVECOT):
        return None
    try:
        out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", out.strip())
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


_CONF_23 = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
# no growing delay after failed logins (tests of refused passwords fail them on purpose)
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
"""

_CONF_24 = """\
dovecot_config_version = {version}
dovecot_storage_version = {version}
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = yes
ssl_server_cert_file = {root}/cert.pem
ssl_server_key_file = {root}/key.pem
auth_allow_cleartext = yes
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_driver = maildir
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
mail_path = {root}/mail/%{{user}}
mail_home = {root}/mail/%{{user}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
passdb static {{
  password = {password}
}}
userdb static {{
  fields {{
    uid = dovecot
    gid = dovecot
    home = {root}/mail/%{{user}}
  }}
}}
"""


class Dovecot:
    """One dovecot for a test session (see the module docstring)."""

    def __init__(self) -> None:
        self.version = dovecot_version()
        if self.version is None:
            raise RuntimeError(f"dovecot is not installed ({DOVECOT})")
        self.root = Path(tempfile.mkdtemp(prefix="kf-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        #: Implicit TLS (``imap_security = "ssl"``); the plain port offers STARTTLS. The
        #: certificate is for ``localhost`` and 127.0.0.1, signed by the CA in ``ca_file``.
        self.imaps_port = free_port()
        self.ca_file = self.root / "ca.pem"
        #: Every login shares this password (a static passdb: mailboxes appear on first use).
        self.password = f"pw-{secrets.token_hex(8)}"
        self.users: dict[str, str] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._n = 0

    def start(self) -> Dovecot:
        (self.root / "mail").mkdir()
        shutil.chown(self.root / "mail", "dovecot", "dovecot")
        write_tls_files(self.root)
        conf = self.root / "dovecot.conf"
        template = _CONF_23 if self.version < (2, 4) else _CONF_24
        version = ".".join(str(x) for x in (*self.version, 0, 0)[:3])
        conf.write_text(template.format(root=self.root, port=self.port, version=version,
                                        imaps_port=self.imaps_port, password=self.password),
                        encoding="utf-8")
        self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self._log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on port {self.port}: {self._log()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    # -- users and mailboxes ---------------------------------------------------------------

    def add_user(self, local: str = "user", domain: str = "example.com") -> str:
        """A new, empty mailbox ``<local><n>@<domain>``; its address (its login name)."""
        with self._lock:
            self._n += 1
            address = f"{local}{self._n}@{domain}"
            self.users[address] = self.password
        return address

    @contextlib.contextmanager
    def imap(self, user: str) -> Any:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def create_folder(self, user: str, folder: str) -> None:
        with self.imap(user) as conn:
            typ, data = conn.create(f'"{folder}"')
            assert typ == "OK" or b"exists" in b" ".join(data), data

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        with self.imap(user) as conn:
            typ, data = conn.append(f'"{folder}"', flags or None, None, raw)
            assert typ == "OK", data

    def messages(self, user: str, folder: str = "INBOX") -> list[tuple[int, set[str], bytes]]:
        """(uid, flags, bytes) of every message of ``folder``, read without changing flags."""
        with self.imap(user) as conn:
            typ, _ = conn.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return []
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        out = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head = item[0].decode()
            uid = int(re.search(r"UID (\d+)", head).group(1))  # type: ignore[union-attr]
            flags = set(re.search(r"FLAGS \(([^)]*)\)", head).group(1).split())  # type: ignore[union-attr]
            out.append((uid, flags, item[1]))
        return sorted(out)

    def flags(self, user: str, folder: str = "INBOX") -> list[set[str]]:
        return [f for _, f, _ in self.messages(user, folder)]


# -- SMTP ------------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One message the SMTP server accepted (delivered before its reply, as a real server
    takes responsibility for it)."""

    message_id: str | None
    subject: str | None
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float


@dataclass
class SmtpFront:
    dovecot: Dovecot
    #: Logins the server accepts (login -> password); by default every dovecot user.
    logins: dict[str, str] | None = None
    plan: deque[str] = field(default_factory=deque)
    refuse: set[str] = field(default_factory=set)
    deliveries: list[Delivery] = field(default_factory=list)
    #: Every command the server received, in order (``EHLO``, ``AUTH``, ``MAIL``, ...).
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    kill_pid: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    #: ``"starttls"``: STARTTLS offered (not required); ``"implicit"``: TLS from the first
    #: byte; None: plain. The certificate is dovecot's (see :attr:`Dovecot.ca_file`).
    tls: str | None = None
    _controller: Controller | None = None

    def set_plan(self, *behaviours: str) -> None:
        for b in behaviours:
            assert b in BEHAVIOURS, b
        with self.lock:
            self.plan = deque(behaviours)

    def delivered(self, message_id: str) -> int:
        """How many times the message with this Message-ID was accepted."""
        with self.lock:
            return sum(1 for d in self.deliveries if d.message_id == message_id)

    def start(self) -> SmtpFront:
        logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # aiosmtpd: drops are ours
        front = self
        self.port = free_port()

        class Server(SMTP):
            def connection_made(self, transport: Any) -> None:
                with front.lock:
                    front.connections += 1
                super().connection_made(transport)

            async def smtp_DATA(self, arg: str) -> None:
                with front.lock:
                    behaviour = front.plan.popleft() if front.plan else "ok"
                if self.envelope is not None:
                    self.envelope.behaviour = behaviour  # type: ignore[attr-defined]
                if behaviour == "drop_before_accept" and self.transport is not None:
                    self.transport.abort()
                    return
                await super().smtp_DATA(arg)

        class Handler:
            async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                                  hostname: str, responses: list[str]) -> list[str]:
                front._log("EHLO")
                session.host_name = hostname
                return responses

            async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                                  address: str, options: list[str]) -> str:
                front._log("MAIL")
                envelope.mail_from = address
                envelope.mail_options.extend(options)
                return "250 OK"

            async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                                  address: str, options: list[str]) -> str:
                front._log("RCPT")
                if address.lower() in {r.lower() for r in front.refuse}:
                    return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                front._log("DATA")
                behaviour = getattr(envelope, "behaviour", "ok")
                if behaviour == "temp_451":
                    return "451 4.3.0 Temporary failure, try again later"
                if behaviour == "drop_after_data":
                    if server.transport is not None:
                        server.transport.abort()
                    return "250 never sent"
                front._deliver(envelope)
                if behaviour in ("accept_then_drop", "accept_then_kill"):
                    if behaviour == "accept_then_kill" and front.kill_pid:
                        os.kill(front.kill_pid, signal.SIGKILL)
                    if server.transport is not None:
                        server.transport.abort()
                return "250 2.0.0 Ok: queued"

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                         auth_data: Any) -> AuthResult:
            front._log("AUTH")
            if not isinstance(auth_data, LoginPassword):
                return AuthResult(success=False, handled=False)
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            known = front.logins if front.logins is not None else front.dovecot.users
            return AuthResult(success=known.get(login) == password, handled=False)

        class Front(Controller):
            def factory(self) -> SMTP:
                with warnings.catch_warnings():  # AUTH without TLS: on loopback, on purpose
                    warnings.simplefilter("ignore")
                    return Server(self.handler, **self.SMTP_kwargs)

        context = None
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.dovecot.root / "cert.pem", self.dovecot.root / "key.pem")
        tls: dict[str, Any] = ({"tls_context": context, "require_starttls": False}
                               if self.tls == "starttls" else
                               {"ssl_context": context} if self.tls == "implicit" else {})
        self._controller = Front(Handler(), hostname="127.0.0.1", port=self.port,
                                 authenticator=authenticate, auth_required=True,
                                 auth_require_tls=False, **tls)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _log(self, command: str) -> None:
        with self.lock:
            self.commands.append(command)

    def _deliver(self, envelope: Envelope) -> None:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        delivery = Delivery(str(msg.get("message-id") or "") or None,
                            str(msg.get("subject") or "") or None, envelope.mail_from or "",
                            list(envelope.rcpt_tos), raw, time.time())
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.dovecot.users:
                self.dovecot.deliver(rcpt, raw)
        with self.lock:
            self.deliveries.append(delivery)
