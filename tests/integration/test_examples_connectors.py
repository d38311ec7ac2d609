"""The example workflows that use connectors, run end to end against real local servers:

* ``examples/feed-digest/feed-digest.js`` — two loopback feeds (RSS and Atom, answering
  ``If-None-Match`` with 304) and a real dovecot behind a real SMTP server: one digest per
  batch of new items, none when nothing changed, and a second digest with only a new item;
* ``examples/customer-mail/customer-mail.js`` — mail in a real dovecot INBOX, the fake
  Google Sheets and Slack APIs: one row and one post per customer e-mail, nothing for other
  mail and nothing on a second pass, and a lost Sheets answer reconciled to the one row.

The scripts are deployed as they are, except for the constants their comments say to edit
(feed-digest's ``FEEDS`` and ``DIGEST_TO``); the connections are added as
``connections.example.toml`` shows, through ``keepflow connection add`` (``service``), with
loopback settings (``*_security = "none"``, ``base_url``, ``allow``)."""

from __future__ import annotations

import email
import email.policy
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.email_message import message_id_for
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.fake_google_sheets import FakeSheets
from tests.support.fake_slack import FakeSlack
from tests.support.mail_servers import Dovecot, SmtpFront, dovecot_or_skip
from tests.support.sink import JsonHandler, start_server, stop_server
from tests.support.workflows import deploy_source, quick_policy, run_detail

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    d = dovecot_or_skip()
    yield d
    d.stop()


@pytest.fixture
def smtp(dovecot: Dovecot) -> Iterator[SmtpFront]:
    front = SmtpFront(dovecot).start()
    yield front
    front.stop()


@pytest.fixture
def host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock) -> Iterator[Host]:
    """A keepflow home whose connections.toml starts empty: each test adds the example's
    connections to it, as its connections.example.toml says."""
    home = tmp_path / "home"
    home.mkdir()
    h = Host(Settings(home=home, database_url=store_url), clock=clock, pool=pool,
             policies=PolicyBook(quick_policy()))
    yield h
    h.close()


def example(name: str, **constants: str) -> str:
    """The example's script, each ``const NAME = …;`` of ``constants`` replaced (the value is
    JavaScript source)."""
    source = (EXAMPLES / name / f"{name}.js").read_text(encoding="utf-8")
    for const, value in constants.items():
        source, n = re.subn(rf"^const {const} = [^;]*;", f"const {const} = {value};",
                            source, flags=re.MULTILINE)
        assert n == 1, f"{name}.js has no `const {const} = …;` to edit"
    return source


def mail_settings(dovecot: Dovecot, user: str, smtp: SmtpFront | None = None
                  ) -> dict[str, Any]:
    """An ``email`` connection of ``user`` on loopback (no ``smtp``: nothing listens on the
    SMTP port, for a workflow that only reads)."""
    return {"smtp_host": "127.0.0.1", "smtp_port": smtp.port if smtp else 1,
            "smtp_security": "none", "imap_host": "127.0.0.1", "imap_port": dovecot.port,
            "imap_security": "none", "username": user, "from": user}


def committed(host: Host, workflow: str, handler: str) -> str:
    out = service.trigger(host, workflow, handler)
    assert out.status is RunStatus.COMMITTED, (handler, out.failure)
    return out.run_id


def mutations(host: Host, run_id: str) -> list[dict[str, Any]]:
    muts: list[dict[str, Any]] = run_detail(host, run_id)["mutations"]
    return muts


def statuses(host: Host, workflow: str, topic: str | None = None) -> dict[str, str]:
    return {e["messageId"]: e["status"] for e in service.list_events(host, workflow, topic)}


# -- feed-digest ---------------------------------------------------------------------------

RSS_ITEMS = [("urn:blog:1", "Tea is served", "https://blog.example.org/tea",
              "Mon, 01 Jun 2026 07:00:00 GMT", "All about tea."),
             ("urn:blog:2", "Cake recipes", "https://blog.example.org/cake",
              "Tue, 02 Jun 2026 07:00:00 GMT", "Sponge &amp; cream.")]
ATOM_ITEMS = [("tag:status.example.com,2026:1", "Maintenance on Saturday",
               "https://status.example.com/1", "2026-06-03T08:00:00Z", "An hour at most.")]


def rss(items: list[tuple[str, str, str, str, str]]) -> str:
    body = "".join(f"<item><guid>{g}</guid><title>{t}</title><link>{link}</link>"
                   f"<pubDate>{d}</pubDate><description>{s}</description></item>"
                   for g, t, link, d, s in items)
    return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>The Blog</title><link>https://blog.example.org/</link>{body}"
            "</channel></rss>")


def atom(items: list[tuple[str, str, str, str, str]]) -> str:
    body = "".join(f'<entry><id>{i}</id><title>{t}</title><link href="{link}"/>'
                   f"<published>{d}</published><updated>{d}</updated>"
                   f"<summary>{s}</summary></entry>" for i, t, link, d, s in items)
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            "<title>Status</title><id>tag:status.example.com,2026:feed</id>"
            f"<updated>2026-06-03T08:00:00Z</updated>{body}</feed>")


@dataclass
class Feeds:
    """A loopback web server with one feed per path. Each feed's ETag is its version; a GET
    with ``If-None-Match`` naming the current one is answered 304 without a body."""

    #: path -> (etag, content type, body)
    feeds: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: (path, If-None-Match or None, status) of every request
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Feeds:
        feeds = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                sent = self.headers.get("If-None-Match")
                with feeds.lock:
                    feed = feeds.feeds.get(self.path)
                    status = 404 if feed is None else 304 if sent == feed[0] else 200
                    feeds.requests.append((self.path, sent, status))
                if feed is None:
                    self._reply(404, {"error": "no such feed"})
                    return
                etag, content_type, body = feed
                data = b"" if status == 304 else body.encode()
                self.send_response(status)
                self.send_header("ETag", etag)
                if status == 200:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = start_server(Handler)
        return self

    def stop(self) -> None:
        stop_server(self.server)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, path: str, etag: str, content_type: str, body: str) -> None:
        with self.lock:
            self.feeds[path] = (f'"{etag}"', content_type, body)


@pytest.fixture
def feeds() -> Iterator[Feeds]:
    site = Feeds().start()
    yield site
    site.stop()


def digests(smtp: SmtpFront) -> list[tuple[str, list[str], str]]:
    """(subject, recipients, plain text with \\n line ends) of every message the SMTP server
    accepted."""
    out = []
    for d in smtp.deliveries:
        msg = email.message_from_bytes(d.data, policy=email.policy.default)
        body = msg.get_body(("plain",))
        assert body is not None
        text = str(body.get_content()).replace("\r\n", "\n")
        out.append((d.subject or "", d.rcpt_tos, text))
    return out


def test_feed_digest_mails_each_new_item_once(host: Host, tmp_path: Path, dovecot: Dovecot,
                                              smtp: SmtpFront, feeds: Feeds) -> None:
    me, reader = dovecot.add_user("me"), dovecot.add_user("reader")
    dovecot.create_folder(me, "Sent")
    feeds.publish("/feed.xml", "b1", "application/rss+xml", rss(RSS_ITEMS))
    feeds.publish("/history.atom", "s1", "application/atom+xml", atom(ATOM_ITEMS))
    urls = [feeds.origin + "/feed.xml", feeds.origin + "/history.atom"]
    service.connection_add(host, "news", "feed", {"allow": [feeds.origin]}, {})
    service.connection_add(host, "mail", "email", mail_settings(dovecot, me, smtp),
                           {"password": dovecot.users[me]})
    deploy_source(host, tmp_path, example("feed-digest", FEEDS=json.dumps(urls),
                                          DIGEST_TO=json.dumps(reader)))

    committed(host, "feed-digest", "pollFeeds")
    every = [i[0] for i in RSS_ITEMS + ATOM_ITEMS]
    assert statuses(host, "feed-digest") == dict.fromkeys(every, "pending")
    run = committed(host, "feed-digest", "mailDigest")
    [(subject, rcpt, text)] = digests(smtp)
    assert subject == "Your feeds: 3 new items"
    assert rcpt == [reader]
    for _, title, link, *_ in RSS_ITEMS + ATOM_ITEMS:
        assert title in text
        assert link in text
    assert "* Tea is served — The Blog (2026-06-01)\n  https://blog.example.org/tea\n" \
        "  All about tea." in text
    assert "Maintenance on Saturday — Status (2026-06-03)" in text
    [m] = mutations(host, run)
    assert (m["status"], m["resolvedBy"]) == ("applied", "host")
    assert smtp.delivered(message_id_for(m["idempotencyKey"], "example.com")) == 1
    assert m["result"]["message_id"] == smtp.deliveries[0].message_id
    assert statuses(host, "feed-digest") == dict.fromkeys(every, "consumed")
    [(_, _, got)] = dovecot.messages(reader)
    assert got.replace(b"\r\n", b"\n") == smtp.deliveries[0].data.replace(b"\r\n", b"\n")
    assert dovecot.flags(me, "Sent") == [{"\\Seen", "$KeepflowSent"}]

    # unchanged feeds: conditional GETs answered 304, nothing published, nothing sent
    committed(host, "feed-digest", "pollFeeds")
    assert feeds.requests[-2:] == [("/feed.xml", '"b1"', 304), ("/history.atom", '"s1"', 304)]
    assert len(statuses(host, "feed-digest")) == 3
    run = committed(host, "feed-digest", "mailDigest")
    assert mutations(host, run) == []
    assert len(smtp.deliveries) == 1

    # a new item on the blog: the whole feed comes again, only the new item is new
    new = ("urn:blog:3", "Jam season", "https://blog.example.org/jam",
           "Wed, 03 Jun 2026 07:00:00 GMT", "Strawberries.")
    feeds.publish("/feed.xml", "b2", "application/rss+xml", rss([new, *RSS_ITEMS]))
    committed(host, "feed-digest", "pollFeeds")
    assert feeds.requests[-2:] == [("/feed.xml", '"b1"', 200), ("/history.atom", '"s1"', 304)]
    assert statuses(host, "feed-digest") == {**dict.fromkeys(every, "consumed"),
                                             "urn:blog:3": "pending"}
    run = committed(host, "feed-digest", "mailDigest")
    assert len(smtp.deliveries) == 2
    subject, rcpt, text = digests(smtp)[1]
    assert subject == "Your feeds: 1 new item"
    assert rcpt == [reader]
    assert "* Jam season — The Blog (2026-06-03)\n  https://blog.example.org/jam" in text
    assert all(title not in text for _, title, *_ in RSS_ITEMS + ATOM_ITEMS)
    [m] = mutations(host, run)
    assert (m["status"], m["resolvedBy"]) == ("applied", "host")
    assert statuses(host, "feed-digest")["urn:blog:3"] == "consumed"
    assert len(dovecot.messages(reader)) == 2
    # and the feed state now holds the new validator
    committed(host, "feed-digest", "pollFeeds")
    assert feeds.requests[-2][1:] == ('"b2"', 304)


# -- customer-mail -------------------------------------------------------------------------

SHEET_ID = "1SupportSheetIdFromItsUrl"  # the example's own constants, matched by the fakes
TAB = "Customer mail"
CHANNEL = "C0SUPPORT"
HEADER = ["Received", "From", "Subject", "Message id", "Snippet"]  # by name, in any order
SLACK_TOKEN = "xoxb-1111-2222-support"


@pytest.fixture
def sheets() -> Iterator[FakeSheets]:
    fake = FakeSheets()
    fake.add(SHEET_ID, {TAB: [HEADER]}, title="Support")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(tokens={SLACK_TOKEN})
    fake.add_channel(CHANNEL, "support")
    fake.start()
    yield fake
    fake.stop()


def mail(sender: str, subject: str, message_id: str, body: str) -> bytes:
    return (f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Date: Thu, 04 Jun 2026 09:30:00 +0200\r\nMessage-ID: {message_id}\r\n"
            f"\r\n{body}\r\n").encode()


CUSTOMER_ID = "<q-17@customer.example>"
OTHER_ID = "<news-5@shop.example>"


def customer_mail_world(host: Host, tmp_path: Path, dovecot: Dovecot, sheets: FakeSheets,
                        slack: FakeSlack) -> None:
    """The support mailbox with a customer's e-mail and a newsletter, the example's three
    connections, and the example deployed unchanged."""
    support = dovecot.add_user("support")
    dovecot.deliver(support, mail("Carol Client <carol@customer.example>",
                                  "Invoice 4711 is wrong", CUSTOMER_ID,
                                  "Hello,\r\nthe invoice lists two teapots."))
    dovecot.deliver(support, mail("Shop News <news@shop.example>", "Our summer sale",
                                  OTHER_ID, "Everything must go."))
    service.connection_add(host, "mail", "email", mail_settings(dovecot, support),
                           {"password": dovecot.users[support]})
    service.connection_add(host, "sheet", "google_sheets",
                           {"spreadsheets": [SHEET_ID], "base_url": sheets.url},
                           {"token": "good-token"})
    service.connection_add(host, "team", "slack", {"base_url": slack.url + "/api/"},
                           {"token": SLACK_TOKEN})
    deploy_source(host, tmp_path, example("customer-mail"))


def rows(sheets: FakeSheets) -> list[dict[str, Any]]:
    head, *body = sheets.tab(SHEET_ID, TAB)
    assert head == HEADER
    return [dict(zip(head, r, strict=False)) for r in body]


def chain(host: Host) -> tuple[str, str]:
    """pollInbox, logToSheet, tellSlack, each committed: the two consumers' run ids."""
    committed(host, "customer-mail", "pollInbox")
    return committed(host, "customer-mail", "logToSheet"), \
        committed(host, "customer-mail", "tellSlack")


def test_customer_mail_logs_a_row_and_tells_slack_once(
        host: Host, tmp_path: Path, dovecot: Dovecot, sheets: FakeSheets,
        slack: FakeSlack) -> None:
    customer_mail_world(host, tmp_path, dovecot, sheets, slack)
    log_run, tell_run = chain(host)

    [row] = rows(sheets)
    assert row == {"Message id": CUSTOMER_ID, "Received": "2026-06-04T07:30:00Z",
                   "From": "Carol Client <carol@customer.example>",
                   "Subject": "Invoice 4711 is wrong",
                   "Snippet": "Hello, the invoice lists two teapots."}
    [m] = mutations(host, log_run)
    assert (m["status"], m["resolvedBy"]) == ("applied", "host")
    assert m["result"]["row"] == 2
    [post] = slack.posted(CHANNEL)
    assert post["text"] == ('New customer email from Carol Client <carol@customer.example>: '
                            '"Invoice 4711 is wrong" (support sheet, row 2)')
    [m] = mutations(host, tell_run)
    assert (m["status"], m["resolvedBy"]) == ("applied", "host")
    assert post["metadata"]["event_payload"]["idempotency_key"] == m["idempotencyKey"]
    # the newsletter produced nothing; each event was consumed by its one consumer
    assert statuses(host, "customer-mail", "mail.received") == {CUSTOMER_ID: "consumed"}
    assert statuses(host, "customer-mail", "mail.logged") == {CUSTOMER_ID: "consumed"}

    # the whole chain again: the cursor finds no new mail, the consumers have nothing to do
    log_run, tell_run = chain(host)
    assert mutations(host, log_run) == mutations(host, tell_run) == []
    assert len(rows(sheets)) == 1
    assert len(slack.posted(CHANNEL)) == 1
    assert len(service.list_events(host, "customer-mail")) == 2
    assert len(sheets.requests_to("POST", r".*:append")) == 1


def test_customer_mail_a_lost_sheets_answer_is_reconciled_to_the_one_row(
        host: Host, tmp_path: Path, dovecot: Dovecot, sheets: FakeSheets,
        slack: FakeSlack) -> None:
    customer_mail_world(host, tmp_path, dovecot, sheets, slack)
    sheets.fault("apply_then_drop")  # the row is appended, its answer never arrives
    log_run, _ = chain(host)

    [row] = rows(sheets)
    assert row["Message id"] == CUSTOMER_ID
    assert len(sheets.requests_to("POST", r".*:append")) == 1  # never appended again
    [m] = mutations(host, log_run)
    assert (m["status"], m["resolvedBy"]) == ("applied", "reconcile")
    assert m["result"]["row"] == 2
    [post] = slack.posted(CHANNEL)  # `next` had the reconciled result: the post names row 2
    assert post["text"].endswith("(support sheet, row 2)")
    assert statuses(host, "customer-mail", "mail.received") == {CUSTOMER_ID: "consumed"}
    assert statuses(host, "customer-mail", "mail.logged") == {CUSTOMER_ID: "consumed"}
