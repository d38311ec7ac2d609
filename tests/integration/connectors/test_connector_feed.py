"""The feed connector against a real loopback HTTP server: RSS 2.0, Atom 1.0, stable ids,
conditional GET, failure classes, size bounds, and hostile feeds (SPEC §8, §9;
docs/connectors.md#feed) — plus a producer that polls a feed twice through the service."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig, ToolCall
from keepflow.connectors.config import Connections, parse_connections
from keepflow.connectors.feed import (
    DEFAULT_MAX_BYTES,
    SUMMARY_CHARS,
    FeedConnector,
    html_to_text,
    prolog_end,
)
from keepflow.connectors.secret import Secret
from keepflow.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
)
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.storable import first_unstorable
from tests.support.sink import JsonHandler, stop_server
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    events_of,
    quick_policy,
    workflow_js,
)

pytestmark = pytest.mark.integration

#: (status, headers, body) for one request, given its headers (lower-case names).
Answer = tuple[int, dict[str, str], bytes]
Route = Callable[[dict[str, str]], Answer]

RSS = "application/rss+xml; charset=utf-8"
ATOM = "application/atom+xml"


@dataclass
class FeedSite:
    """A loopback web server whose paths answer what a test says; it records requests."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FeedSite:
        site = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with site.lock:
                    site.requests.append((self.path, headers))
                    route = site.routes.get(self.path)
                status, extra, body = (route(headers) if route is not None
                                       else (404, {"Content-Type": "text/plain"}, b"no such"))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                if "Content-Length" in extra:  # a body that breaks off: then hang up
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        # tests.support.sink's server, polling often: a test's teardown does not wait 0.5 s
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.origin + path

    def serve(self, path: str, body: bytes | str, content_type: str = RSS, status: int = 200,
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        answer = (status, {"Content-Type": content_type, **(headers or {})}, data)
        self.routes[path] = lambda _headers: answer

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.requests]


@pytest.fixture
def site() -> Iterator[FeedSite]:
    s = FeedSite().start()
    yield s
    stop_server(s.server)


_OPEN: list[FeedConnector] = []


@pytest.fixture(autouse=True)
def _close_connectors() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(settings: dict[str, Any]) -> FeedConnector:
    """A connection named ``news`` (closed when the test ends)."""
    c = FeedConnector(ConnectionConfig("news", "feed", settings))
    _OPEN.append(c)
    return c


def connector(site: FeedSite, **settings: Any) -> FeedConnector:
    return make({"allow": [site.origin], **settings})


@pytest.fixture
def news(site: FeedSite) -> FeedConnector:
    return connector(site)


def fetch(c: FeedConnector, url: str, timeout: float = 5.0, **params: Any) -> dict[str, Any]:
    call = ToolCall("fetch", {"url": url, **params}, timeout=timeout)
    c.validate(call)
    result: dict[str, Any] = c.call(call)
    return result


def rss(items: str, *, channel: str = "<title>News</title>") -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>{channel}'
            f"{items}</channel></rss>")


RSS_FEED = rss("""
  <item>
    <title>First &amp; foremost</title>
    <link>https://news.example/1</link>
    <guid isPermaLink="false">urn:news:1</guid>
    <pubDate>Mon, 01 Jan 2024 10:00:00 +0200</pubDate>
    <author>ann@news.example (Ann)</author>
    <description>&lt;p&gt;Hello &lt;b&gt;world&lt;/b&gt;&lt;/p&gt;
      &lt;p&gt;Second  paragraph&amp;nbsp;here&lt;/p&gt;</description>
  </item>
  <item>
    <title>Second</title>
    <link>/2</link>
    <guid>https://news.example/2</guid>
    <description><![CDATA[<ul><li>one</li><li>two &eacute;</li></ul>]]></description>
  </item>""", channel="<title>News  &amp; views</title><link>https://news.example/</link>"
                      "<lastBuildDate>Tue, 02 Jan 2024 03:04:05 GMT</lastBuildDate>")

ATOM_FEED = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title type="html">Atom &lt;i&gt;log&lt;/i&gt;</title>
  <link rel="alternate" href="https://atom.example/"/>
  <updated>2024-03-04T05:06:07+01:00</updated>
  <entry>
    <id>tag:atom.example,2024:1</id>
    <title>Entry one</title>
    <link rel="alternate" href="entries/1"/>
    <published>2024-03-01T12:00:00Z</published>
    <updated>2024-03-02T12:00:00-05:00</updated>
    <author><name>Bob</name><email>bob@atom.example</email></author>
    <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">
      <p>Rich <em>text</em></p></div></content>
  </entry>
  <entry>
    <id>tag:atom.example,2024:2</id>
    <title type="text">Plain &lt;not a tag&gt;</title>
    <summary type="text">Summary as text</summary>
  </entry>
</feed>"""


# ------------------------------------------------------------------------------ formats


def test_rss2_items_feed_fields_and_request(news: FeedConnector, site: FeedSite) -> None:
    site.serve("/rss.xml", RSS_FEED, headers={"ETag": '"v1"',
                                             "Last-Modified": "Tue, 02 Jan 2024 03:04:05 GMT"})
    result = fetch(news, site.url("/rss.xml"))
    assert result["status"] == 200
    assert result["etag"] == '"v1"'
    assert result["modified"] == "Tue, 02 Jan 2024 03:04:05 GMT"
    assert result["truncated"] is False
    assert result["feed"] == {"title": "News & views", "link": "https://news.example/",
                              "updated": "2024-01-02T03:04:05Z"}
    first, second = result["items"]
    assert first == {
        "id": "urn:news:1", "title": "First & foremost", "link": "https://news.example/1",
        "published": "2024-01-01T08:00:00Z", "updated": None,
        "summary": "Hello world\nSecond paragraph here", "author": "ann@news.example (Ann)",
    }
    assert second["id"] == "https://news.example/2"
    assert second["link"] == site.url("/2")  # relative links resolve against the feed's URL
    assert second["summary"] == "one\ntwo é"
    assert second["published"] is None
    ((path, headers),) = site.requests
    assert path == "/rss.xml"
    assert "application/rss+xml" in headers["accept"]
    assert "if-none-match" not in headers
    assert "if-modified-since" not in headers
    assert first_unstorable(result) is None
    json.dumps(result, allow_nan=False)


def test_atom10_entries(news: FeedConnector, site: FeedSite) -> None:
    site.serve("/atom", ATOM_FEED, content_type=ATOM)
    result = fetch(news, site.url("/atom"))
    assert result["feed"] == {"title": "Atom log", "link": "https://atom.example/",
                              "updated": "2024-03-04T04:06:07Z"}
    one, two = result["items"]
    assert one == {
        "id": "tag:atom.example,2024:1", "title": "Entry one",
        "link": site.url("/entries/1"), "published": "2024-03-01T12:00:00Z",
        "updated": "2024-03-02T17:00:00Z", "summary": "Rich text",
        "author": "Bob (bob@atom.example)",
    }
    assert two["title"] == "Plain <not a tag>"  # a text construct stays text
    assert two["summary"] == "Summary as text"
    assert two["link"] is None
    assert two["author"] is None


def test_ids_without_guid_are_the_link_or_a_documented_hash(news: FeedConnector,
                                                             site: FeedSite) -> None:
    site.serve("/noguid", rss("""
      <item><title>Linked</title><link>https://x.example/a</link></item>
      <item><title>Bare</title><pubDate>Wed, 03 Jan 2024 00:00:00 GMT</pubDate>
            <description>Just &lt;i&gt;text&lt;/i&gt;</description></item>
      <item><title>   </title></item>
      <item><title>Numbered</title><guid>1234</guid></item>"""))
    first = fetch(news, site.url("/noguid"))
    again = fetch(news, site.url("/noguid"))
    assert [i["id"] for i in first["items"]] == [i["id"] for i in again["items"]]
    linked, bare, empty, numbered = first["items"]
    assert linked["id"] == "https://x.example/a"

    def documented(title: Any, published: Any, summary: Any) -> str:
        data = json.dumps([title, published, summary], ensure_ascii=False,
                          separators=(",", ":"))
        return "sha256:" + hashlib.sha256(data.encode()).hexdigest()

    assert bare["id"] == documented("Bare", "2024-01-03T00:00:00Z", "Just text")
    assert empty["title"] is None
    assert empty["id"] == documented(None, None, None)
    # a guid is a permalink unless it says otherwise, but "1234" is no URL: no link
    assert numbered["id"] == "1234"
    assert numbered["link"] is None


def test_a_guid_longer_than_a_message_id_is_hashed_and_duplicates_are_dropped(
        news: FeedConnector, site: FeedSite) -> None:
    long_guid = "g" * 300
    site.serve("/dups", rss(f"""
      <item><title>A</title><guid>{long_guid}</guid></item>
      <item><title>A again</title><guid>{long_guid}</guid></item>
      <item><title>B</title><guid>b</guid></item>"""))
    items = fetch(news, site.url("/dups"))["items"]
    assert [i["title"] for i in items] == ["A", "B"]
    assert items[0]["id"] == "sha256:" + hashlib.sha256(long_guid.encode()).hexdigest()


def test_charsets_and_compression(news: FeedConnector, site: FeedSite) -> None:
    latin = ('<?xml version="1.0" encoding="ISO-8859-1"?><rss version="2.0"><channel>'
             "<title>Caf\xe9</title></channel></rss>").encode("latin-1")
    site.serve("/latin", latin, content_type="text/xml")  # no charset: the declaration says
    assert fetch(news, site.url("/latin"))["feed"]["title"] == "Café"
    site.serve("/http-charset", "<rss><channel><title>Ünï</title></channel></rss>"
               .encode("cp1252"), content_type="application/rss+xml; charset=windows-1252")
    assert fetch(news, site.url("/http-charset"))["feed"]["title"] == "Ünï"
    site.serve("/gz", gzip.compress(RSS_FEED.encode()), headers={"Content-Encoding": "gzip"})
    assert len(fetch(news, site.url("/gz"))["items"]) == 2
    # a "charset" that is no text codec cannot make decoding slow or fail
    site.serve("/puny", b"<?xml version='1.0' encoding='punycode'?>" + rss("").encode()[38:],
               content_type="text/xml")
    assert fetch(news, site.url("/puny"))["feed"]["title"] == "News"


# ------------------------------------------------------------------------------ conditional GET


def test_conditional_get_sends_validators_and_304_returns_no_items(news: FeedConnector,
                                                                   site: FeedSite) -> None:
    version = {"etag": '"v1"', "modified": "Mon, 01 Jan 2024 00:00:00 GMT", "body": RSS_FEED}

    def conditional(headers: dict[str, str]) -> Answer:
        validators = {"ETag": version["etag"], "Last-Modified": version["modified"]}
        if headers.get("if-none-match") == version["etag"] or \
                headers.get("if-modified-since") == version["modified"]:
            return 304, validators, b""
        return 200, {"Content-Type": RSS, **validators}, version["body"].encode()

    site.routes["/cond"] = conditional
    first = fetch(news, site.url("/cond"))
    assert first["status"] == 200
    assert len(first["items"]) == 2
    second = fetch(news, site.url("/cond"), etag=first["etag"], modified=first["modified"])
    assert second == {"status": 304, "etag": '"v1"', "modified": version["modified"],
                      "feed": {"title": None, "link": None, "updated": None}, "items": [],
                      "truncated": False}
    sent = site.requests[1][1]
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == version["modified"]
    only_modified = fetch(news, site.url("/cond"), modified=first["modified"])
    assert only_modified["status"] == 304
    assert "if-none-match" not in site.requests[2][1]
    version.update(etag='"v2"', body=rss("<item><guid>new</guid></item>"))
    third = fetch(news, site.url("/cond"), etag='"v1"')
    assert third["status"] == 200
    assert third["etag"] == '"v2"'
    assert [i["id"] for i in third["items"]] == ["new"]


def test_a_304_without_validators_echoes_the_ones_sent(news: FeedConnector,
                                                       site: FeedSite) -> None:
    site.routes["/bare304"] = lambda _h: (304, {}, b"")
    result = fetch(news, site.url("/bare304"), etag='W/"abc"')
    assert result["status"] == 304
    assert result["etag"] == 'W/"abc"'
    assert result["modified"] is None


def test_a_validator_that_cannot_be_sent_back_is_not_returned(news: FeedConnector,
                                                              site: FeedSite) -> None:
    site.serve("/odd", RSS_FEED, headers={"ETag": "é" * 3, "Last-Modified": "x" * 2000})
    result = fetch(news, site.url("/odd"))
    assert result["etag"] is None
    assert result["modified"] is None


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(("status", "error"), [
    (404, PreconditionError), (410, PreconditionError), (401, AuthError),
    (403, PermissionDenied), (500, TransientError), (503, TransientError),
    (400, PermanentError), (418, PermanentError),
])
def test_statuses_are_classified(news: FeedConnector, site: FeedSite, status: int,
                                 error: type[Exception]) -> None:
    site.serve("/feed", "nope", content_type="text/plain", status=status)
    with pytest.raises(error) as info:
        fetch(news, site.url("/feed"))
    assert type(info.value) is error
    if status in (404, 410):
        assert "the feed is gone" in str(info.value)


def test_429_with_retry_after_is_transient_with_the_delay(news: FeedConnector,
                                                          site: FeedSite) -> None:
    site.serve("/busy", "slow down", content_type="text/plain", status=429,
               headers={"Retry-After": "7"})
    with pytest.raises(TransientError) as info:
        fetch(news, site.url("/busy"))
    assert info.value.retry_after == 7.0


def test_connection_refused_is_transient(site: FeedSite) -> None:
    c = make({"allow": ["http://127.0.0.1:9"]})
    with pytest.raises(TransientError) as info:
        fetch(c, "http://127.0.0.1:9/feed")
    assert info.value.details["sent"] is False


def test_a_server_that_never_answers_ends_by_the_deadline(site: FeedSite) -> None:
    release = threading.Event()

    def hang(_headers: dict[str, str]) -> Answer:
        release.wait(10)
        return 200, {"Content-Type": RSS}, RSS_FEED.encode()

    site.routes["/hang"] = hang
    c = connector(site)
    t0 = time.monotonic()
    try:
        with pytest.raises(TransientError):
            fetch(c, site.url("/hang"), timeout=0.5)
    finally:
        release.set()
    assert time.monotonic() - t0 < 3


def test_a_body_that_breaks_off_is_transient(news: FeedConnector, site: FeedSite) -> None:
    site.serve("/short", RSS_FEED[:300], headers={"Content-Length": "5000"})
    with pytest.raises(TransientError, match="ended after 300 bytes"):
        fetch(news, site.url("/short"))


def test_an_html_page_is_not_a_feed(news: FeedConnector, site: FeedSite) -> None:
    site.serve("/page", "<!DOCTYPE html><html><head><title>Home</title></head><body>"
               "<h1>Welcome</h1><p>Nothing to see</p></body></html>",
               content_type="text/html; charset=utf-8")
    with pytest.raises(PermanentError) as info:
        fetch(news, site.url("/page"))
    assert type(info.value) is PermanentError
    message = str(info.value)
    assert "not an RSS or Atom feed" in message
    assert "text/html" in message
    for body in (b"", b"just text", b'{"json": true}'):
        site.serve("/other", body, content_type="text/plain")
        with pytest.raises(PermanentError, match="not an RSS or Atom feed"):
            fetch(news, site.url("/other"))


def test_egress_rules_are_those_of_http(site: FeedSite) -> None:
    site.serve("/rss.xml", RSS_FEED)
    default = make({})
    with pytest.raises(PermissionDenied) as info:
        fetch(default, site.url("/rss.xml"))
    assert info.value.details["sent"] is False
    assert info.value.details["refused"] == "loopback"
    assert 'allow = ["' + site.origin + '"]' in str(info.value)
    # a redirect of an allowed origin to one that is not allowed is refused, too
    other = FeedSite().start()
    try:
        other.serve("/rss.xml", RSS_FEED)
        site.routes["/moved"] = lambda _h: (302, {"Location": other.url("/rss.xml")}, b"")
        with pytest.raises(PermissionDenied):
            fetch(connector(site), site.url("/moved"))
        assert other.requests == []
        site.routes["/here"] = lambda _h: (301, {"Location": "/rss.xml"}, b"")
        assert len(fetch(connector(site), site.url("/here"))["items"]) == 2
    finally:
        stop_server(other.server)
    assert site.paths().count("/rss.xml") == 1


def test_configured_headers_are_sent_and_redacted_in_results(site: FeedSite) -> None:
    token = "feed-token-5f2a9c"
    site.serve("/private", rss(f"<item><guid>1</guid><title>leak {token}</title></item>"))
    c = connector(site, headers={"Authorization": Secret(f"Bearer {token}", "FEED_TOKEN")})
    result = fetch(c, site.url("/private"))
    assert site.requests[0][1]["authorization"] == f"Bearer {token}"
    assert token not in json.dumps(result)
    assert result["items"][0]["title"] == "leak ***"


def test_params_are_checked(news: FeedConnector, site: FeedSite) -> None:
    bad: list[dict[str, Any]] = [
        {"url": site.url("/x"), "method": "POST"},
        {"url": "/relative"},
        {"url": "ftp://127.0.0.1/x"},
        {"url": site.url("/x"), "etag": "a\r\nX-Injected: 1"},
        {"url": site.url("/x"), "modified": 5},
        {"url": site.url("/x"), "limit": 0},
        {"url": site.url("/x"), "limit": True},
        {"url": site.url("/x"), "limit": "5"},
    ]
    for params in bad:
        with pytest.raises(PermanentError):
            news.validate(ToolCall("fetch", params, timeout=5))
    assert site.requests == []
    assert news.describe(ToolCall("fetch", {"url": site.url("/a?token=x")}, timeout=5)) == \
        f"GET {site.url('/a')}"


@pytest.mark.parametrize(("settings", "key"), [
    ({"max_bytes": 10}, "max_bytes"),
    ({"max_bytes": DEFAULT_MAX_BYTES + 1}, "max_bytes"),
    ({"max_items": 0}, "max_items"),
    ({"max_items": True}, "max_items"),
    ({"base_url": "https://x.example"}, "base_url"),
    ({"allow": ["https://x.example/path"]}, "allow"),
])
def test_settings_are_checked(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        FeedConnector.validate_settings(settings)
    assert info.value.details["key"] == key


def test_credentials_need_an_allow_list() -> None:
    doc = {"connections": {"news": {"type": "feed",
                                    "headers_env": {"Authorization": "FEED_TOKEN"}}}}
    with pytest.raises(ConfigError, match="allow") as info:
        parse_connections(doc, environ={"FEED_TOKEN": "Bearer abcdef"})
    assert "abcdef" not in str(info.value)
    doc["connections"]["news"]["allow"] = ["https://feeds.example"]
    [*_, config] = parse_connections(doc, environ={"FEED_TOKEN": "Bearer abcdef"})
    assert config.type == "feed"


# ------------------------------------------------------------------------------ limits


def big_feed(n: int, pad: int = 0) -> str:
    return rss("".join(f"<item><guid>item-{i}</guid><title>Item {i}</title>"
                       f"<description>{'x' * pad}</description></item>" for i in range(n)))


def test_limit_and_max_items(site: FeedSite) -> None:
    site.serve("/many", big_feed(30))
    c = connector(site, max_items=10)
    result = fetch(c, site.url("/many"))
    assert [i["id"] for i in result["items"]] == [f"item-{i}" for i in range(10)]
    assert result["truncated"] is True
    limited = fetch(c, site.url("/many"), limit=3)
    assert len(limited["items"]) == 3
    assert limited["truncated"] is True
    assert len(fetch(c, site.url("/many"), limit=500)["items"]) == 10
    site.serve("/few", big_feed(3))
    assert fetch(c, site.url("/few"))["truncated"] is False


def test_an_oversized_feed_is_cut_to_complete_items(site: FeedSite) -> None:
    site.serve("/big", big_feed(200, pad=100))  # about 30 KB
    c = connector(site, max_bytes=8192)
    result = fetch(c, site.url("/big"))
    assert result["truncated"] is True
    items = result["items"]
    assert 20 < len(items) < 60
    assert [i["id"] for i in items] == [f"item-{i}" for i in range(len(items))]
    assert all(i["summary"] == "x" * 100 for i in items)  # the item cut in half was dropped
    # the default bound: a 2 MiB cut, whatever the server sends
    site.serve("/huge", big_feed(30_000, pad=100))  # about 4.5 MB
    t0 = time.monotonic()
    huge = fetch(connector(site), site.url("/huge"), timeout=20)
    assert time.monotonic() - t0 < 15
    assert huge["truncated"] is True
    assert len(huge["items"]) == 200


def test_long_text_is_cut(news: FeedConnector, site: FeedSite) -> None:
    site.serve("/long", rss(f"<item><guid>1</guid><title>{'t' * 5000}</title>"
                            f"<author>{'a ' * 3000}</author>"
                            f"<description>{'word ' * 5000}</description>"
                            f"<link>https://x.example/{'p' * 5000}</link></item>"))
    [item] = fetch(news, site.url("/long"))["items"]
    assert len(item["title"]) == 1000
    assert len(item["summary"]) <= SUMMARY_CHARS
    assert item["summary"].startswith("word word")
    assert item["author"] is None or len(item["author"]) <= 1000
    assert item["link"] is None  # a cut URL would point somewhere else


# ------------------------------------------------------------------------------ hostile feeds


def test_markup_in_summaries_is_stripped_to_text(news: FeedConnector, site: FeedSite) -> None:
    evil = ('<p onclick="steal()">Read <a href="javascript:alert(1)">this</a></p>'
            '<img src=x onerror="alert(2)"><script>alert(3)</script>'
            "<style>body{display:none}</style><!-- <b>hidden</b> --><iframe src=//evil>"
            "</iframe><svg onload=alert(4)></svg><noscript><img src=y></noscript>"
            "&lt;script&gt;shown as text&lt;/script&gt;")
    site.serve("/evil", rss(f"""
      <item><guid>1</guid><title type="html">T&lt;script&gt;alert(5)&lt;/script&gt;</title>
        <link>javascript:alert(6)</link><description><![CDATA[{evil}]]></description></item>
      <item><guid>2</guid><link>data:text/html,hi</link>
        <content:encoded xmlns:content="http://purl.org/rss/1.0/modules/content/"><![CDATA[
          <p>Body <img src=x onerror=alert(7)></p>]]></content:encoded></item>"""))
    first, second = fetch(news, site.url("/evil"))["items"]
    assert first["summary"] == "Read this\n<script>shown as text</script>"
    assert first["link"] is None
    assert second["link"] is None
    assert second["summary"] == "Body"
    text = json.dumps([first, second])
    for marker in ("alert", "onerror", "onclick", "steal", "display:none", "hidden", "<img"):
        assert marker not in text


def test_control_characters_and_lone_surrogates_are_removed(news: FeedConnector,
                                                            site: FeedSite) -> None:
    body = rss("""
      <item><guid>a&#xD800;b</guid><title>nul&#0;x &#xDFFF; y\x01z\x1b[31m</title>
        <description>bell\x07 &amp;#xD83D; &#55357;x \x0c form</description>
        <author>\x85 Mallory \u202e</author></item>""").encode() + b"\x00\x00"
    site.serve("/ctl", body)
    result = fetch(news, site.url("/ctl"))
    assert first_unstorable(result) is None
    [item] = result["items"]
    for value in (item["id"], item["title"], item["summary"], item["author"]):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", value)
    assert item["author"] == "Mallory"  # the right-to-left override is gone too
    # the same item is the same id on every fetch, whatever the bytes were
    assert fetch(news, site.url("/ctl"))["items"][0]["id"] == item["id"]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>Laughs &lol9;</title>
<item><guid>1</guid><title>&lol9;</title><description>&lol9;&lol9;</description></item>
</channel></rss>"""

QUADRATIC_BLOWUP = ('<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "' + "A" * 50_000 +
                    '">]><rss version="2.0"><channel><title>Blow</title><item><guid>1</guid>'
                    "<description>" + "&a;" * 20_000 + "</description></item></channel></rss>")


@pytest.mark.parametrize("document", [BILLION_LAUGHS, QUADRATIC_BLOWUP],
                         ids=["billion-laughs", "quadratic-blowup"])
def test_entity_expansion_is_never_performed(news: FeedConnector, site: FeedSite,
                                             document: str) -> None:
    site.serve("/bomb", document)
    t0 = time.monotonic()
    try:
        result = fetch(news, site.url("/bomb"))
    except PermanentError:  # refusing it is fine too; hanging or expanding is not
        result = {}
    assert time.monotonic() - t0 < 5
    text = json.dumps(result)
    assert len(text) < 20_000
    assert text.count("lol") < 50
    assert text.count("AAAA") == 0


def test_external_entities_are_never_read_or_fetched(news: FeedConnector, site: FeedSite,
                                                     tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a", encoding="utf-8")
    site.serve("/evil.dtd", f'<!ENTITY leak SYSTEM "file://{secret}">', content_type="text/xml")
    documents = {
        "general": f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>'
                   '<rss version="2.0"><channel><title>T &xxe;</title><item><guid>1</guid>'
                   "<title>&xxe;</title><description>&xxe;</description></item></channel></rss>",
        "parameter": f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY % p SYSTEM "file://{secret}">'
                     '%p;]><rss version="2.0"><channel><title>P</title><item><guid>1</guid>'
                     "</item></channel></rss>",
        "external-dtd": '<?xml version="1.0"?><!DOCTYPE rss SYSTEM "'
                        + site.url("/evil.dtd") + '"><rss version="2.0"><channel><title>D &leak;'
                        "</title><item><guid>1</guid><title>&leak;</title></item></channel></rss>",
        "external-parameter": '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY % d SYSTEM "'
                              + site.url("/evil.dtd") + '"> %d;]><rss version="2.0"><channel>'
                              "<title>&leak;</title><item><guid>1</guid></item></channel></rss>",
    }
    for name, document in documents.items():
        site.serve(f"/{name}", document)
        try:
            result: Any = fetch(news, site.url(f"/{name}"))
        except PermanentError as exc:
            result = str(exc)
        assert "TOP-SECRET" not in json.dumps(result), name
    assert "/evil.dtd" not in site.paths()


HOSTILE_SIZE = 1024 * 1024


@pytest.mark.parametrize("document", [
    # feedparser's prolog regexes are quadratic in a long prolog
    "<?xml version='1.0'?>" + "\n" * HOSTILE_SIZE + rss("").split("?>", 1)[1],
    # its e-mail regex backtracks quadratically on an author made of e-mail characters ...
    rss(f"<item><guid>1</guid><author>a@{'a.' * (HOSTILE_SIZE // 2)}</author></item>"),
    # ... also when the run is split by child elements, or the element never ends
    rss("<item><guid>1</guid><dc:creator xmlns:dc='http://purl.org/dc/elements/1.1/'>"
        + "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.<x/>"
        * (HOSTILE_SIZE // 64) + "</dc:creator></item>"),
    rss("<item><guid>1</guid>" + "<managingEditor>a.a.a." * (HOSTILE_SIZE // 22) + "</item>"),
    # its HTML sanitizer is quadratic on unclosed comments (it is off; ours is linear)
    rss(f"<item><guid>1</guid><description><![CDATA[{'<!--' * (HOSTILE_SIZE // 4)}]]>"
        "</description></item>"),
    rss(f"<item><guid>1</guid><description>{'&lt;!--' * (HOSTILE_SIZE // 7)}</description>"
        "</item>"),
    rss("<item><guid>1</guid><description><![CDATA[" + "<a x='>" * (HOSTILE_SIZE // 7)
        + "]]></description></item>"),
], ids=["prolog", "author-run", "author-split", "author-unclosed", "comments-cdata",
        "comments-escaped", "unclosed-attributes"])
def test_inputs_quadratic_for_feedparser_stay_fast(news: FeedConnector, site: FeedSite,
                                                   document: str) -> None:
    site.serve("/slow", document)
    t0 = time.monotonic()
    try:
        result = fetch(news, site.url("/slow"), timeout=20)
    except PermanentError:
        result = {}
    assert time.monotonic() - t0 < 5
    assert first_unstorable(result) is None


def test_html_to_text_and_prolog_scanner_are_linear() -> None:
    assert html_to_text("<p>a<br/>b</p><ul><li>c</li></ul>x &amp; y", 100).split() == \
        ["a", "b", "c", "x", "&", "y"]
    assert html_to_text("a < b and <3", 100) == "a < b and <3"
    assert html_to_text("keep <a title='x>y'>this</a>", 100) == "keep this"
    for hostile in ("<!--" * 200_000, "<a " * 200_000, "<script>" * 200_000,
                    "<a x='" * 200_000, "<" * 800_000):
        t0 = time.monotonic()
        html_to_text(hostile, 2000)
        assert time.monotonic() - t0 < 1, hostile[:10]
    doc = ("<?xml version='1.0'?>\n<!-- c -->\n<!DOCTYPE rss [ <!ENTITY a \"]>\"> "
           "<!-- ]> --> ]>\n<rss/>")
    assert doc[prolog_end(doc):] == "<rss/>"


FRAGMENTS = ["<rss>", "</rss>", "<channel>", "</channel>", "<item>", "</item>", "<title>",
             "</title>", "<guid>", "</guid>", "<link>", "</link>", "<description>",
             "</description>", "<author>", "</author>", "<![CDATA[", "]]>", "<!--", "-->",
             "<!DOCTYPE x [", "]>", "<!ENTITY e SYSTEM 'file:///etc/passwd'>", "&e;", "&#0;",
             "&#xD800;", "&#99999999;", "&lt;script&gt;", "<feed xmlns='http://www.w3.org/2005/"
             "Atom'>", "<entry>", "</entry>", "<id>", "</id>", "<?xml version='1.0'?>", "&amp;",
             "&nbsp;", "<", ">", "'", '"', "a.", "\x00", "\ud800", "\u202e", "\x1b", "é", " "]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=60),
       st.sampled_from(["application/rss+xml", "text/xml; charset=punycode", "text/html",
                        "application/xml; charset=utf-16"]))
def test_any_body_gives_a_storable_result_or_a_permanent_error(pieces: list[str],
                                                               content_type: str) -> None:
    c = FeedConnector(ConnectionConfig("news", "feed", {}))
    body = "".join(pieces).encode("utf-8", errors="surrogatepass")
    request = httpx.Request("GET", "https://feeds.example/feed.xml")
    response = httpx.Response(200, headers={"Content-Type": content_type}, content=body,
                              request=request)
    try:
        result = c._answer(c._parse(ToolCall("fetch", {"url": str(request.url)}, timeout=5)),
                           response, body, False, "GET https://feeds.example/feed.xml")
    except PermanentError:
        return
    finally:
        c.close()
    assert first_unstorable(result) is None
    assert "root:" not in json.dumps(result)  # /etc/passwd was never read
    for item in result["items"]:
        assert isinstance(item["id"], str)
        assert 0 < len(item["id"]) <= 256
        for key in ("title", "summary", "author", "link"):
            value = item[key]
            assert value is None or not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]",
                                                  value)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture
def feed_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
              site: FeedSite) -> Iterator[Host]:
    connections = Connections([ConnectionConfig("news", "feed", {"allow": [site.origin]})])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def test_a_producer_publishes_each_item_once(feed_host: Host, site: FeedSite,
                                             tmp_path: Path) -> None:
    site.serve("/rss.xml", RSS_FEED)
    url = site.url("/rss.xml")
    producer = f"""
    poll: async (ctx, state) => {{
      const r = await ctx.news.fetch({{ url: "{url}" }});
      for (const item of r.items) {{
        await ctx.publish("items", {{ messageId: item.id, title: item.title ?? item.id,
                                     payload: {{ link: item.link, summary: item.summary }} }});
      }}
      return {{ polls: (state?.polls ?? 0) + 1, etag: r.etag }};
    }},"""
    deploy_source(feed_host, tmp_path, workflow_js(producers=producer, consumers=consumer_js()))
    first = service.trigger(feed_host, "wf", "poll")
    assert first.status is RunStatus.COMMITTED, first.failure
    events = events_of(feed_host)
    assert sorted(e["messageId"] for e in events) == ["https://news.example/2", "urn:news:1"]
    second = service.trigger(feed_host, "wf", "poll")
    assert second.status is RunStatus.COMMITTED, second.failure
    assert len(events_of(feed_host)) == 2  # the same items: nothing new
    assert site.paths() == ["/rss.xml", "/rss.xml"]


def test_the_documented_conditional_producer(feed_host: Host, site: FeedSite,
                                             tmp_path: Path) -> None:
    """docs/connectors.md#feed's producer: the state keeps the validators, a 304 publishes
    nothing, and a changed feed publishes only its new item."""
    version = {"etag": '"v1"', "body": RSS_FEED}

    def conditional(headers: dict[str, str]) -> Answer:
        if headers.get("if-none-match") == version["etag"]:
            return 304, {"ETag": version["etag"]}, b""
        return 200, {"Content-Type": RSS, "ETag": version["etag"]}, version["body"].encode()

    site.routes["/feed.xml"] = conditional
    producer = f"""
    poll: async (ctx, state) => {{
      const r = await ctx.news.fetch({{ url: "{site.url('/feed.xml')}",
                                       etag: state?.etag, modified: state?.modified }});
      for (const item of r.items) {{
        await ctx.publish("items", {{ messageId: item.id, title: item.title ?? item.id,
                                     payload: {{ link: item.link, summary: item.summary }} }});
      }}
      return r.status === 304 ? state : {{ etag: r.etag, modified: r.modified }};
    }},"""
    deploy_source(feed_host, tmp_path, workflow_js(producers=producer, consumers=consumer_js()))
    for _ in range(2):
        out = service.trigger(feed_host, "wf", "poll")
        assert out.status is RunStatus.COMMITTED, out.failure
        assert len(events_of(feed_host)) == 2
    assert site.requests[1][1]["if-none-match"] == '"v1"'
    version.update(etag='"v2"', body=RSS_FEED.replace(
        "<item>", "<item><title>Third</title><guid>urn:news:3</guid></item><item>", 1))
    out = service.trigger(feed_host, "wf", "poll")
    assert out.status is RunStatus.COMMITTED, out.failure
    assert sorted(e["messageId"] for e in events_of(feed_host)) == [
        "https://news.example/2", "urn:news:1", "urn:news:3"]
