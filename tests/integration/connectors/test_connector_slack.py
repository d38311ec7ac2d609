"""The slack connector against a fake Slack Web API (tests/support/fake_slack.py): reads,
cursor pagination, posting with the idempotency key in message metadata, reconcile after a
lost answer, the classification of Slack's errors, bad input, and hostile answers (SPEC §6,
§8, §9; docs/connectors.md#slack) — and, through the host, a consumer posting exactly once
when answers are lost, when the token is refused and rotated, and when rate-limited."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors import catalog
from keepflow.connectors.base import (
    ConnectionConfig,
    ReconcileOutcome,
    ToolCall,
    ToolKind,
)
from keepflow.connectors.config import Connections, parse_connections
from keepflow.connectors.registry import get_connector_class
from keepflow.connectors.secret import Secret
from keepflow.connectors.slack import EVENT_TYPE, SKEW_SECONDS, TEXT_CHARS, SlackConnector
from keepflow.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.storable import first_unstorable
from tests.support.fake_slack import FakeSlack
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

TOKEN = "xoxb-1111-2222-good"
GENERAL = "C0GENERAL"
POST = r"/api/chat\.postMessage"
HISTORY = r"/api/conversations\.history"


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeSlack]:
    fake = FakeSlack(tokens={TOKEN}).start()
    yield fake
    fake.stop()


@pytest.fixture
def api(_server: FakeSlack) -> FakeSlack:
    """The fake workspace, fresh for each test (one server for the module: stopping a
    server takes half a second)."""
    _server.reset()
    return _server


def make(api: FakeSlack | None = None, *, base_url: str | None = None, token: str = TOKEN,
         **settings: Any) -> SlackConnector:
    url = base_url if base_url is not None else f"{api.url}/api/" if api else None
    config = {"token": Secret(token, "SLACK_TOKEN"), **settings}
    if url is not None:
        config["base_url"] = url
    return SlackConnector(ConnectionConfig("team", "slack", config))


@pytest.fixture
def slack(api: FakeSlack) -> SlackConnector:
    return make(api)


def run(c: SlackConnector, tool: str, key: str | None = None, timeout: float = 5.0,
        **params: Any) -> Any:
    call = ToolCall(tool, params, timeout=timeout, idempotency_key=key)
    c.validate(call)
    return c.call(call)


def post_call(key: str = "kf-wf-run-1", **params: Any) -> ToolCall:
    return ToolCall("post_message", {"channel": GENERAL, "text": "hello", **params},
                    timeout=5.0, idempotency_key=key)


# ------------------------------------------------------------------------------ declarations


def test_it_registers_and_declares_every_tool_completely() -> None:
    assert get_connector_class("slack") is SlackConnector
    tools = SlackConnector.tools
    assert list(tools) == ["post_message", "history", "users"]
    post = tools["post_message"]
    assert (post.kind, post.capability, post.risk.value, post.scope, post.reconcile) == (
        ToolKind.MUTATE, "slack.post", "medium", ("channel",), True)
    assert post.reconcile_strategy
    assert "idempotency key" in post.reconcile_strategy
    assert post.reconcile_doc == "docs/connectors.md#slack-reconcile"
    assert (tools["history"].kind, tools["history"].capability, tools["history"].scope) == (
        ToolKind.READ, "slack.read", ("channel",))
    assert (tools["users"].kind, tools["users"].capability) == (ToolKind.READ, "slack.read")
    for spec in tools.values():
        data = catalog.tool_data(spec)
        assert all(data[k] for k in ("description", "params", "result")), spec.name


@pytest.mark.parametrize(("settings", "key"), [
    ({"token": Secret(TOKEN, "T"), "colour": "red"}, "colour"),
    ({}, "token_secret"),
    ({"token": TOKEN}, "token"),  # a literal token in the file
    ({"token": Secret("xoxb bad\nline", "T")}, "token"),
    ({"token": Secret(TOKEN, "T"), "base_url": "ftp://slack.example/api/"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "http://slack.com/api/"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "https://u:p@slack.com/api/"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "https://slack.com/api/?x=1"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "https://slack.com:99999/api/"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": 5}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "max_bytes": 10}, "max_bytes"),
    ({"token": Secret(TOKEN, "T"), "max_bytes": True}, "max_bytes"),
    ({"token": Secret(TOKEN, "T"), "reconcile_messages": 10**6}, "reconcile_messages"),
])
def test_bad_settings_are_refused_naming_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SlackConnector.validate_settings(settings)
    assert info.value.details["key"] == key
    assert TOKEN not in info.value.message
    assert "bad\nline" not in info.value.message


def test_connections_toml_takes_the_token_from_the_environment_or_the_store() -> None:
    doc = {"connections": {"team": {"type": "slack", "token_env": "SLACK_BOT_TOKEN",
                                    "base_url": "http://127.0.0.1:9/api"}}}
    [_, config] = parse_connections(doc, environ={"SLACK_BOT_TOKEN": TOKEN})
    assert isinstance(config.settings["token"], Secret)
    assert TOKEN not in repr(config)
    c = SlackConnector(config)
    assert c._base_url == "http://127.0.0.1:9/api/"
    with pytest.raises(ConfigError) as info:
        parse_connections({"connections": {"team": {"type": "slack", "token": TOKEN}}})
    assert "token" in info.value.message
    assert TOKEN not in info.value.message
    stored = {"connections": {"team": {"type": "slack", "token_secret": "team.token"}}}
    [_, config] = parse_connections(stored, stored={"team.token": TOKEN}.get)
    assert config.settings["token"].reveal() == TOKEN


def test_check_proves_the_token_and_says_when_it_is_refused(api: FakeSlack) -> None:
    make(api).check()
    assert api.requests_to("POST", r"/api/auth\.test")[0].token == TOKEN
    with pytest.raises(AuthError) as info:
        make(api, token="xoxb-wrong-token").check()
    assert "invalid_auth" in info.value.message
    assert "keepflow connection secret team token" in info.value.message
    assert "xoxb-wrong-token" not in json.dumps(info.value.to_dict())
    api.revoked.add(TOKEN)
    with pytest.raises(AuthError, match="revoked"):
        make(api).check()


def test_describe_names_the_channel_and_the_text(slack: SlackConnector) -> None:
    assert slack.describe(post_call(text="Deploy\x1b[31m done " + "x" * 100)) == (
        'post to Slack C0GENERAL (team): "Deploy[31m done ' + "x" * 43 + '…"')
    assert slack.describe(ToolCall("history", {"channel": "#x"}, 1)) == "slack team.history ?"


# ------------------------------------------------------------------------------ reads


def test_history_reads_newest_first_with_threads_and_no_metadata(
        slack: SlackConnector, api: FakeSlack) -> None:
    first, second = api.seed(GENERAL, 2)
    reply = run(slack, "post_message", key="kf-a", channel=GENERAL, text="a reply",
                thread_ts=first)
    result = run(slack, "history", channel=GENERAL)
    assert result == {"messages": [
        {"ts": second, "user": "U0SOMEONE", "text": "msg 1"},
        {"ts": first, "user": "U0SOMEONE", "text": "msg 0", "thread_ts": first,
         "reply_count": 1},
    ], "next_cursor": None}
    assert reply["ts"] not in json.dumps(result)  # replies are in the thread, not the channel
    [req] = api.requests_to("POST", HISTORY)
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "include_all_metadata" not in req.form
    assert req.form == {"channel": GENERAL, "limit": "100"}


def test_history_pages_through_slack_cursors(slack: SlackConnector, api: FakeSlack) -> None:
    stamps = api.seed(GENERAL, 7)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = run(slack, "history", channel=GENERAL, limit=3, cursor=cursor)
        pages += 1
        assert len(page["messages"]) <= 3
        seen += [m["ts"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(stamps))
    window = run(slack, "history", channel=GENERAL, oldest=stamps[1], latest=stamps[5])
    assert [m["ts"] for m in window["messages"]] == list(reversed(stamps[2:5]))
    by_number = run(slack, "history", channel=GENERAL, oldest=float(stamps[5]))
    assert [m["ts"] for m in by_number["messages"]] == [stamps[6]]
    with pytest.raises(PermanentError) as info:
        run(slack, "history", channel=GENERAL, cursor="bm90LWEtY3Vyc29y")
    assert info.value.details["field"] == "cursor"


def test_users_pages_and_never_returns_contact_details(slack: SlackConnector,
                                                       api: FakeSlack) -> None:
    for i in range(5):
        api.add_member(f"U0PERSON{i}", f"person{i}", f"Person {i}")
    api.members.append({"id": "U0ROBOT", "name": "robot", "is_bot": True, "deleted": True,
                        "profile": {"real_name": "Robot", "email": "robot@example.com"}})
    first = run(slack, "users", limit=4)
    assert first["users"][0] == {"id": "U0PERSON0", "name": "person0",
                                 "real_name": "Person 0", "is_bot": False, "deleted": False,
                                 "tz": "Europe/Berlin"}
    rest = run(slack, "users", limit=4, cursor=first["next_cursor"])
    assert rest["next_cursor"] is None
    ids = [u["id"] for u in first["users"] + rest["users"]]
    assert ids == [*(f"U0PERSON{i}" for i in range(5)), "U0ROBOT"]
    assert rest["users"][-1] == {"id": "U0ROBOT", "name": "robot", "real_name": "Robot",
                                 "is_bot": True, "deleted": True}
    text = json.dumps([first, rest])
    for private in ("@example.com", "+49", "avatars", "phone", "email"):
        assert private not in text


# ------------------------------------------------------------------------------ posting


def test_a_post_carries_the_idempotency_key_in_its_metadata(slack: SlackConnector,
                                                            api: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deployed*"}}]
    result = run(slack, "post_message", key="kf-wf-run-1", channel=GENERAL,
                 text="Deployed v2", blocks=blocks)
    [message] = api.posted(GENERAL)
    assert result == {"channel": GENERAL, "ts": message["ts"],
                      "permalink": "https://keepflow-fake.slack.com/archives/C0GENERAL/p"
                                   + message["ts"].replace(".", "")}
    assert message["metadata"] == {"event_type": EVENT_TYPE,
                                   "event_payload": {"idempotency_key": "kf-wf-run-1"}}
    assert (message["text"], message["blocks"]) == ("Deployed v2", blocks)
    [req] = api.requests_to("POST", POST)
    assert req.headers["content-type"].startswith("application/json")
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.json["metadata"]["event_payload"] == {"idempotency_key": "kf-wf-run-1"}


def test_a_post_whose_permalink_cannot_be_had_is_still_posted(slack: SlackConnector,
                                                             api: FakeSlack) -> None:
    api.fault("status", status=500, path=r"getPermalink")
    result = run(slack, "post_message", key="kf-1", channel=GENERAL, text="hi")
    assert result["permalink"] is None
    assert len(api.posted(GENERAL)) == 1


def test_an_answer_lost_after_the_post_is_reconciled_as_applied(slack: SlackConnector,
                                                                api: FakeSlack) -> None:
    api.seed(GENERAL, 3)
    api.fault("apply_then_drop", path=POST)
    with pytest.raises(UncertainOutcome) as info:
        slack.call(post_call())
    assert info.value.details["sent"] is True
    [message] = api.posted(GENERAL)
    answer = slack.reconcile(post_call())
    assert answer.outcome is ReconcileOutcome.APPLIED
    assert answer.result["channel"] == GENERAL
    assert answer.result["ts"] == message["ts"]
    assert answer.result["permalink"].endswith(message["ts"].replace(".", ""))
    assert len(api.with_key("kf-wf-run-1")) == 1  # reconcile never posts
    [req] = api.requests_to("POST", HISTORY)
    assert req.form["include_all_metadata"] == "1"


def test_a_post_lost_before_slack_acted_is_reconciled_as_not_applied(
        slack: SlackConnector, api: FakeSlack) -> None:
    api.seed(GENERAL, 3)
    api.fault("drop", path=POST)
    with pytest.raises(UncertainOutcome):
        slack.call(post_call())
    assert api.posted(GENERAL) == []
    answer = slack.reconcile(post_call())
    assert answer.outcome is ReconcileOutcome.FAILED
    assert "none of the 3 messages of C0GENERAL (all of them)" in answer.detail
    slack.call(post_call())  # the host posts again: one copy in all
    assert len(api.with_key("kf-wf-run-1")) == 1


def test_reconcile_reads_across_history_pages(slack: SlackConnector, api: FakeSlack) -> None:
    slack.call(post_call(key="kf-deep"))
    api.seed(GENERAL, 450)  # the post is now the 451st newest: on the third page of 200
    answer = slack.reconcile(post_call(key="kf-deep"))
    assert answer.outcome is ReconcileOutcome.APPLIED
    pages = api.requests_to("POST", HISTORY)
    assert [r.form.get("limit") for r in pages] == ["200", "200", "200"]
    assert "cursor" not in pages[0].form
    assert pages[1].form["cursor"]
    assert slack.reconcile(post_call(key="kf-never")).outcome is ReconcileOutcome.FAILED


def test_reconcile_reads_only_the_newest_reconcile_messages(api: FakeSlack) -> None:
    c = make(api, reconcile_messages=100)
    c.call(post_call(key="kf-old"))
    api.seed(GENERAL, 150)
    answer = c.reconcile(post_call(key="kf-old"))
    # The documented limit: a post older than the window counts as not applied.
    assert answer.outcome is ReconcileOutcome.FAILED
    assert "newest 100 messages" in answer.detail
    assert [r.form["limit"] for r in api.requests_to("POST", HISTORY)] == ["100"]


def test_with_the_attempts_time_reconcile_reads_only_since_and_never_guesses(
        api: FakeSlack) -> None:
    """The host says when the attempt was recorded: reconcile reads the history since then
    (less the skew margin), and when more was posted since than it reads, it cannot tell."""
    c = make(api, reconcile_messages=100)
    api.seed(GENERAL, 30)  # older than the attempt: never read
    time.sleep(0.01)
    at = datetime.now(UTC) + timedelta(seconds=SKEW_SECONDS)  # the margin put just after them
    call = replace(post_call(key="kf-since"), attempted_at=at)
    c.call(call)
    answer = c.reconcile(call)
    assert answer.outcome is ReconcileOutcome.APPLIED
    [page] = api.requests_to("POST", HISTORY)
    assert float(page.form["oldest"]) == pytest.approx(at.timestamp() - SKEW_SECONDS)
    never = replace(post_call(key="kf-never"), attempted_at=at)
    assert c.reconcile(never).outcome is ReconcileOutcome.FAILED  # all since: definite
    api.seed(GENERAL, 150)  # more since the attempt than reconcile reads
    busy = c.reconcile(never)
    assert busy.outcome is ReconcileOutcome.RETRY
    assert "more were posted since the attempt" in busy.detail


def test_reconcile_of_a_reply_reads_the_thread(slack: SlackConnector, api: FakeSlack) -> None:
    [parent] = api.seed(GENERAL, 1)
    api.fault("apply_then_drop", path=POST)
    call = post_call(key="kf-reply", thread_ts=parent)
    with pytest.raises(UncertainOutcome):
        slack.call(call)
    api.seed(GENERAL, 5)
    answer = slack.reconcile(call)
    assert answer.outcome is ReconcileOutcome.APPLIED
    [req] = api.requests_to("POST", r"/api/conversations\.replies")
    assert (req.form["ts"], req.form["include_all_metadata"]) == (parent, "1")
    missing = slack.reconcile(post_call(key="kf-other", thread_ts=parent))
    assert missing.outcome is ReconcileOutcome.FAILED


def test_reconcile_of_a_reply_in_a_long_thread_asks_again(api: FakeSlack) -> None:
    c = make(api, reconcile_messages=100)
    [parent] = api.seed(GENERAL, 1)
    for _ in range(120):
        c.call(post_call(key="kf-filler", thread_ts=parent))
    answer = c.reconcile(post_call(key="kf-missing", thread_ts=parent))
    assert answer.outcome is ReconcileOutcome.RETRY  # the newest replies were not read


def test_a_message_with_the_key_from_someone_else_does_not_count(
        slack: SlackConnector, api: FakeSlack) -> None:
    with api.lock:
        api._store(api.channels[GENERAL], {
            "user": "U0MALLORY", "text": "spoof",
            "metadata": {"event_type": EVENT_TYPE,
                         "event_payload": {"idempotency_key": "kf-wf-run-1"}}})
    assert slack.reconcile(post_call()).outcome is ReconcileOutcome.FAILED


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500, "path": HISTORY},
    {"kind": "rate_limit", "path": HISTORY},
    {"kind": "drop", "path": HISTORY},
    {"kind": "status", "status": 200, "body": {"ok": False, "error": "not_in_channel"},
     "path": HISTORY},
    {"kind": "status", "status": 200, "body": {"ok": False, "error": "invalid_auth"},
     "path": r"/api/auth\.test"},
    {"kind": "status", "status": 200, "body": b"<html>", "path": HISTORY},
])
def test_reconcile_asks_again_when_it_cannot_look(slack: SlackConnector, api: FakeSlack,
                                                  fault: dict[str, Any]) -> None:
    slack.call(post_call())
    kind = fault.pop("kind")
    api.fault(kind, **fault)
    answer = slack.reconcile(post_call())
    assert answer.outcome is ReconcileOutcome.RETRY
    assert answer.detail
    assert slack.reconcile(post_call()).outcome is ReconcileOutcome.APPLIED  # and then it can


# ------------------------------------------------------------------------------ failures


ERRORS = [
    # (tool, params, fault body or None, error class, words in the message, field)
    ("post_message", {"channel": "C0NOSUCH"}, None, PreconditionError, "channel_not_found",
     "channel"),
    ("post_message", {"channel": "C0OUTSIDE"}, None, PermissionDenied, "not_in_channel",
     "channel"),
    ("post_message", {"channel": "C0ARCHIVE"}, None, PermissionDenied, "is_archived",
     "channel"),
    ("history", {"channel": "C0OUTSIDE"}, None, PermissionDenied, "/invite", "channel"),
    ("history", {"channel": "C0NOSUCH"}, None, PreconditionError, "channel ID", "channel"),
    ("post_message", {}, {"ok": False, "error": "msg_too_long"}, PermanentError, "too long",
     "text"),
    ("post_message", {}, {"ok": False, "error": "invalid_blocks"}, PermanentError, "blocks",
     "blocks"),
    ("post_message", {}, {"ok": False, "error": "no_text"}, PermanentError, "no text", "text"),
    ("post_message", {}, {"ok": False, "error": "invalid_arguments"}, PermanentError,
     "arguments", None),
    ("post_message", {}, {"ok": False, "error": "restricted_action"}, PermissionDenied,
     "admin", "channel"),
    ("post_message", {}, {"ok": False, "error": "token_expired"}, AuthError, "expired", None),
    ("post_message", {}, {"ok": False, "error": "account_inactive"}, AuthError, "deactivated",
     None),
    ("post_message", {}, {"ok": False, "error": "something_new"}, PermanentError,
     "something_new", None),
    ("post_message", {}, {"ok": False, "error": "internal_error"}, UncertainOutcome,
     "may or may not", None),
    ("post_message", {}, {"ok": False, "error": "fatal_error"}, UncertainOutcome, "looks for",
     None),
    ("history", {}, {"ok": False, "error": "internal_error"}, TransientError, "tries again",
     None),
    ("users", {}, {"ok": False, "error": "invalid_cursor"}, PermanentError, "cursor",
     "cursor"),
]


@pytest.mark.parametrize(("tool", "params", "body", "cls", "words", "field"), ERRORS,
                         ids=[f"{e[0]}-{e[2]['error'] if e[2] else e[1]['channel']}"
                              for e in ERRORS])
def test_slack_errors_have_their_class(slack: SlackConnector, api: FakeSlack, tool: str,
                                       params: dict[str, Any], body: dict[str, Any] | None,
                                       cls: type[ConnectorError], words: str,
                                       field: str | None) -> None:
    defaults = {"post_message": {"channel": GENERAL, "text": "hi"},
                "history": {"channel": GENERAL}, "users": {}}[tool]
    if body is not None:
        api.fault("status", status=200, body=body, methods=("POST",))
    with pytest.raises(ConnectorError) as info:
        run(slack, tool, key="kf-1", **{**defaults, **params})
    assert type(info.value) is cls, info.value.message
    assert words in info.value.message
    assert info.value.details.get("field") == field
    assert "docs/connectors.md#slack" in info.value.message
    assert api.posted(GENERAL) == []


def test_a_missing_scope_asks_to_reconnect_naming_the_scope(api: FakeSlack) -> None:
    api.scopes[TOKEN] = frozenset({"channels:history"})
    with pytest.raises(AuthError) as info:
        make(api).call(post_call())
    assert "missing_scope" in info.value.message
    assert "chat:write" in info.value.message
    assert "keepflow connection secret team token" in info.value.message


@pytest.mark.parametrize(("status", "tool", "cls"), [
    (500, "post_message", UncertainOutcome), (502, "post_message", UncertainOutcome),
    (503, "history", TransientError), (500, "users", TransientError),
    (401, "history", AuthError), (403, "post_message", PermissionDenied),
    (404, "post_message", PreconditionError), (400, "history", PermanentError),
])
def test_statuses_without_a_slack_answer_have_their_class(
        slack: SlackConnector, api: FakeSlack, status: int, tool: str,
        cls: type[ConnectorError]) -> None:
    api.fault("status", status=status, body=b"<html>Bad Gateway</html>", methods=("POST",),
              headers={"Content-Type": "text/html"})
    params = {"channel": GENERAL, "text": "hi"} if tool == "post_message" else \
        {"channel": GENERAL} if tool == "history" else {}
    with pytest.raises(ConnectorError) as info:
        run(slack, tool, key="kf-1", **params)
    assert type(info.value) is cls, info.value.message
    assert info.value.details["status"] == status


def test_a_redirect_is_never_followed(slack: SlackConnector, api: FakeSlack) -> None:
    api.fault("status", status=302, body=b"", path=POST,
              headers={"Location": "https://evil.example/steal"})
    with pytest.raises(PermanentError, match="never followed"):
        slack.call(post_call())
    assert [r.path for r in api.requests] == ["/api/chat.postMessage"]


def test_an_unknown_method_means_base_url_is_wrong(api: FakeSlack) -> None:
    with pytest.raises(PreconditionError, match="base_url"):
        make(api, base_url=f"{api.url}/elsewhere/").check()


@pytest.mark.parametrize("tool", ["post_message", "history"])
def test_a_rate_limit_is_transient_with_its_retry_after(slack: SlackConnector,
                                                        api: FakeSlack, tool: str) -> None:
    api.fault("rate_limit", retry_after=7, methods=("POST",))
    params = {"channel": GENERAL, "text": "hi"} if tool == "post_message" else \
        {"channel": GENERAL}
    with pytest.raises(TransientError) as info:
        run(slack, tool, key="kf-1", **params)
    assert info.value.retry_after == 7.0
    assert "rate-limited" in info.value.message
    assert api.posted(GENERAL) == []
    assert len(api.requests) == 1  # the sdk did not retry by itself
    api.fault("status", status=200, body={"ok": False, "error": "ratelimited"},
              methods=("POST",), headers={"Retry-After": "99999"})
    with pytest.raises(TransientError) as info:
        run(slack, tool, key="kf-1", **params)
    assert info.value.retry_after == 300.0  # a Retry-After is honoured up to 300 s


def test_a_refused_connection_is_transient_and_not_sent_even_for_a_post() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = make(base_url=f"http://127.0.0.1:{port}/api/")
    for call in (post_call(), ToolCall("history", {"channel": GENERAL}, 2.0)):
        with pytest.raises(TransientError) as info:
            c.call(call)
        assert info.value.details["sent"] is False
        assert "not sent" in info.value.message


class SilentServer:
    """Accepts connections and reads requests; answers nothing, or a body that drips."""

    def __init__(self, drip: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.drip = drip
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if self.drip:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n{")
                while not self.stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(0.05)
            self.stop.wait(10)
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("drip", [False, True], ids=["silent", "dripping"])
def test_a_server_that_does_not_answer_is_bounded_by_the_call_timeout(drip: bool) -> None:
    server = SilentServer(drip=drip)
    try:
        c = make(base_url=server.url)
        for call, cls in ((ToolCall("post_message", {"channel": GENERAL, "text": "hi"}, 0.4,
                                    "kf-1"), UncertainOutcome),
                          (ToolCall("history", {"channel": GENERAL}, 0.4), TransientError)):
            t0 = time.monotonic()
            with pytest.raises(ConnectorError) as info:
                c.call(call)
            assert type(info.value) is cls, info.value.message
            assert time.monotonic() - t0 < 1.5
    finally:
        server.close()


BAD_INPUT = [
    ("post_message", {"text": "hi"}, "channel"),
    ("post_message", {"channel": "#general", "text": "hi"}, "channel"),
    ("post_message", {"channel": "general", "text": "hi"}, "channel"),
    ("post_message", {"channel": GENERAL}, "text"),
    ("post_message", {"channel": GENERAL, "text": "   "}, "text"),
    ("post_message", {"channel": GENERAL, "text": 5}, "text"),
    ("post_message", {"channel": GENERAL, "text": "x" * 40_001}, "text"),
    ("post_message", {"channel": GENERAL, "text": "nul\x00"}, "text"),
    ("post_message", {"channel": GENERAL, "text": "half \ud800"}, "text"),
    ("post_message", {"channel": GENERAL, "text": "hi", "blocks": "[]"}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi", "blocks": []}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi", "blocks": [{"text": "x"}]}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi",
                      "blocks": [{"type": "divider"}] * 51}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi",
                      "blocks": [{"type": "section", "text": "\ud83d"}]}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi",
                      "blocks": [{"type": "section", "x": float("nan")}]}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi",
                      "blocks": [{"type": "section", "text": "y" * 70_000}]}, "blocks"),
    ("post_message", {"channel": GENERAL, "text": "hi", "thread_ts": "yesterday"},
     "thread_ts"),
    ("post_message", {"channel": GENERAL, "text": "hi", "thread_ts": 1700000000.1},
     "thread_ts"),
    ("post_message", {"channel": GENERAL, "text": "hi", "as_user": True}, "as_user"),
    ("history", {}, "channel"),
    ("history", {"channel": GENERAL, "limit": 201}, "limit"),
    ("history", {"channel": GENERAL, "limit": 0}, "limit"),
    ("history", {"channel": GENERAL, "limit": True}, "limit"),
    ("history", {"channel": GENERAL, "limit": 2.5}, "limit"),
    ("history", {"channel": GENERAL, "oldest": "last week"}, "oldest"),
    ("history", {"channel": GENERAL, "latest": -1}, "latest"),
    ("history", {"channel": GENERAL, "latest": float("inf")}, "latest"),
    ("history", {"channel": GENERAL, "cursor": "has spaces"}, "cursor"),
    ("history", {"channel": GENERAL, "cursor": 7}, "cursor"),
    ("users", {"limit": 1000}, "limit"),
    ("users", {"cursor": "x" * 2000}, "cursor"),
    ("users", {"email": True}, "email"),
]


@pytest.mark.parametrize(("tool", "params", "field"), BAD_INPUT,
                         ids=[f"{t}-{f}-{i}" for i, (t, _, f) in enumerate(BAD_INPUT)])
def test_bad_params_are_refused_before_anything_is_sent(slack: SlackConnector,
                                                        api: FakeSlack, tool: str,
                                                        params: dict[str, Any],
                                                        field: str) -> None:
    call = ToolCall(tool, params, timeout=5.0, idempotency_key="kf-1")
    with pytest.raises(PermanentError) as info:
        slack.validate(call)
    assert info.value.details["field"] == field
    assert f"params.{field}" in info.value.message
    with pytest.raises(PermanentError):
        slack.call(call)
    assert api.requests == []


def test_null_params_are_the_same_as_leaving_them_out(slack: SlackConnector,
                                                      api: FakeSlack) -> None:
    api.seed(GENERAL, 2)
    result = run(slack, "history", channel=GENERAL, oldest=None, latest=None, limit=None,
                 cursor=None)
    assert len(result["messages"]) == 2
    assert run(slack, "post_message", key="k", channel=GENERAL, text="x", blocks=None,
               thread_ts=None)["ts"]


# ------------------------------------------------------------------------------ hostile answers


def _hostile_history(api: FakeSlack, body: bytes | dict[str, Any],
                     content_type: str = "application/json") -> None:
    api.fault("status", status=200, body=body, path=HISTORY,
              headers={"Content-Type": content_type})


DEEP = b'{"ok": true, "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


@pytest.mark.parametrize("body", [
    b"<html>Slack is down</html>", b"", b"[1, 2]", b'"ok"', b"null", b'{"ok": "yes"}',
    b'{"ok": true}', b'{"ok": true, "messages": {"ts": "1"}}',
    b'{"ok": true, "messages": [{"ts": 1700000000.1}]}',
    b'{"ok": true, "messages": ["text"]}',
    b'{"ok": true, "messages": [], "response_metadata": {"next_cursor": 5}}',
    b'{"ok": true, "messages": [], "response_metadata": {"next_cursor": "a b"}}',
    b'{"ok": true, "messages": [{"ts": NaN}]}', DEEP,
], ids=["html", "empty", "list", "string", "null", "ok-yes", "no-messages",
        "messages-object", "ts-number", "message-string", "cursor-number", "cursor-spaces",
        "nan", "deep"])
def test_malformed_history_answers_are_transient(slack: SlackConnector, api: FakeSlack,
                                                 body: bytes) -> None:
    _hostile_history(api, body)
    with pytest.raises(TransientError) as info:
        slack.call(ToolCall("history", {"channel": GENERAL}, 5.0))
    assert "cannot be read" in info.value.message


@pytest.mark.parametrize("body", [
    b"<html>oops</html>", b'{"ok": true}', b'{"ok": true, "ts": 17}', b"[true]",
    b'{"ok": true, "ts": "1700000000.000100"' + b" " * 10,
], ids=["html", "no-ts", "ts-number", "list", "cut-off"])
def test_a_post_answered_unreadably_is_uncertain(slack: SlackConnector, api: FakeSlack,
                                                 body: bytes) -> None:
    api.fault("apply_then_status", status=200, body=body, path=POST)
    with pytest.raises(UncertainOutcome):
        slack.call(post_call())
    assert slack.reconcile(post_call()).outcome is ReconcileOutcome.APPLIED


def test_strings_slack_sends_are_cleaned_and_bounded(slack: SlackConnector,
                                                     api: FakeSlack) -> None:
    body = json.dumps({"ok": True, "messages": [
        {"ts": "1700000001.000100", "user": "U0X\u202eY", "text":
         "bell\x07 nul\x00 esc\x1b[31m rtl\u202eevil\u2066 half\ud800 line\r\nnext\x85",
         "thread_ts": ["x"], "reply_count": "many"},
        {"ts": "1700000002.000100", "user": "U0LONG", "text": "w" * 100_000,
         "reply_count": True},
        {"ts": "1700000003.000100", "text": {"nested": "object"}, "user": 12},
    ]}).encode()
    _hostile_history(api, body, "application/json; charset=punycode")
    result = slack.call(ToolCall("history", {"channel": GENERAL}, 5.0))
    assert first_unstorable(result) is None
    first, second, third = result["messages"]
    assert first == {"ts": "1700000001.000100", "user": None,
                     "text": "bell nul esc[31m rtlevil half line\nnext"}
    assert len(second["text"]) == TEXT_CHARS
    assert second["truncated"] is True
    assert "reply_count" not in second
    assert third == {"ts": "1700000003.000100", "user": None, "text": ""}


def test_an_answer_over_max_bytes_is_refused_without_holding_it(api: FakeSlack) -> None:
    c = make(api, max_bytes=64 * 1024)
    big = json.dumps({"ok": True, "messages": [
        {"ts": "1700000001.000100", "text": "z" * 100_000}]}).encode()
    _hostile_history(api, big)
    with pytest.raises(TransientError, match="max_bytes"):
        c.call(ToolCall("history", {"channel": GENERAL}, 5.0))
    api.fault("apply_then_status", status=200, body=big, path=POST)
    with pytest.raises(UncertainOutcome, match="max_bytes"):
        c.call(post_call())


def test_a_more_members_than_asked_answer_is_cut_to_the_limit(slack: SlackConnector,
                                                             api: FakeSlack) -> None:
    members = [{"id": f"U{i:08d}", "name": f"n{i}"} for i in range(50)]
    api.fault("status", status=200, body={"ok": True, "members": members}, path=r"users")
    result = run(slack, "users", limit=10)
    assert len(result["users"]) == 10
    api.fault("status", status=200, body={"ok": True, "members": [{"id": "nobody"}]},
              path=r"users")
    with pytest.raises(TransientError, match="valid id"):
        run(slack, "users")


def test_the_token_never_appears_in_what_slack_echoes(slack: SlackConnector,
                                                      api: FakeSlack) -> None:
    api.fault("status", status=200, path=POST, body={
        "ok": False, "error": "missing_scope", "needed": f"chat:write {TOKEN}"})
    with pytest.raises(AuthError) as info:
        slack.call(post_call())
    assert TOKEN not in json.dumps(info.value.to_dict())
    assert "***" in info.value.message
    api.fault("status", status=200, path=HISTORY, body=f"token={TOKEN} oops".encode())
    with pytest.raises(TransientError) as info2:
        slack.call(ToolCall("history", {"channel": GENERAL}, 5.0))
    assert TOKEN not in json.dumps(info2.value.to_dict())
    api.fault("status", status=200, path=HISTORY, body={"ok": True, "messages": [
        {"ts": "1700000001.000100", "text": f"my token is {TOKEN}"}]})
    result = slack.call(ToolCall("history", {"channel": GENERAL}, 5.0))
    assert result["messages"][0]["text"] == "my token is ***"


# ------------------------------------------------------------------------------ through the host


MUTATE = """await ctx.team.post_message({ channel: "C0GENERAL",
                                  text: "New: " + prepared.data.event.title });"""
NEXT = "return { saw: mutation.status, result: mutation.result ?? null };"


def _deploy(host: Host, tmp_path: Path, ids: list[str]) -> None:
    deploy_source(host, tmp_path, workflow_js(
        producers=seed_producer(ids), consumers=consumer_js(mutate=MUTATE, next_=NEXT)))
    service.trigger(host, "wf", "seed")


@pytest.fixture
def slack_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
               api: FakeSlack) -> Iterator[Host]:
    connections = Connections([ConnectionConfig("team", "slack", {
        "token": Secret(TOKEN, "SLACK_TOKEN"), "base_url": f"{api.url}/api/"})])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def _keys(api: FakeSlack) -> list[str]:
    return [m["metadata"]["event_payload"]["idempotency_key"] for m in api.posted(GENERAL)]


def test_a_consumer_posts_one_message_per_event(slack_host: Host, api: FakeSlack,
                                                tmp_path: Path) -> None:
    _deploy(slack_host, tmp_path, ["a", "b"])
    report = service.drain(slack_host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED] * 2
    ledger = service.ledger(slack_host, "wf")["mutations"]
    assert sorted(m["status"] for m in ledger) == ["applied", "applied"]
    assert all(m["resolvedBy"] == "host" for m in ledger)
    assert sorted(_keys(api)) == sorted(m["idempotencyKey"] for m in ledger)
    assert sorted(m["text"] for m in api.posted(GENERAL)) == ["New: Item a", "New: Item b"]
    assert ledger[0]["description"].startswith('post to Slack C0GENERAL (team): "New: Item')
    assert service.drain(slack_host).runs == []  # nothing is posted twice


def test_lost_answers_are_reconciled_and_post_exactly_once(slack_host: Host, api: FakeSlack,
                                                           tmp_path: Path) -> None:
    _deploy(slack_host, tmp_path, ["a", "b"])
    api.seed(GENERAL, 5)
    api.fault("apply_then_drop", path=POST)
    first = service.trigger(slack_host, "wf", "work")
    assert first.status is RunStatus.COMMITTED, first.failure
    [m] = run_detail(slack_host, first.run_id)["mutations"]
    assert (m["status"], m["resolvedBy"], m["reconcileAttempts"]) == ("applied", "reconcile",
                                                                      1)
    assert _keys(api) == [m["idempotencyKey"]]
    assert m["result"]["ts"] == api.posted(GENERAL)[0]["ts"]

    api.fault("drop", path=POST)
    second = service.trigger(slack_host, "wf", "work")
    assert second.status is RunStatus.COMMITTED, second.failure
    muts = run_detail(slack_host, second.run_id)["mutations"]
    assert [(x["status"], x["resolvedBy"]) for x in muts] == [("failed", "reconcile"),
                                                             ("applied", "host")]
    assert sorted(m["text"] for m in api.posted(GENERAL)) == ["New: Item a", "New: Item b"]
    assert _keys(api)[1] == muts[1]["idempotencyKey"]


def test_a_rate_limited_post_backs_off_and_commits(slack_host: Host, api: FakeSlack,
                                                   tmp_path: Path, clock: FakeClock) -> None:
    _deploy(slack_host, tmp_path, ["a"])
    api.fault("rate_limit", retry_after=2, path=POST)
    out = service.trigger(slack_host, "wf", "work")
    assert out.status is RunStatus.COMMITTED, out.failure
    muts = run_detail(slack_host, out.run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert muts[0]["error"]["code"] == "transient"
    assert sum(clock.slept) >= 2  # it waited for Retry-After
    assert len(api.posted(GENERAL)) == 1


def test_a_refused_token_asks_to_reconnect_and_the_run_commits_after_rotation(
        store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
        api: FakeSlack) -> None:
    (tmp_path / "home").mkdir()
    host = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
                pool=pool, policies=PolicyBook(quick_policy()))
    try:
        service.connection_add(host, "team", "slack", {"base_url": f"{api.url}/api/"},
                               {"token": "xoxb-expired-0000"})
        _deploy(host, tmp_path, ["a"])
        failed = service.trigger(host, "wf", "work")
        assert failed.status is RunStatus.FAILED
        assert failed.failure is not None
        assert failed.failure["class"] == "auth"
        [item] = service.inbox(host)
        assert (item["kind"], item["connection"]) == ("reconnect", "team")
        assert "invalid_auth" in item["why"]
        assert "xoxb-expired-0000" not in json.dumps(item)
        assert api.posted(GENERAL) == []

        # The store notices a rotated credential by its updated_at: the fake clock must move.
        clock.advance(1)
        done = service.connection_secret(host, "team", "token", TOKEN)
        assert done["retried"] == [item["run"]]
        assert service.show_run(host, failed.run_id)["status"] == "committed"
        [message] = api.posted(GENERAL)
        assert message["text"] == "New: Item a"
        assert service.inbox(host) == []
        check = service.connection_check(host, "team")
        assert check["ok"] is True
    finally:
        host.close()

