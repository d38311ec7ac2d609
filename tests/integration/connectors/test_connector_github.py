"""The ``github`` connector against a fake GitHub REST API on loopback
(tests/support/fake_github.py, built from docs.github.com/en/rest): every tool, pagination,
the reconcile of each mutation after an uncertain outcome (SPEC §6) — despite the search
index's lag —, the failure classes (SPEC §8: 401, both rate limits, 403, 404, 410, 422, 5xx,
dropped connections), bad params, the repositories allow-list and hostile answers. The last
tests run workflows through ``keepflow.service`` on SQLite and PostgreSQL: a mutation, both
reconciles, the Reconnect flow and a rate limit (docs/connectors.md#github)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors import github as github_module
from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall, ToolKind
from keepflow.connectors.config import parse_connections
from keepflow.connectors.github import SETTLE_SECONDS, SKEW_SECONDS, GitHubConnector
from keepflow.connectors.github_api import iso
from keepflow.connectors.github_params import marker
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
from keepflow.ids import new_id
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.fake_github import RATE_FORMS, FakeGitHub
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

TOKEN = "good-token"
REPO = "acme/web"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


@pytest.fixture
def api(_server: FakeGitHub) -> FakeGitHub:
    """The module's fake GitHub, fresh for each test, with one repository."""
    _server.reset()
    _server.add_repo(REPO, collaborators={"alice"})
    return _server


_OPEN: list[GitHubConnector] = []


@pytest.fixture(autouse=True)
def _close_connectors() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(api: FakeGitHub, token: str = TOKEN, **settings: Any) -> GitHubConnector:
    settings.setdefault("base_url", api.url)
    c = GitHubConnector(ConnectionConfig("gh", "github",
                                         {"token": Secret(token, "GITHUB_TOKEN"), **settings}))
    _OPEN.append(c)
    return c


def host_key() -> str:
    """A key as the host makes them: ``kf-<workflow id>-<run id>-<attempt>``."""
    return f"kf-{new_id()}-{new_id()}-1"


def tc(tool: str, key: str | None = None, **params: Any) -> ToolCall:
    mutation = tool != "list_issues"
    return ToolCall(tool, params, timeout=5.0,
                    idempotency_key=(key or "kf-wf-run-1") if mutation else None)


def attempted(call: ToolCall, ago: float = 0.0) -> ToolCall:
    """The call as the host hands it over: recorded ``in_flight`` ``ago`` seconds ago."""
    return replace(call, attempted_at=datetime.now(UTC) - timedelta(seconds=ago))


def posts(api: FakeGitHub) -> int:
    return len([r for r in api.requests if r.method == "POST"])


# -- declarations and settings ---------------------------------------------------------------


def test_it_is_a_registered_connector_type_with_full_declarations() -> None:
    assert get_connector_class("github") is GitHubConnector
    specs = GitHubConnector.tools
    assert {n: (s.kind, s.capability, s.risk.value, s.scope, s.reconcile)
            for n, s in specs.items()} == {
        "list_issues": (ToolKind.READ, "github.read", "low", ("repository",), False),
        "create_issue": (ToolKind.MUTATE, "github.write", "medium", ("repository",), True),
        "comment": (ToolKind.MUTATE, "github.write", "medium", ("repository",), True),
        "add_labels": (ToolKind.MUTATE, "github.write", "low", ("repository",), True),
    }
    for spec in specs.values():
        assert spec.description
        assert spec.params
        assert spec.result
        if spec.kind is ToolKind.MUTATE:
            assert spec.reconcile_strategy
            assert spec.reconcile_doc.endswith("#github-reconcile")


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({}, "token_secret"),
        ({"token": "ghp_plain_in_the_file"}, "token"),
        ({"token": Secret("has space", "T")}, "token"),
        ({"token": Secret("", "T")}, "token"),
        ({"token": Secret("x", "T"), "base_url": "ftp://api.github.com"}, "base_url"),
        ({"token": Secret("x", "T"), "base_url": "https://u:p@ghe.example.com/api/v3"},
         "base_url"),
        ({"token": Secret("x", "T"), "base_url": "https://h/api?x=1"}, "base_url"),
        ({"token": Secret("x", "T"), "base_url": 5}, "base_url"),
        ({"token": Secret("x", "T"), "repositories": "acme/web"}, "repositories"),
        ({"token": Secret("x", "T"), "repositories": []}, "repositories"),
        ({"token": Secret("x", "T"), "repositories": ["acme"]}, "repositories"),
        ({"token": Secret("x", "T"), "repositories": ["acme/../x"]}, "repositories"),
        ({"token": Secret("x", "T"), "repositories": ["ac me/web"]}, "repositories"),
        ({"token": Secret("x", "T"), "org": "acme"}, "org"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        GitHubConnector.validate_settings(settings)
    assert info.value.details["key"] == key
    assert "ghp_plain_in_the_file" not in info.value.message


def test_connections_toml_takes_the_token_from_the_environment() -> None:
    doc = {"connections": {"gh": {"type": "github", "token_env": "GH_TOKEN",
                                  "base_url": "https://ghe.example.com/api/v3",
                                  "repositories": ["acme/*", "tools/cli"]}}}
    [_, cfg] = parse_connections(doc, environ={"GH_TOKEN": "ghp_abc"})
    assert isinstance(cfg.settings["token"], Secret)
    assert "ghp_abc" not in repr(cfg)
    with pytest.raises(ConfigError, match="token_env"):
        parse_connections({"connections": {"gh": {"type": "github", "token_env": "GH_TOKEN"}}},
                          environ={"GH_TOKEN": "two words"})


def test_check_proves_the_token_and_each_exact_repository(api: FakeGitHub) -> None:
    api.add_repo("tools/cli")
    make(api, repositories=[REPO, "Tools/CLI", "acme/*"]).check()
    assert [r.path for r in api.requests] == ["/user", "/repos/acme/web", "/repos/Tools/CLI"]
    with pytest.raises(AuthError, match="refused the token"):
        make(api, token="revoked").check()
    with pytest.raises(PreconditionError, match="no such repository acme/gone"):
        make(api, repositories=["acme/gone"]).check()
    api.add_repo("acme/docs", has_issues=False)
    with pytest.raises(PreconditionError, match="issues disabled"):
        make(api, repositories=["acme/docs"]).check()


def test_every_request_carries_githubs_headers(api: FakeGitHub) -> None:
    c = make(api)
    c.call(tc("list_issues", repo=REPO))
    c.call(tc("create_issue", repo=REPO, title="t"))
    for req in api.requests:
        assert req.headers["accept"] == "application/vnd.github+json"
        assert req.headers["x-github-api-version"] == "2022-11-28"
        assert req.headers["authorization"] == f"Bearer {TOKEN}"
        assert req.headers["user-agent"].startswith("keepflow/")


def test_github_enterprise_base_url_keeps_its_path(api: FakeGitHub) -> None:
    c = make(api, base_url=api.url + "/api/v3/")
    api.seed_issue(REPO, "on GHE")
    assert [i["title"] for i in c.call(tc("list_issues", repo=REPO))["issues"]] == ["on GHE"]
    assert api.requests[-1].path == "/api/v3/repos/acme/web/issues"


# -- list_issues -----------------------------------------------------------------------------


def test_list_issues_returns_clean_issues_without_pull_requests(api: FakeGitHub) -> None:
    api.seed_issue(REPO, "Crash on save", body="Steps:\r\n1. save\n\n\n2. boom", labels=["bug"],
                   age=7200)
    api.seed_issue(REPO, "Add dark mode", labels=["feature"], age=3600, state="closed")
    api.seed_issue(REPO, "A pull request", pull_request=True, age=60)
    c = make(api)
    out = c.call(tc("list_issues", repo=REPO))
    assert out["next"] is None
    [issue] = out["issues"]
    assert issue == {
        "number": 1, "title": "Crash on save", "state": "open", "labels": ["bug"],
        "user": "octocat", "created_at": issue["created_at"],
        "updated_at": issue["created_at"], "url": "https://github.com/acme/web/issues/1",
        "body": "Steps:\n1. save\n2. boom"}
    assert issue["created_at"].endswith("Z")
    every = c.call(tc("list_issues", repo=REPO, state="all"))["issues"]
    assert [i["number"] for i in every] == [2, 1]  # newest first, the PR left out
    assert [i["number"] for i in c.call(tc("list_issues", repo=REPO, state="all",
                                           labels=["feature"]))["issues"]] == [2]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5400))
    assert [i["number"] for i in c.call(tc("list_issues", repo=REPO, state="all",
                                           since=since))["issues"]] == [2]
    assert api.requests[-1].query["since"] == [since]


def test_list_issues_follows_the_link_header_page_by_page(api: FakeGitHub) -> None:
    for n in range(1, 13):
        api.seed_issue(REPO, f"issue {n}", age=1000 - n, pull_request=(n == 6))
    c = make(api)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        out = c.call(tc("list_issues", repo=REPO, limit=5, page_cursor=cursor))
        seen += [i["number"] for i in out["issues"]]
        pages += 1
        cursor = out["next"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert len(cursor) < 100
    assert pages == 3
    assert seen == [n for n in range(12, 0, -1) if n != 6]
    assert [r.query.get("page") for r in api.requests] == [None, ["2"], ["3"]]
    assert all(r.query["per_page"] == ["5"] for r in api.requests)


# -- mutations -------------------------------------------------------------------------------


def test_create_issue_carries_the_key_in_an_invisible_marker(api: FakeGitHub) -> None:
    c = make(api)
    out = c.call(tc("create_issue", key="kf-wf-run-7", repo=REPO, title="  Deploy failed  ",
                    body="The deploy of v2 failed.\n", labels=["ops", "ops"],
                    assignees=["alice"]))
    [issue] = api.issues_of(REPO)
    assert out == {"number": 1, "url": "https://github.com/acme/web/issues/1",
                   "title": "Deploy failed"}
    assert issue.body == "The deploy of v2 failed.\n\n<!-- keepflow:kf-wf-run-7 -->"
    assert (issue.labels, issue.assignees) == (["ops"], ["alice"])
    c.call(tc("create_issue", key="kf-wf-run-8", repo=REPO, title="no body"))
    assert api.issues_of(REPO)[1].body == marker("kf-wf-run-8")


def test_comment_and_add_labels(api: FakeGitHub) -> None:
    api.seed_issue(REPO, "x", labels=["bug"])
    c = make(api)
    out = c.call(tc("comment", repo=REPO, issue=1, body="Looking into it."))
    [comment] = api.repos[REPO].issues[0].comments
    assert out == {"id": comment.id, "url": f"https://github.com/acme/web/issues/1"
                                            f"#issuecomment-{comment.id}"}
    assert comment.body == "Looking into it.\n\n" + marker("kf-wf-run-1")
    assert c.call(tc("add_labels", repo=REPO, issue=1, labels=["triaged", "BUG"])) == {
        "labels": ["bug", "triaged"]}
    assert c.call(tc("add_labels", repo=REPO, issue=1, labels=["triaged"])) == {
        "labels": ["bug", "triaged"]}  # naturally idempotent


def test_describe_says_what_and_where(api: FakeGitHub) -> None:
    c = make(api)
    assert c.describe(tc("create_issue", repo=REPO, title="Deploy failed")) == \
        "create GitHub issue in acme/web: 'Deploy failed'"
    assert c.describe(tc("comment", repo=REPO, issue=3, body="x")) == \
        "comment on GitHub acme/web#3"
    assert c.describe(tc("add_labels", repo=REPO, issue=3, labels=["a", "b"])) == \
        "add labels a, b to GitHub acme/web#3"
    assert c.describe(tc("create_issue", repo="nope", title="x")) == \
        "gh.create_issue (invalid params)"


# -- reconcile after an uncertain outcome ----------------------------------------------------


def test_an_issue_applied_then_dropped_is_found_despite_the_search_lag(api: FakeGitHub
                                                                       ) -> None:
    api.search_lag = 3600  # the search index would not have it for an hour
    for n in range(3):
        api.seed_issue(REPO, f"older {n}", age=100 - n)
    c = make(api)
    mutation = attempted(tc("create_issue", key=host_key(), repo=REPO, title="Deploy failed"))
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome, match="may or may not"):
        c.call(mutation)
    [created] = [i for i in api.issues_of(REPO) if i.title == "Deploy failed"]
    verdict = c.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == {"number": created.number,
                              "url": f"https://github.com/acme/web/issues/{created.number}",
                              "title": "Deploy failed"}
    assert mutation.attempted_at is not None
    [listing] = api.requests_to("GET", "/repos/acme/web/issues")
    assert listing.query["since"] == [iso(mutation.attempted_at
                                          - timedelta(seconds=SKEW_SECONDS))]
    assert not api.requests_to("GET", "/search/issues")  # the listing sufficed
    assert len(api.issues_of(REPO)) == 4


def test_a_dropped_create_reconciles_failed_and_creates_once(api: FakeGitHub) -> None:
    """Driven directly (no ``attempted_at``): the listing has no lower bound, and a complete
    one without the marker is "failed" at once."""
    api.seed_issue(REPO, "someone else's", body=marker("kf-other-run-1"), age=5)
    c = make(api)
    mutation = tc("create_issue", key=host_key(), repo=REPO, title="Deploy failed")
    api.fault("drop")
    with pytest.raises(UncertainOutcome):
        c.call(mutation)
    verdict = c.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.FAILED
    assert "did not happen" in verdict.detail
    c.call(mutation)
    assert [i.title for i in api.issues_of(REPO)] == ["someone else's", "Deploy failed"]
    assert c.reconcile(mutation).outcome is ReconcileOutcome.APPLIED


def test_any_process_reconciles_from_the_attempts_time(api: FakeGitHub) -> None:
    """Nothing is remembered in the process: another one (after a restart, another host)
    reconciles the same way, from when the host recorded the attempt."""
    key = host_key()
    sender = make(api)
    mutation = attempted(tc("create_issue", key=key, repo=REPO, title="sent before the crash"))
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome):
        sender.call(mutation)
    fresh = make(api)  # another process
    found = fresh.reconcile(replace(mutation, params={"repo": REPO, "title": "x"}))
    assert found.outcome is ReconcileOutcome.APPLIED
    assert found.result["title"] == "sent before the crash"
    assert api.requests_to("GET", "/repos/acme/web/issues")[-1].query["since"]


def test_the_settle_window_runs_from_the_attempt(api: FakeGitHub) -> None:
    """Absent from a complete listing is "failed" only once GitHub cannot still be applying
    the request: from the attempt's time plus the call's timeout plus SETTLE_SECONDS."""
    api.seed_issue(REPO, "x")
    c = make(api)
    for never in (tc("create_issue", key=host_key(), repo=REPO, title="never sent"),
                  tc("comment", key=host_key(), repo=REPO, issue=1, body="never sent")):
        recent = c.reconcile(attempted(never, ago=2))
        assert recent.outcome is ReconcileOutcome.RETRY
        assert "may still be handling" in recent.detail
        old = c.reconcile(attempted(never, ago=60))
        assert old.outcome is ReconcileOutcome.FAILED
        assert "did not happen" in old.detail
        assert "since the attempt" in old.detail
        edge = never.timeout + SETTLE_SECONDS  # 20 s with a 5 s timeout
        assert c.reconcile(attempted(never, ago=edge + 1)).outcome is ReconcileOutcome.FAILED
        assert c.reconcile(attempted(replace(never, timeout=30.0), ago=edge + 1)
                           ).outcome is ReconcileOutcome.RETRY  # a longer call, a longer wait
        unbounded = c.reconcile(never)  # no attempted_at: the whole (short) listing was read
        assert unbounded.outcome is ReconcileOutcome.FAILED
        assert "since the attempt" not in unbounded.detail
    assert posts(api) == 0


def test_the_scan_stops_at_the_attempt_less_the_skew(api: FakeGitHub) -> None:
    """An issue created before ``attempted_at - SKEW_SECONDS`` cannot be the call's: the
    newest-first scan stops there, even when GitHub lists it (it was updated since)."""
    key = host_key()
    stale = api.seed_issue(REPO, "quotes the marker", body=marker(key),
                           age=SKEW_SECONDS + 100)
    stale.updated_at = api.now()  # edited since: the "since" (updated) filter keeps it
    api.seed_issue(REPO, "newer", age=10)
    c = make(api)
    mutation = tc("create_issue", key=key, repo=REPO, title="t")
    verdict = c.reconcile(attempted(mutation, ago=60))
    assert verdict.outcome is ReconcileOutcome.FAILED  # the stale issue was not taken
    [listing] = api.requests_to("GET", "/repos/acme/web/issues")
    assert listing.query["since"]
    assert not api.requests_to("GET", "/search/issues")
    # Without attempted_at there is no lower bound: the same issue is read, and counts.
    assert c.reconcile(mutation).outcome is ReconcileOutcome.APPLIED
    # Within the skew margin it is still read: GitHub's clock may run behind the host's.
    api.time_offset = -(SKEW_SECONDS - 60)
    drop = attempted(tc("create_issue", key=host_key(), repo=REPO, title="behind"))
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome):
        c.call(drop)
    assert c.reconcile(drop).result["title"] == "behind"


def test_a_5xx_is_uncertain_and_reconciles_after_githubs_request_limit(
        api: FakeGitHub) -> None:
    c = make(api)
    applied = attempted(tc("create_issue", key=host_key(), repo=REPO, title="applied"))
    api.fault("apply_then_status", status=502, body={"message": "Server Error"})
    with pytest.raises(UncertainOutcome, match="502"):
        c.call(applied)
    assert c.reconcile(applied).outcome is ReconcileOutcome.APPLIED
    lost = attempted(tc("create_issue", key=host_key(), repo=REPO, title="lost"))
    api.fault("status", status=504, body={"message": "We couldn't respond in time"})
    with pytest.raises(UncertainOutcome, match="504"):
        c.call(lost)
    assert c.reconcile(lost).outcome is ReconcileOutcome.RETRY  # GitHub may still apply it
    later = replace(lost, attempted_at=datetime.now(UTC) - timedelta(seconds=60))
    assert c.reconcile(later).outcome is ReconcileOutcome.FAILED
    assert [i.title for i in api.issues_of(REPO)] == ["applied"]


def test_a_timeout_after_sending_is_uncertain_and_waits_for_github(
        api: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client gave up waiting, so GitHub may still be working on the request: not found
    right after is "ask again", never "failed"."""
    answer = api._answer

    def slow(req: Any) -> Any:
        if req.method == "POST":
            time.sleep(0.6)
        return answer(req)

    monkeypatch.setattr(api, "_answer", slow)
    c = make(api)
    applied = attempted(ToolCall("create_issue", {"repo": REPO, "title": "slow"},
                                 timeout=0.25, idempotency_key=host_key()))
    with pytest.raises(UncertainOutcome, match="did not finish within"):
        c.call(applied)
    time.sleep(0.5)  # GitHub finishes
    assert c.reconcile(replace(applied, timeout=5.0)).outcome is ReconcileOutcome.APPLIED
    lost = attempted(replace(applied, idempotency_key=host_key()))
    api.fault("status", status=500, body={"message": "Server Error"})
    with pytest.raises(UncertainOutcome):
        c.call(lost)
    time.sleep(0.5)
    verdict = c.reconcile(replace(lost, timeout=5.0))
    assert verdict.outcome is ReconcileOutcome.RETRY
    assert "may still be handling" in verdict.detail


def test_a_scan_cut_short_falls_back_to_search_which_may_lag(
        api: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(github_module, "SCAN_PAGES", 1)
    api.search_lag = 3600
    c = make(api)
    mutation = tc("create_issue", key=host_key(), repo=REPO, title="buried")
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome):
        c.call(mutation)
    for n in range(101):  # newer issues bury it beyond the first page
        api.seed_issue(REPO, f"newer {n}", age=-1)
    verdict = c.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.RETRY
    assert "search" in verdict.detail
    [search] = api.requests_to("GET", "/search/issues")
    key = mutation.idempotency_key
    assert search.query["q"] == [f'repo:acme/web is:issue in:body "keepflow:{key}"']
    api.make_searchable()
    verdict = c.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result["title"] == "buried"


def test_comment_reconciles_by_its_marker(api: FakeGitHub) -> None:
    api.seed_issue(REPO, "x")
    api.seed_comment(REPO, 1, "an old one", age=86_400 * 30)
    c = make(api)
    applied = attempted(tc("comment", key=host_key(), repo=REPO, issue=1, body="on it"))
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome):
        c.call(applied)
    verdict = c.reconcile(applied)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    [_, mine] = api.repos[REPO].issues[0].comments
    assert verdict.result == {"id": mine.id, "url": f"https://github.com/acme/web/issues/1"
                                                   f"#issuecomment-{mine.id}"}
    assert api.requests_to("GET", "/repos/acme/web/issues/1/comments")[-1].query["since"]
    lost = attempted(tc("comment", key=host_key(), repo=REPO, issue=1, body="again"))
    api.fault("drop")
    with pytest.raises(UncertainOutcome):
        c.call(lost)
    assert c.reconcile(lost).outcome is ReconcileOutcome.RETRY  # GitHub may still be on it
    assert c.reconcile(replace(lost, attempted_at=datetime.now(UTC) - timedelta(seconds=60))
                       ).outcome is ReconcileOutcome.FAILED
    c.call(lost)
    assert len(api.repos[REPO].issues[0].comments) == 3


def test_add_labels_reconciles_by_reading_the_labels(api: FakeGitHub) -> None:
    api.seed_issue(REPO, "x", labels=["bug"])
    c = make(api)
    mutation = tc("add_labels", repo=REPO, issue=1, labels=["triaged", "p1"])
    api.fault("drop")
    with pytest.raises(UncertainOutcome):
        c.call(mutation)
    verdict = c.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.FAILED
    assert "harmless" in verdict.detail
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome):
        c.call(mutation)
    verdict = c.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == {"labels": ["bug", "triaged", "p1"]}


# -- failure classification ------------------------------------------------------------------


@pytest.mark.parametrize("form", RATE_FORMS)
def test_both_rate_limits_are_transient_with_the_wait_github_asks(api: FakeGitHub,
                                                                  form: str) -> None:
    c = make(api)
    api.rate_limit(form, seconds=42, methods=("POST", "GET"))
    with pytest.raises(TransientError) as info:
        c.call(tc("create_issue", repo=REPO, title="t"))
    assert not isinstance(info.value, UncertainOutcome)
    expected = 60 if form == "secondary_bare" else 42
    assert info.value.retry_after == pytest.approx(expected, abs=2)
    assert "rate limit" in info.value.message
    assert api.issues_of(REPO) == []
    api.rate_limit(form, seconds=42, methods=("GET",))
    with pytest.raises(TransientError):
        c.call(tc("list_issues", repo=REPO))


def test_a_403_that_is_not_a_rate_limit_is_refused(api: FakeGitHub) -> None:
    api.add_repo("acme/locked", writers={"other-token"})
    c = make(api)
    with pytest.raises(AuthError, match="lacks the permission") as info:
        c.call(tc("create_issue", repo="acme/locked", title="t"))
    assert "issues=write" in info.value.message
    api.fault("status", status=403, body={"message": "Repository was archived so is "
                                                     "read-only."},
              headers={"x-ratelimit-remaining": "4000"})
    with pytest.raises(PermissionDenied, match="archived"):
        c.call(tc("comment", repo=REPO, issue=1, body="x"))
    api.fault("status", status=403, body={
        "message": "Resource protected by organization SAML enforcement. You must grant your "
                   "Personal Access token access to this organization."})
    with pytest.raises(AuthError, match="SAML"):
        c.call(tc("comment", repo=REPO, issue=1, body="x"))


def test_refused_credentials_are_an_auth_error_without_the_token(api: FakeGitHub) -> None:
    c = make(api, token="ghp_expired_0123456789")
    for call in (tc("list_issues", repo=REPO), tc("create_issue", repo=REPO, title="t")):
        with pytest.raises(AuthError, match="401") as info:
            c.call(call)
        assert "ghp_expired" not in json.dumps(info.value.to_dict())
    assert api.issues_of(REPO) == []


def test_missing_repositories_issues_and_disabled_issues_are_preconditions(
        api: FakeGitHub) -> None:
    api.add_repo("acme/private", readers={"someone-else"})
    api.add_repo("acme/docs", has_issues=False)
    c = make(api)
    for repo in ("acme/gone", "acme/private"):
        with pytest.raises(PreconditionError, match="or the token cannot see it"):
            c.call(tc("list_issues", repo=repo))
        with pytest.raises(PreconditionError, match="token cannot see it"):
            c.call(tc("create_issue", repo=repo, title="t"))
    with pytest.raises(PreconditionError, match="no issue #9 in acme/web"):
        c.call(tc("comment", repo=REPO, issue=9, body="x"))
    with pytest.raises(PreconditionError, match="disabled"):
        c.call(tc("create_issue", repo="acme/docs", title="t"))


def test_a_422_names_the_field_github_refused(api: FakeGitHub) -> None:
    c = make(api)
    with pytest.raises(PermanentError) as info:
        c.call(tc("create_issue", repo=REPO, title="t", assignees=["mallory"]))
    assert info.value.details["field"] == "assignees"
    assert "params.assignees" in info.value.message
    assert "mallory" in info.value.message
    assert not isinstance(info.value, UncertainOutcome)
    api.fault("status", status=422, body={
        "message": "Validation Failed", "documentation_url": "https://docs.github.com/rest",
        "errors": [{"resource": "Issue", "code": "custom", "field": "body",
                    "message": "body is too long (maximum is 65536 characters)"}]})
    with pytest.raises(PermanentError, match="too long") as info:
        c.call(tc("comment", repo=REPO, issue=1, body="x"))
    assert info.value.details["field"] == "body"


def test_a_5xx_on_a_read_and_a_refused_connection_are_transient(api: FakeGitHub) -> None:
    c = make(api)
    api.fault("status", status=503, methods=("GET",), headers={"Retry-After": "5"},
              body={"message": "unavailable"})
    with pytest.raises(TransientError) as info:
        c.call(tc("list_issues", repo=REPO))
    assert info.value.retry_after == 5
    api.fault("drop", methods=("GET",))
    with pytest.raises(TransientError):
        c.call(tc("list_issues", repo=REPO))
    gone = make(api, base_url="http://127.0.0.1:9")
    for call in (tc("list_issues", repo=REPO), tc("create_issue", repo=REPO, title="t")):
        with pytest.raises(TransientError, match="not sent") as info:
            gone.call(call)
        assert not isinstance(info.value, UncertainOutcome)


# -- bad params and the allow-list -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "params", "field"),
    [
        ("list_issues", {}, "repo"),
        ("list_issues", {"repo": "acme"}, "repo"),
        ("list_issues", {"repo": "acme/web/issues"}, "repo"),
        ("list_issues", {"repo": "../web"}, "repo"),
        ("list_issues", {"repo": "acme/.."}, "repo"),
        ("list_issues", {"repo": "acme/we b"}, "repo"),
        ("list_issues", {"repo": "acme/web%2f..%2fx"}, "repo"),
        ("list_issues", {"repo": 5}, "repo"),
        ("list_issues", {"repo": REPO, "state": "merged"}, "state"),
        ("list_issues", {"repo": REPO, "limit": 0}, "limit"),
        ("list_issues", {"repo": REPO, "limit": 101}, "limit"),
        ("list_issues", {"repo": REPO, "limit": True}, "limit"),
        ("list_issues", {"repo": REPO, "labels": "bug"}, "labels"),
        ("list_issues", {"repo": REPO, "labels": ["a,b"]}, "labels"),
        ("list_issues", {"repo": REPO, "since": "yesterday"}, "since"),
        ("list_issues", {"repo": REPO, "page_cursor": "page=2&evil=1"}, "page_cursor"),
        ("list_issues", {"repo": REPO, "page_cursor": "page=-1"}, "page_cursor"),
        ("list_issues", {"repo": REPO, "sort": "updated"}, "sort"),
        ("create_issue", {"repo": REPO}, "title"),
        ("create_issue", {"repo": REPO, "title": "   "}, "title"),
        ("create_issue", {"repo": REPO, "title": "two\nlines"}, "title"),
        ("create_issue", {"repo": REPO, "title": "x" * 257}, "title"),
        ("create_issue", {"repo": REPO, "title": "t", "body": 5}, "body"),
        ("create_issue", {"repo": REPO, "title": "t", "body": "x" * 65536}, "body"),
        ("create_issue", {"repo": REPO, "title": "t", "body": "lone \ud800"}, "body"),
        ("create_issue", {"repo": REPO, "title": "t", "labels": [""]}, "labels"),
        ("create_issue", {"repo": REPO, "title": "t", "labels": ["x" * 51]}, "labels"),
        ("create_issue", {"repo": REPO, "title": "t", "assignees": ["not a login"]},
         "assignees"),
        ("create_issue", {"repo": REPO, "title": "t", "assignees": ["a"] * 11}, "assignees"),
        ("comment", {"repo": REPO, "issue": 1}, "body"),
        ("comment", {"repo": REPO, "issue": 0, "body": "x"}, "issue"),
        ("comment", {"repo": REPO, "issue": "1", "body": "x"}, "issue"),
        ("comment", {"repo": REPO, "issue": 1.5, "body": "x"}, "issue"),
        ("add_labels", {"repo": REPO, "issue": 1, "labels": []}, "labels"),
        ("add_labels", {"repo": REPO, "issue": 1}, "labels"),
        ("add_labels", {"repo": REPO, "issue": 1, "labels": ["ok", 3]}, "labels"),
    ],
)
def test_bad_params_are_refused_before_anything_is_sent(
        api: FakeGitHub, tool: str, params: dict[str, Any], field: str) -> None:
    c = make(api)
    for check in (c.validate, c.call):
        with pytest.raises(PermanentError) as info:
            check(tc(tool, **params))
        assert info.value.details["field"] == field, info.value.message
        assert f"params.{field}" in info.value.message
    assert api.requests == []


def test_a_mutation_without_a_usable_key_is_refused(api: FakeGitHub) -> None:
    c = make(api)
    for key in (None, "kf--x", "a -->b"):
        call = ToolCall("create_issue", {"repo": REPO, "title": "t"}, 5.0, idempotency_key=key)
        with pytest.raises(PermanentError, match="idempotency key"):
            c.call(call)
    assert api.requests == []


def test_repositories_outside_the_allow_list_are_refused(api: FakeGitHub) -> None:
    api.add_repo("acme-labs/x")
    api.add_repo("evil/x")
    c = make(api, repositories=[REPO, "acme-labs/*"])
    c.call(tc("list_issues", repo="ACME/Web"))  # GitHub's names ignore case
    c.call(tc("create_issue", repo="acme-labs/x", title="t"))
    sent = len(api.requests)
    for tool, params in (("list_issues", {}), ("create_issue", {"title": "t"}),
                         ("comment", {"issue": 1, "body": "x"}),
                         ("add_labels", {"issue": 1, "labels": ["x"]})):
        for repo in ("evil/x", "acme/web-2", "acme-labsx/y"):
            with pytest.raises(PermissionDenied, match="not in this connection's "
                                                       "repositories") as info:
                c.validate(tc(tool, repo=repo, **params))
            assert info.value.details["field"] == "repo"
            with pytest.raises(PermissionDenied):
                c.call(tc(tool, repo=repo, **params))
    assert len(api.requests) == sent
    assert api.issues_of("evil/x") == []


# -- hostile answers -------------------------------------------------------------------------


def _answer(api: FakeGitHub, body: Any, status: int = 200, methods: tuple[str, ...] = ("GET",),
            **headers: str) -> None:
    api.fault("status", status=status, methods=methods, body=body,
              headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize(
    "body",
    [b"<html>Unicorn!</html>", b'{"message": "not a list"}', b"[1, 2]",
     b'[{"number": "7", "title": "x"}]', b'[{"number": true}]', b"[NaN]", b"[" * 100_000,
     b'[{"number": 1}'],
    ids=["html", "object", "numbers", "string-number", "bool-number", "nan", "deep", "cut"],
)
def test_a_malformed_listing_is_transient(api: FakeGitHub, body: bytes) -> None:
    _answer(api, body)
    with pytest.raises(TransientError, match="GitHub answered 200"):
        make(api).call(tc("list_issues", repo=REPO))


def test_a_malformed_answer_to_a_mutation_is_uncertain_and_reconciles(api: FakeGitHub) -> None:
    c = make(api)
    mutation = tc("create_issue", key=host_key(), repo=REPO, title="made")
    api.fault("apply_then_status", status=201, body=b"<html>ok</html>",
              headers={"Content-Type": "text/html"})
    with pytest.raises(UncertainOutcome, match="not JSON"):
        c.call(mutation)
    assert c.reconcile(mutation).result["title"] == "made"
    api.fault("apply_then_status", status=201, body={"number": "1"})
    with pytest.raises(UncertainOutcome, match="no issue number"):
        c.call(tc("create_issue", key=host_key(), repo=REPO, title="t"))


def test_text_from_github_is_cleaned_and_bounded(api: FakeGitHub) -> None:
    c = make(api)
    hostile = "Evil\x00 \x1b[31mred\x1b[0m \u202egnp.exe\ud800 \x7f\x85end"
    _answer(api, [{
        "number": 1, "title": hostile + "x" * 5000, "state": "open\nclosed",
        "labels": [{"name": "bug\x00"}, {"name": 5}, "plain", None] + [{"name": "l"}] * 500,
        "user": {"login": ["not", "a", "string"]}, "created_at": "yesterday",
        "updated_at": 12, "html_url": "javascript:alert(1)", "body": "b" * 1_000_000}])
    [issue] = c.call(tc("list_issues", repo=REPO))["issues"]
    assert issue["title"].startswith("Evil [31mred[0m gnp.exe end")
    assert len(issue["title"]) <= 1000
    assert issue["state"] == "open closed"
    assert issue["labels"][:2] == ["bug", "plain"]
    assert len(issue["labels"]) <= 100
    assert issue["user"] is None
    assert issue["url"] is None
    assert issue["created_at"] is None
    assert issue["updated_at"] is None
    assert len(issue["body"]) <= 4000


def test_an_answer_over_the_byte_bound_is_refused(api: FakeGitHub) -> None:
    _answer(api, json.dumps([{"number": 1, "body": "x" * (3 * 1024 * 1024)}]).encode())
    with pytest.raises(PermanentError, match="larger than") as info:
        make(api).call(tc("list_issues", repo=REPO))
    assert info.value.details["field"] == "limit"


def test_an_echoed_token_is_masked_in_messages(api: FakeGitHub) -> None:
    _answer(api, {"message": f"token {TOKEN} is no good"}, status=403, methods=("POST",))
    with pytest.raises(PermissionDenied) as info:
        make(api).call(tc("create_issue", repo=REPO, title="t"))
    assert TOKEN not in info.value.message
    assert "***" in info.value.message


def test_only_the_pagination_keys_of_a_link_header_are_kept(api: FakeGitHub) -> None:
    """The next URL is never requested: its page (or cursor) is, on the connection's API."""
    c = make(api)
    _answer(api, [{"number": 1}], Link='<https://evil.example/x?page=2&token=1>; rel="next"')
    assert c.call(tc("list_issues", repo=REPO))["next"] == "page=2"
    _answer(api, [{"number": 1}], Link='<https://api.github.com/x?after=Y3Vyc29y%3D&'
                                       'per_page=5>; rel="next", <x?page=9>; rel="last"')
    cursor = c.call(tc("list_issues", repo=REPO))["next"]
    assert cursor == "after=Y3Vyc29y%3D&per_page=5"
    c.call(tc("list_issues", repo=REPO, page_cursor=cursor))
    assert api.requests[-1].query["after"] == ["Y3Vyc29y="]
    for link in ('<https://api.github.com/x?page=abc>; rel="next"',
                 '<https://api.github.com/x?page=2&page=3>; rel="next"', "<" * 50_000):
        _answer(api, [{"number": 1}], Link=link)
        assert c.call(tc("list_issues", repo=REPO))["next"] is None


def test_redirects_are_followed_on_the_api_origin_only(api: FakeGitHub) -> None:
    api.seed_issue(REPO, "moved here")
    c = make(api)
    api.fault("status", status=301, methods=("GET",), body={"message": "Moved Permanently"},
              headers={"Location": f"{api.url}/repos/acme/web/issues?state=open"})
    assert [i["title"] for i in c.call(tc("list_issues", repo="acme/old"))["issues"]] == [
        "moved here"]
    api.fault("status", status=301, methods=("GET",), body={},
              headers={"Location": "https://evil.example/steal"})
    with pytest.raises(PermanentError, match="not on the connection's base_url"):
        c.call(tc("list_issues", repo=REPO))
    api.fault("status", status=307, body={}, headers={"Location": f"{api.url}/elsewhere"})
    with pytest.raises(PermanentError, match="redirect"):
        c.call(tc("create_issue", repo=REPO, title="t"))
    assert api.issues_of(REPO)[-1].title == "moved here"


# -- through the host: workflows on SQLite and PostgreSQL ------------------------------------

CREATE = """await ctx.gh.create_issue({ repo: "acme/web", title: prepared.data.event.title,
                                         body: "Seen: " + prepared.data.event.messageId });"""
NEXT = "return { number: mutation.result.number, url: mutation.result.url };"


@pytest.fixture
def github_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
                api: FakeGitHub) -> Iterator[Host]:
    """A host whose connections come from its home (no fixed ones), like a real one."""
    (tmp_path / "home").mkdir()
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock, pool=pool,
             policies=PolicyBook(quick_policy()))
    yield h
    h.close()


def _deploy(host: Host, tmp_path: Path, api: FakeGitHub, ids: list[str],
            token: str = TOKEN) -> None:
    service.connection_add(host, "gh", "github",
                           {"base_url": api.url, "repositories": ["acme/*"]}, {"token": token})
    deploy_source(host, tmp_path, workflow_js(
        producers=seed_producer(ids), consumers=consumer_js(mutate=CREATE, next_=NEXT)))
    service.trigger(host, "wf", "seed")


def _one_issue(api: FakeGitHub, key: str) -> None:
    [issue] = api.issues_of(REPO)
    assert issue.body is not None
    assert issue.body.endswith(marker(key))


def test_a_workflow_opens_one_issue_per_event(github_host: Host, tmp_path: Path,
                                             api: FakeGitHub) -> None:
    host = github_host
    _deploy(host, tmp_path, api, ["a", "b"])
    report = service.drain(host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED] * 2
    assert [i.title for i in api.issues_of(REPO)] == ["Item a", "Item b"]
    ledger = service.ledger(host, "wf")["mutations"]
    assert sorted((m["status"], m["resolvedBy"]) for m in ledger) == [("applied", "host")] * 2
    assert sorted(m["description"] for m in ledger) == [
        "create GitHub issue in acme/web: 'Item a'", "create GitHub issue in acme/web: 'Item b'"]
    for m, issue in zip(sorted(ledger, key=lambda m: m["result"]["number"]),
                        api.issues_of(REPO), strict=True):
        assert issue.body is not None
        assert issue.body.endswith(marker(m["idempotencyKey"]))
    assert service.drain(host).runs == []


def test_an_issue_applied_then_dropped_commits_through_reconcile(
        github_host: Host, tmp_path: Path, api: FakeGitHub) -> None:
    host = github_host
    api.search_lag = 3600
    _deploy(host, tmp_path, api, ["a"])
    api.fault("apply_then_drop")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    [m] = run_detail(host, out.run_id)["mutations"]
    assert (m["status"], m["resolvedBy"], m["reconcileAttempts"]) == ("applied", "reconcile", 1)
    assert m["result"]["number"] == 1
    _one_issue(api, m["idempotencyKey"])


def test_a_dropped_create_is_made_again_once(github_host: Host, tmp_path: Path,
                                            api: FakeGitHub) -> None:
    host = github_host
    _deploy(host, tmp_path, api, ["a"])
    api.fault("drop")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [(x["status"], x["resolvedBy"]) for x in muts] == [("failed", "reconcile"),
                                                             ("applied", "host")]
    _one_issue(api, muts[1]["idempotencyKey"])


def test_a_refused_token_asks_to_reconnect_and_the_run_continues_by_itself(
        github_host: Host, tmp_path: Path, api: FakeGitHub) -> None:
    host = github_host
    _deploy(host, tmp_path, api, ["a"], token="ghp_revoked_token_42")
    failed = service.trigger(host, "wf", "work")
    assert failed.status is RunStatus.FAILED
    assert failed.failure is not None
    assert failed.failure["class"] == "auth"
    [item] = service.inbox(host)
    assert (item["kind"], item["connection"], item["run"]) == ("reconnect", "gh",
                                                              failed.run_id)
    assert "ghp_revoked_token_42" not in json.dumps(item)
    assert api.issues_of(REPO) == []
    done = service.connection_secret(host, "gh", "token", TOKEN)
    assert done["retried"] == [failed.run_id]
    runs = service.list_runs(host, "wf")
    assert runs[0]["status"] == "committed", runs
    assert service.inbox(host) == []
    [issue] = api.issues_of(REPO)
    assert issue.title == "Item a"


def test_rate_limits_back_off_and_commit(github_host: Host, tmp_path: Path, api: FakeGitHub,
                                         clock: FakeClock) -> None:
    host = github_host
    _deploy(host, tmp_path, api, ["a"])
    api.rate_limit("secondary", seconds=7)
    api.rate_limit("primary", seconds=9)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [m["status"] for m in muts] == ["failed", "failed", "applied"]
    assert any(s >= 7 for s in clock.slept)
    assert any(s >= 8 for s in clock.slept)
    _one_issue(api, muts[-1]["idempotencyKey"])


def test_connections_toml_written_by_hand_works_too(store_url: str, tmp_path: Path,
                                                    pool: SandboxPool, clock: FakeClock,
                                                    api: FakeGitHub,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "connections.toml").write_text(textwrap.dedent(f"""
        [connections.gh]
        type = "github"
        token_env = "KF_TEST_GITHUB_TOKEN"
        base_url = "{api.url}"
        repositories = ["acme/web"]
        """), encoding="utf-8")
    monkeypatch.setenv("KF_TEST_GITHUB_TOKEN", TOKEN)
    h = Host(Settings(home=home, database_url=store_url), clock=clock, pool=pool,
             policies=PolicyBook(quick_policy()))
    try:
        deploy_source(h, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                               consumers=consumer_js(mutate=CREATE,
                                                                     next_=NEXT)))
        service.trigger(h, "wf", "seed")
        assert service.trigger(h, "wf", "work").status is RunStatus.COMMITTED
    finally:
        h.close()
    assert [i.title for i in api.issues_of(REPO)] == ["Item a"]
