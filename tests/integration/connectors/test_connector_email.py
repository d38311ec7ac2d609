"""The ``email`` connector against a real dovecot (IMAP) and a real SMTP server (aiosmtpd)
that delivers into it (SPEC §9; docs/connectors.md#email): search with a UID cursor that
never marks anything read, read, send through SMTP → dovecot with its Sent copy, every
reconcile verdict (accepted then dropped, dropped before the message, the copy still marked
sending), the failure classes, bad input refused before any SMTP traffic, and hostile
messages in the mailbox. The last tests run a consumer that sends one email per event through
``keepflow.service`` on SQLite and PostgreSQL: one delivery per event, reconcile after a
dropped connection, the person's question, Reconnect after a refused password, 451 backoff."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall
from keepflow.connectors.config import Connections, parse_connections
from keepflow.connectors.email import EmailConnector
from keepflow.connectors.email_message import message_id_for
from keepflow.connectors.registry import get_connector_class
from keepflow.connectors.secret import Secret
from keepflow.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import RunStatus
from keepflow.policies import Policy, PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.mail_servers import Dovecot, SmtpFront, dovecot_or_skip
from tests.support.workflows import consumer_js, deploy_source, quick_policy, run_detail

pytestmark = pytest.mark.integration

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    d = dovecot_or_skip()
    yield d
    d.stop()


@dataclass
class World:
    """One test's mailboxes: alice sends (her Sent folder exists), bob receives."""

    dovecot: Dovecot
    smtp: SmtpFront
    alice: str
    bob: str

    def settings(self, **over: Any) -> dict[str, Any]:
        d = self.dovecot
        return {"smtp_host": "127.0.0.1", "smtp_port": self.smtp.port, "smtp_security": "none",
                "imap_host": "127.0.0.1", "imap_port": d.port, "imap_security": "none",
                "username": self.alice, "password": Secret(d.users[self.alice], "MAIL_PW"),
                "from": f"Alice <{self.alice}>", **over}

    def connector(self, **over: Any) -> EmailConnector:
        return EmailConnector(ConnectionConfig("mail", "email", self.settings(**over)))

    def reader(self, user: str) -> EmailConnector:
        return self.connector(username=user, password=Secret(self.dovecot.users[user], "PW"),
                              **{"from": user})


@pytest.fixture
def world(dovecot: Dovecot) -> Iterator[World]:
    alice, bob = dovecot.add_user("alice"), dovecot.add_user("bob")
    dovecot.create_folder(alice, "Sent")
    smtp = SmtpFront(dovecot).start()
    yield World(dovecot, smtp, alice, bob)
    smtp.stop()


def send_call(to: Any, key: str = "kf-wf-run-1", **params: Any) -> ToolCall:
    return ToolCall("send", {"to": to, "subject": "Invoice 7", "text": "Hello\nBob", **params},
                    timeout=10, idempotency_key=key)


def tc(tool: str, **params: Any) -> ToolCall:
    return ToolCall(tool, params, timeout=10)


def message(subject: str, body: str = "body", *, sender: str = "Carol <carol@example.org>",
            extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: alice@example.com\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\nMessage-ID: <{subject.replace(' ', '.')}"
            f"@example.org>\r\n{extra}\r\n{body}\r\n").encode()


def assert_clean(value: Any) -> None:
    """Every string of a result is storable and inert."""
    if isinstance(value, str):
        assert not CONTROL.search(value), repr(value[:200])
    elif isinstance(value, dict):
        for v in value.values():
            assert_clean(v)
    elif isinstance(value, list):
        for v in value:
            assert_clean(v)


# -- settings ----------------------------------------------------------------------------------


def test_settings_are_validated_naming_the_key(world: World) -> None:
    get_connector_class("email").validate_settings(world.settings())
    for over, key in ((dict(imap_host="imap.example.com"), "imap_security"),
                      (dict(smtp_security="tls"), "smtp_security"),
                      (dict(password="in the file"), "password"),
                      (dict(**{"from": "not an address"}), "from"),
                      (dict(allow_domains=["exa mple.com"]), "allow_domains"),
                      (dict(max_recipients=0), "max_recipients"),
                      (dict(smtp_port=70000), "smtp_port"),
                      (dict(tls="yes"), "tls")):
        with pytest.raises(ConfigError) as err:
            EmailConnector.validate_settings(world.settings(**over))
        assert err.value.details["key"] == key, (over, err.value.message)
        assert world.dovecot.users[world.alice] not in err.value.message
    doc = {"connections": {"mail": {
        "type": "email", "smtp_host": "smtp.example.com", "imap_host": "imap.example.com",
        "username": "alice", "password_env": "MAIL_PW", "from": "alice@example.com"}}}
    [_, cfg] = parse_connections(doc, environ={"MAIL_PW": "s3cret"})
    assert isinstance(cfg.settings["password"], Secret)
    EmailConnector(cfg)  # starttls on 587 / 143 by default: nothing is contacted yet


# -- reads -------------------------------------------------------------------------------------


def test_search_with_a_uid_cursor_returns_only_newer_mail_and_marks_nothing_seen(
        world: World) -> None:
    d = world.dovecot
    for i in range(3):
        d.deliver(world.alice, message(f"Old {i}", f"old body {i}"))
    mail = world.connector()
    first = mail.call(tc("search"))
    assert [m["subject"] for m in first["messages"]] == ["Old 0", "Old 1", "Old 2"]
    m0 = first["messages"][0]
    assert m0["from"] == "Carol <carol@example.org>"
    assert m0["to"] == ["alice@example.com"]
    assert m0["date"] == "2026-12-01T09:00:00Z"
    assert m0["snippet"] == "old body 0"
    assert m0["message_id"] == "<Old.0@example.org>"
    assert m0["id"] == f"INBOX:{first['uidvalidity']}:{m0['uid']}"
    assert first["next_uid"] == first["messages"][-1]["uid"] + 1
    assert first["more"] is False
    assert mail.call(tc("search", since_uid=first["next_uid"]))["messages"] == []
    d.deliver(world.alice, message("New one", "fresh"))
    d.deliver(world.alice, message("Other", "not this", sender="dave@example.net"))
    second = mail.call(tc("search", since_uid=first["next_uid"]))
    assert [m["subject"] for m in second["messages"]] == ["New one", "Other"]
    filtered = mail.call(tc("search", since_uid=first["next_uid"], **{"from": "carol"}))
    assert [m["subject"] for m in filtered["messages"]] == ["New one"]
    assert filtered["next_uid"] == second["next_uid"]  # the cursor passes what did not match
    paged = mail.call(tc("search", limit=2))
    assert [m["subject"] for m in paged["messages"]] == ["Old 0", "Old 1"]
    assert paged["more"]
    rest = mail.call(tc("search", since_uid=paged["next_uid"], limit=2))
    assert [m["subject"] for m in rest["messages"]] == ["Old 2", "New one"]
    mail.call(tc("read", id=m0["id"]))
    assert all("\\Seen" not in f for f in d.flags(world.alice))  # EXAMINE + BODY.PEEK


def test_search_filters_with_non_ascii_text(world: World) -> None:
    d = world.dovecot
    d.deliver(world.alice, message("=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Köln"))
    d.deliver(world.alice, message("Plain"))
    got = world.connector().call(tc("search", subject="Grüße", **{"from": "carol"}))
    assert [m["subject"] for m in got["messages"]] == ["Grüße aus Köln"]


def test_read_returns_text_html_and_attachments(world: World) -> None:
    raw = textwrap.dedent("""\
        From: =?utf-8?q?Z=C3=B6e?= <zoe@example.org>
        To: Alice <alice@example.com>, bob@example.com
        Cc: carol@example.org
        Subject: Report
        Date: Wed, 02 Dec 2026 08:00:00 -0500
        Message-ID: <report-1@example.org>
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="outer"

        --outer
        Content-Type: multipart/alternative; boundary="alt"

        --alt
        Content-Type: text/plain; charset=iso-8859-1
        Content-Transfer-Encoding: quoted-printable

        Gr=FC=DFe,
        the report is attached.
        --alt
        Content-Type: text/html; charset=utf-8

        <p>Gr\u00fc\u00dfe,</p><script>alert(1)</script>
        --alt--
        --outer
        Content-Type: application/pdf; name="report.pdf"
        Content-Disposition: attachment; filename="report.pdf"
        Content-Transfer-Encoding: base64

        JVBERi0xLjQKJcfsj6IK
        --outer--
        """).replace("\n", "\r\n").encode()
    world.dovecot.deliver(world.alice, raw)
    mail = world.connector()
    [found] = mail.call(tc("search"))["messages"]
    assert found["snippet"] == "Grüße, the report is attached."
    got = mail.call(tc("read", id=found["id"]))
    assert got["from"] == "Zöe <zoe@example.org>"
    assert got["to"] == ["Alice <alice@example.com>", "bob@example.com"]
    assert got["cc"] == ["carol@example.org"]
    assert got["date"] == "2026-12-02T13:00:00Z"
    assert got["text"] == "Grüße,\nthe report is attached."
    assert got["html"] == "<p>Grüße,</p><script>alert(1)</script>"  # text, never rendered
    assert got["attachments"] == [{"filename": "report.pdf",
                                   "content_type": "application/pdf", "size": 15}]
    assert got["truncated"] is False
    with pytest.raises(PreconditionError, match="no message"):
        mail.call(tc("read", id=found["id"].rsplit(":", 1)[0] + ":999"))
    with pytest.raises(PreconditionError, match="renumbered"):
        mail.call(tc("read", id="INBOX:1:1"))
    with pytest.raises(PreconditionError, match="no folder 'Nope'"):
        mail.call(tc("search", folder="Nope"))


def test_hostile_messages_come_back_cleaned_and_bounded(world: World) -> None:
    d, alice = world.dovecot, world.alice
    password = d.users[alice]
    nested = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                      for i in range(2000)) + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    siblings = (b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n'
                + b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n" * 20000 + b"--x--")
    hostile = {
        "huge": message("Huge", "A" * (6 * 1024 * 1024)),
        "controls": message("Bell\x07 \x1b[31mred\x1b[0m \u202egnp.exe", "line\x00one\x0b\u0085"
                            "two " + password),
        "charsets": message("=?x-unknown?q?abc?= =?utf-8?b?////?= =?rot13?q?nop?=", "\xff\xfe",
                            extra="Content-Type: text/plain; charset=punycode\r\n"),
        "bad-mime": message("No end", "--zz\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!",
                            extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; '
                                  'boundary="zz"\r\n'),
        "nested": b"From: a@example.org\r\nSubject: Nested\r\nMIME-Version: 1.0\r\n" + nested,
        "siblings": b"From: a@example.org\r\nSubject: Siblings\r\nMIME-Version: 1.0\r\n"
                    + siblings,
        "header-bomb": b"From: " + b"(" * 3000 + b"\r\nTo: " + b"x@y.example, " * 50000
                       + b"\r\nSubject: " + b"=?utf-8?q?a?= " * 100000 + b"\r\n\r\nbomb",
    }
    for raw in hostile.values():
        d.deliver(alice, raw)
    mail = world.connector()
    t0 = time.monotonic()
    found = mail.call(tc("search"))
    assert len(found["messages"]) == len(hostile)
    assert_clean(found)
    by_subject = {m["subject"]: m for m in found["messages"]}
    assert "Bell [31mred[0m gnp.exe" in by_subject
    for m in found["messages"]:
        assert m["snippet"] is None or len(m["snippet"]) <= 300
        assert m["subject"] is None or len(m["subject"]) <= 1000
        assert len(m["to"]) <= 100
        got = mail.call(tc("read", id=m["id"]))
        assert_clean(got)
        assert password not in json.dumps(got)  # a secret echoed in a message is masked
        assert got["text"] is None or len(got["text"]) <= 100_000
        assert len(got["attachments"]) <= 100
        if got["subject"] in ("Huge", "Nested", "Siblings"):
            assert got["truncated"] is True, got["subject"]
    assert time.monotonic() - t0 < 20


class HostileImap:
    """A scripted IMAP server on loopback: a normal login and EXAMINE, then the answers a
    test gives to UID SEARCH and UID FETCH (``{tag}`` is replaced by the command's tag)."""

    def __init__(self, search: bytes = b"* SEARCH 1\r\n", fetch: bytes = b"",
                 select: bytes = b"* 1 EXISTS\r\n* OK [UIDVALIDITY 5] ok\r\n"
                                 b"* OK [UIDNEXT 2] ok\r\n") -> None:
        self.answers = {b"SEARCH": search, b"FETCH": fetch, b"EXAMINE": select,
                        b"SELECT": select}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hostile\r\n")
                for line in lines:
                    tag, _, rest = line.partition(b" ")
                    words = rest.upper().split()
                    verb = words[1] if words[:1] == [b"UID"] else words[0]
                    if verb == b"LOGOUT":
                        conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                        return
                    if verb == b"CAPABILITY":
                        conn.sendall(b"* CAPABILITY IMAP4rev1\r\n")
                    conn.sendall(self.answers.get(verb, b"").replace(b"{tag}", tag))
                    conn.sendall(tag + b" OK done\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("case", "server", "match"), [
    ("literal larger than asked", dict(fetch=b"* 1 FETCH (UID 1 BODY[]<0> {99999999}\r\n"),
     "announced 99999999 bytes"),
    ("malformed FETCH", dict(fetch=b"* 1 FETCH (UID 1 BODY[]<0> \"never ends)\r\n"),
     "FETCH answer is malformed"),
    ("a UID that is no number", dict(fetch=b"* 1 FETCH (UID one FLAGS ())\r\n"),
     "FETCH answer is malformed"),
    ("overlong line", dict(search=b"* SEARCH " + b"1 " * 600_000 + b"\r\n"),
     "longer than"),
    ("garbage UIDs", dict(search=b"* SEARCH 1 two\r\n"), "not a list of UIDs"),
    ("endless answers", dict(search=(b"* OK " + b"x" * 100_000 + b"\r\n") * 150),
     "more data than"),
    ("no UIDVALIDITY", dict(select=b"* 1 EXISTS\r\n"), "no UIDVALIDITY"),
])
def test_hostile_imap_answers_are_transient_errors(world: World, case: str,
                                                   server: dict[str, bytes], match: str
                                                   ) -> None:
    fake = HostileImap(**server)
    try:
        mail = world.connector(imap_port=fake.port, max_message_bytes=64 * 1024)
        with pytest.raises(TransientError, match=match):
            mail.call(tc("search"))
    finally:
        fake.close()


def test_tls_modes_verify_the_server_certificate(world: World, dovecot: Dovecot,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """STARTTLS and implicit TLS on both protocols, against the servers' certificate (its
    CA trusted through SSL_CERT_FILE); an untrusted certificate or a missing STARTTLS is an
    AuthError, and the password is never sent."""
    starttls = SmtpFront(dovecot, tls="starttls").start()
    implicit = SmtpFront(dovecot, tls="implicit").start()
    try:
        modes = [
            world.connector(smtp_host="localhost", smtp_port=starttls.port,
                            smtp_security="starttls", imap_host="localhost",
                            imap_security="starttls"),
            world.connector(smtp_port=implicit.port, smtp_security="ssl",
                            imap_port=dovecot.imaps_port, imap_security="ssl"),
        ]
        monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
        for i, mail in enumerate(modes):
            mail.check()
            got = mail.call(send_call(world.bob, key=f"tls-{i}"))
            assert got["accepted"] == [world.bob]
        assert len(starttls.deliveries) == len(implicit.deliveries) == 1
        assert "AUTH" in starttls.commands
        monkeypatch.delenv("SSL_CERT_FILE")
        for mail in modes:
            with pytest.raises(AuthError, match="certificate was refused"):
                mail.check()
        monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
        with pytest.raises(AuthError, match="does not offer STARTTLS"):  # plain SMTP front
            world.connector(imap_security="starttls", imap_host="localhost",
                            smtp_security="starttls").check()
        assert world.smtp.commands.count("AUTH") == 0
    finally:
        starttls.stop()
        implicit.stop()


# -- send --------------------------------------------------------------------------------------


def test_send_delivers_through_smtp_to_dovecot_and_keeps_a_sent_copy(world: World) -> None:
    mail = world.connector()
    call = send_call([f"Bob <{world.bob}>"], html="<p>Hello <b>Bob</b></p>",
                     cc=world.alice, reply_to="replies@example.com",
                     in_reply_to="<earlier@example.org>")
    assert mail.describe(call) == f'email "Invoice 7" to {world.bob} and 1 more'
    got = mail.call(call)
    mid = message_id_for("kf-wf-run-1", "example.com")
    assert got["message_id"] == mid
    assert mid.startswith("<kf-")
    assert len(mid) == 49
    assert got["accepted"] == [world.bob, world.alice]
    assert got["folder"] == "Sent"
    assert got["id"].startswith("Sent:")
    assert world.smtp.delivered(mid) == 1
    [(_, flags, raw)] = world.dovecot.messages(world.alice, "Sent")
    assert flags == {"\\Seen", "$KeepflowSent"}
    assert raw.replace(b"\r\n", b"\n") == world.smtp.deliveries[0].data.replace(b"\r\n", b"\n")
    reader = world.reader(world.bob)
    [received] = reader.call(tc("search"))["messages"]
    assert received["message_id"] == mid
    assert received["from"] == f"Alice <{world.alice}>"
    body = reader.call(tc("read", id=received["id"]))
    assert body["text"] == "Hello\nBob"
    assert body["html"] == "<p>Hello <b>Bob</b></p>"
    assert b"In-Reply-To: <earlier@example.org>" in raw
    assert b"Reply-To: replies@example.com" in raw
    assert b"Auto-Submitted: auto-generated" in raw
    # the same attempt again sends nothing: its copy says it was sent
    assert mail.call(call) == got
    assert world.smtp.delivered(mid) == 1
    verdict = mail.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == got


def test_reconcile_after_accept_then_drop_finds_the_own_copy_applied(world: World) -> None:
    mail = world.connector(bcc_self=True)
    world.smtp.set_plan("accept_then_drop")
    call = send_call(world.bob)
    with pytest.raises(UncertainOutcome, match="RFC 1047"):
        mail.call(call)
    mid = message_id_for(call.idempotency_key or "", "example.com")
    assert world.smtp.delivered(mid) == 1
    assert world.dovecot.flags(world.alice, "Sent") == [{"\\Seen", "$KeepflowSending"}]
    verdict = mail.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.APPLIED, verdict.detail
    assert verdict.result["message_id"] == mid
    assert verdict.result["accepted"] == [world.bob]
    assert "own copy" in verdict.detail
    # the own copy is not returned by search of INBOX
    assert world.connector(bcc_self=True).call(tc("search"))["messages"] == []


def test_reconcile_after_drop_before_accept_says_failed(world: World) -> None:
    mail = world.connector()
    world.smtp.set_plan("drop_before_accept")
    call = send_call(world.bob)
    with pytest.raises(TransientError, match="nothing was sent"):
        mail.call(call)
    assert world.smtp.deliveries == []
    assert world.dovecot.messages(world.alice, "Sent") == []  # the copy was removed
    verdict = mail.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.FAILED, verdict.detail
    assert mail.reconcile(send_call(world.bob, key="never-tried")).outcome \
        is ReconcileOutcome.FAILED


def test_a_copy_still_marked_sending_asks_the_person(world: World) -> None:
    """Dropped after the whole message, before any reply: nobody can tell by looking."""
    world.smtp.set_plan("drop_after_data")
    mail = world.connector()
    call = send_call(world.bob)
    with pytest.raises(UncertainOutcome):
        mail.call(call)
    assert world.dovecot.flags(world.alice, "Sent") == [{"\\Seen", "$KeepflowSending"}]
    verdict = mail.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.INDETERMINATE
    assert f'Did the email "Invoice 7" to {world.bob} arrive' in verdict.detail
    # with bcc_self, no own copy (yet): keep looking rather than ask at once
    assert world.connector(bcc_self=True).reconcile(call).outcome is ReconcileOutcome.RETRY
    # the same attempt is never sent a second time
    with pytest.raises(UncertainOutcome, match="marked sending"):
        mail.call(call)
    assert world.smtp.commands.count("MAIL") == 1


def test_smtp_refusals_are_classified_and_leave_no_copy(world: World) -> None:
    mail = world.connector()
    world.smtp.set_plan("temp_451")
    with pytest.raises(TransientError, match="451"):
        mail.call(send_call(world.bob))
    world.smtp.refuse.add("nobody@example.com")
    with pytest.raises(PermanentError, match=r"nobody@example\.com") as err:
        mail.call(send_call([world.bob, "nobody@example.com"], key="k2"))
    assert err.value.details["recipient"] == "nobody@example.com"
    assert world.smtp.deliveries == []
    assert world.dovecot.messages(world.alice, "Sent") == []
    bad = world.connector(password=Secret("wrong", "MAIL_PW"))
    with pytest.raises(AuthError, match="refused the login") as auth:
        bad.call(send_call(world.bob, key="k3"))
    assert "wrong" not in auth.value.message
    with pytest.raises(AuthError):
        bad.check()
    world.connector().check()
    # IMAP accepts, SMTP refuses the password: 535 is an AuthError too
    world.smtp.logins = {world.alice: "another"}
    with pytest.raises(AuthError, match="535"):
        mail.call(send_call(world.bob, key="k4"))
    assert world.dovecot.messages(world.alice, "Sent") == []


def test_missing_servers_and_folders_are_classified(world: World) -> None:
    with pytest.raises(PreconditionError, match="no folder 'Outbox'"):
        world.connector(sent_folder="Outbox").call(send_call(world.bob))
    assert "MAIL" not in world.smtp.commands
    world.smtp.stop()
    with pytest.raises(TransientError, match="could not connect"):
        world.connector().call(send_call(world.bob))
    assert world.dovecot.messages(world.alice, "Sent") == []
    with pytest.raises(TransientError, match="could not connect"):
        world.connector(imap_port=1).call(tc("search"))


def test_bad_input_is_refused_before_any_smtp_traffic(world: World) -> None:
    mail = world.connector(allow_domains=["example.com", "*.example.org"])
    cases = [
        (send_call(world.bob, subject="Hi\r\nBcc: everyone@example.com"), "subject"),
        (send_call(world.bob, subject="Hi\nX"), "subject"),
        (send_call("bob@@example.com"), "to"),
        (send_call("Bob <bob@example.com>\r\nBcc: x@example.com"), "to"),
        (send_call(["bob@example.com", "bob"]), "to"),
        (send_call([]), "to"),
        (send_call(world.bob, text=None), "text"),
        (send_call(world.bob, text=""), "text"),
        (send_call(world.bob, cc="x@example.net"), "cc"),
        (send_call("eve@evil.example"), "to"),
        (send_call(world.bob, in_reply_to="not a message id"), "in_reply_to"),
        (send_call(world.bob, bcc="hidden@example.com"), "bcc"),
        (send_call(world.bob, reply_to="a@b@c"), "reply_to"),
        (tc("search", limit=101), "limit"),
        (tc("search", folder="INBOX\r\nA1 DELETE INBOX"), "folder"),
        (tc("read", id="INBOX:x:1"), "id"),
    ]
    for call, field in cases:
        with pytest.raises(PermanentError) as err:
            mail.validate(call)
        assert err.value.details["field"] == field, (call.params, err.value.message)
        with pytest.raises(PermanentError):
            mail.call(call)
    with pytest.raises(PermissionDenied, match=r"evil\.example"):
        mail.validate(send_call("eve@evil.example"))
    mail.validate(send_call(["a@sub.example.org", world.bob]))
    assert world.smtp.connections == 1  # only the server's own start-up probe
    assert world.smtp.deliveries == []


# -- through the host ------------------------------------------------------------------------

PRODUCER = """
    seed: async (ctx, state) => {
      for (const e of EVENTS) await ctx.publish("items", e);
      return { runs: (state?.runs ?? 0) + 1 };
    },"""
MUTATE = """await ctx.mail.send({ to: prepared.data.event.payload.to,
                                 subject: prepared.data.event.title,
                                 text: "Hello from " + prepared.data.event.messageId });"""
NEXT = "return { saw: mutation.status, result: mutation.result ?? null };"


def script(to: str, ids: tuple[str, ...] = ("a",)) -> str:
    events = ", ".join(f'{{ messageId: "{i}", title: "Order {i}", payload: {{ to: "{to}" }} }}'
                       for i in ids)
    return f"""
export default Keep.workflow({{
  name: "wf",
  topics: {{ "items": {{}} }},
  producers: {{ {PRODUCER.replace("EVENTS", f"[{events}]")} }},
  consumers: {{ {consumer_js(mutate=MUTATE, next_=NEXT)} }},
}});
"""


@pytest.fixture
def make_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock
              ) -> Iterator[Any]:
    made: list[tuple[Host, Connections]] = []

    def make(world: World, policy: Policy | None = None, **over: Any) -> Host:
        connections = Connections([ConnectionConfig("mail", "email", world.settings(**over))])
        host = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
                    connections=connections, pool=pool,
                    policies=PolicyBook(policy or quick_policy()))
        made.append((host, connections))
        return host

    yield make
    for host, connections in made:
        host.close()
        connections.close()


def test_through_the_host_a_consumer_sends_once_per_event(world: World, make_host: Any,
                                                          tmp_path: Path) -> None:
    host = make_host(world)
    deploy_source(host, tmp_path, script(world.bob, ("a", "b")))
    service.trigger(host, "wf", "seed")
    runs = [service.trigger(host, "wf", "work") for _ in range(2)]
    assert [r.status for r in runs] == [RunStatus.COMMITTED] * 2
    assert sorted(d.subject or "" for d in world.smtp.deliveries) == ["Order a", "Order b"]
    for r in runs:
        [m] = run_detail(host, r.run_id)["mutations"]
        assert m["status"] == "applied"
        assert m["resolvedBy"] == "host"
        assert world.smtp.delivered(message_id_for(m["idempotencyKey"], "example.com")) == 1
        assert m["description"].startswith('email "Order ')
    assert [e["status"] for e in service.list_events(host, "wf")] == ["consumed"] * 2
    assert len(world.reader(world.bob).call(tc("search"))["messages"]) == 2


def test_through_the_host_accept_then_drop_commits_by_reconcile(world: World, make_host: Any,
                                                               tmp_path: Path) -> None:
    host = make_host(world, bcc_self=True)
    deploy_source(host, tmp_path, script(world.bob))
    service.trigger(host, "wf", "seed")
    world.smtp.set_plan("accept_then_drop")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    [m] = run_detail(host, out.run_id)["mutations"]
    assert m["status"] == "applied"
    assert m["resolvedBy"] == "reconcile"
    assert len(world.smtp.deliveries) == 1
    assert m["result"]["message_id"] == world.smtp.deliveries[0].message_id


def test_through_the_host_an_undecidable_send_asks_the_person(world: World, make_host: Any,
                                                              tmp_path: Path) -> None:
    """The copy is still marked sending: the workflow needs action, the inbox asks whether
    the email arrived, and the truthful answer ends with exactly one delivery. It asks at
    once: the policy allows three reconciles a minute apart, but no later look can tell."""
    policy = quick_policy()
    assert policy.reconcile.max_attempts > 1
    host = make_host(world, policy)
    deploy_source(host, tmp_path, script(world.bob))
    service.trigger(host, "wf", "seed")
    world.smtp.set_plan("drop_after_data")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    [m] = run_detail(host, out.run_id)["mutations"]
    assert m["status"] == "indeterminate"
    assert m["canReconcile"] is True
    wf = service.list_workflows(host)[0]
    assert wf["status"] == "needs_action"
    assert f'Did the email "Order a" to {world.bob} arrive' in wf["statusReason"]
    [item] = service.inbox(host)
    assert item["kind"] == "unknown_outcome"
    assert item["title"] == f'Did email "Order a" to {world.bob} for "Order a" happen?'
    mid = message_id_for(m["idempotencyKey"], "example.com")
    assert world.smtp.delivered(mid) == 0  # truthfully: it did not arrive
    service.resolve(host, out.run_id, "didnt_happen", actor="test")
    assert host.store.get_run(out.run_id).status is RunStatus.COMMITTED
    assert len(world.smtp.deliveries) == 1
    assert service.list_events(host, "wf")[0]["status"] == "consumed"


def test_through_the_host_a_refused_password_asks_to_reconnect_then_commits(
        world: World, store_url: str, tmp_path: Path, pool: SandboxPool) -> None:
    home = tmp_path / "home"
    home.mkdir()
    host = Host(Settings(home=home, database_url=store_url), pool=pool)
    try:
        settings = {k: v for k, v in world.settings().items() if k != "password"}
        service.connection_add(host, "mail", "email", settings, {"password": "bad"})
        deploy_source(host, tmp_path, script(world.bob))
        service.trigger(host, "wf", "seed")
        out = service.trigger(host, "wf", "work")
        assert out.status is RunStatus.FAILED
        [item] = service.inbox(host)
        assert item["kind"] == "reconnect"
        assert item["connection"] == "mail"
        assert "refused the login" in item["why"]
        assert "bad" not in json.dumps(item).replace("badge", "")
        done = service.connection_secret(host, "mail", "password",
                                         world.dovecot.users[world.alice])
        assert done["retried"] == [out.run_id]
        assert host.store.get_run(out.run_id).status is RunStatus.COMMITTED
        assert len(world.smtp.deliveries) == 1
        assert service.inbox(host) == []
    finally:
        host.close()


def test_through_the_host_451_backs_off_and_commits(world: World, make_host: Any,
                                                    tmp_path: Path, clock: FakeClock) -> None:
    host = make_host(world)
    deploy_source(host, tmp_path, script(world.bob))
    service.trigger(host, "wf", "seed")
    world.smtp.set_plan("temp_451", "ok")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert clock.slept
    assert [d.message_id for d in world.smtp.deliveries] == [
        message_id_for(muts[1]["idempotencyKey"], "example.com")]
    assert world.dovecot.flags(world.alice, "Sent") == [{"\\Seen", "$KeepflowSent"}]
