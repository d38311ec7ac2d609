"""The ``github`` connector: issues, comments and labels on GitHub's REST API (SPEC §9;
docs/connectors.md#github).

Tools: ``list_issues`` (read), and the mutations ``create_issue``, ``comment`` and
``add_labels``. The HTTP layer (headers, deadline, bounded bodies, redirects, the status and
rate-limit classification) is :mod:`keepflow.connectors.github_api`.

Settings: ``token`` (required, a credential: ``token_secret`` or ``token_env``), ``base_url``
(default ``https://api.github.com``; GitHub Enterprise Server: ``https://HOST/api/v3``) and
``repositories`` (optional allow-list of ``owner/name`` patterns, ``*`` matching any run of
characters within one part: ``acme/*``). A call naming any other repository is refused as
``PermissionDenied`` before anything is sent.

Reconcile (docs/connectors.md#github-reconcile). ``create_issue`` and ``comment`` end the
text they post with an HTML comment carrying the call's idempotency key,
``<!-- keepflow:KEY -->`` (invisible when GitHub renders it). After an uncertain outcome the
connector looks for that marker:

* in the repository's issues (``comment``: the issue's comments) listed newest first — the
  listing reads GitHub's records, unlike the search API, whose index lags behind — down to
  the oldest that could be the call's: created when keepflow recorded the attempt
  ``in_flight`` (``ToolCall.attempted_at``, before anything was sent), less a margin for
  clock skew between the host and GitHub;
* then, when that scan had to stop early (too many newer issues) or had no lower bound, with
  GitHub's search API, as a hint that may lag.

Found = applied (the result the call would have returned). Not found by a complete scan,
once GitHub can no longer be working on the request (it ends every request within 10
seconds: the connector waits until the attempt's time plus the call's timeout plus
``SETTLE_SECONDS``) = failed. Anything else = retry later. A call without ``attempted_at``
(a connector driven directly, not by the host) is scanned with no lower bound, up to
``SCAN_PAGES`` pages: found = applied, absent from a complete listing = failed at once (no
settle window can be known), otherwise retry. ``add_labels`` is naturally idempotent: the
issue's labels are read, all present = applied, else failed (applying them again is
harmless).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import httpx

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.feed import clean_link, clean_text
from keepflow.connectors.github_api import (
    DEFAULT_BASE_URL,
    Answer,
    GitHubApi,
    Target,
    encode_cursor,
    iso,
    malformed,
    parse_time,
    segment,
)
from keepflow.connectors.github_params import (
    LABELS_MAX,
    MAX_LIMIT,
    ParamRules,
    Params,
    check_key,
    marker,
    positive,
    repo_pattern,
    with_marker,
)
from keepflow.connectors.http_transport import deadline_in
from keepflow.connectors.limits import CallLimits
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret
from keepflow.connectors.setting_checks import (
    bearer_token,
    reject_unknown,
    service_base_url,
)
from keepflow.errors import (
    ConfigError,
    PermanentError,
    PreconditionError,
)

log = logging.getLogger("keepflow.connectors.github")

SETTINGS: Final = frozenset({"token", "base_url", "repositories"})
RECONCILE_DOC: Final = "docs/connectors.md#github-reconcile"

#: Characters of what a result hands back.
TITLE_CHARS: Final = 1000
BODY_CHARS: Final = 4000
NAME_CHARS: Final = 100
STATE_CHARS: Final = 20
#: Reconcile: pages of 100 scanned at most, the margin for clock skew between this host and
#: GitHub, and how long after the call's timeout GitHub may still apply it (it ends requests
#: at 10 s).
SCAN_PAGES: Final = 10
SKEW_SECONDS: Final = 300.0
SETTLE_SECONDS: Final = 15.0
SEARCH_RESULTS: Final = 20
#: check() waits this long at most.
CHECK_TIMEOUT: Final = 30.0



def _attempted(call: ToolCall) -> datetime | None:
    """When the host recorded the attempt ``in_flight`` (UTC; a naive time is read as UTC)."""
    at = call.attempted_at
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def lower_bound(call: ToolCall) -> datetime | None:
    """The earliest a post of this call can have been created on GitHub's clock: when the
    host recorded the attempt, less the skew margin; ``None`` without ``attempted_at``."""
    at = _attempted(call)
    return None if at is None else at - timedelta(seconds=SKEW_SECONDS)


def settled_at(call: ToolCall) -> datetime | None:
    """From when GitHub can no longer be applying the call: the attempt's time, plus the
    call's timeout (the longest the client waited for it), plus ``SETTLE_SECONDS``;
    ``None`` without ``attempted_at``."""
    at = _attempted(call)
    return None if at is None else at + timedelta(seconds=max(call.timeout, 0.0)
                                                  + SETTLE_SECONDS)


def _spec(name: str, kind: ToolKind, capability: str, risk: RiskTier, description: str,
          params: str, result: str, strategy: str = "") -> ToolSpec:
    mutation = kind is ToolKind.MUTATE
    return ToolSpec(name, kind, capability, risk, description, ("repository",),
                    reconcile=mutation, reconcile_doc=RECONCILE_DOC if mutation else
                    "docs/execution-model.md#the-ledger-procedure",
                    params=params, result=result, reconcile_strategy=strategy)


_ISSUE: Final = ("{issues: [{number, title, state, labels, user, created_at, updated_at, url, "
                 "body}], next}")


class GitHubConnector(Connector):
    """Type ``github``. See the module docstring and ``docs/connectors.md#github``."""

    type_name: ClassVar[str] = "github"
    #: GitHub's published limits: 5,000 requests an hour for a token, about 80
    #: content-creating requests a minute (the burst), and few at once.
    default_limits: ClassVar[CallLimits] = CallLimits(rate=5000 / 3600, burst=80,
                                                      concurrency=10)
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "list_issues": _spec(
            "list_issues", ToolKind.READ, "github.read", RiskTier.LOW,
            "List a repository's issues (pull requests left out), newest first, page by page",
            '{repo: "owner/name", state?: "open"|"closed"|"all", labels?: [name], since?, '
            "limit?, page_cursor?}", _ISSUE),
        "create_issue": _spec(
            "create_issue", ToolKind.MUTATE, "github.write", RiskTier.MEDIUM,
            "Open an issue; its body ends with an invisible marker of the idempotency key",
            '{repo: "owner/name", title, body?, labels?: [name], assignees?: [login]}',
            "{number, url, title}",
            "list the repository's issues created since keepflow recorded the attempt and "
            "look for the key's marker in their bodies (then GitHub's search, which lags): found = "
            "applied; absent from a complete scan once GitHub cannot still be working on it "
            "= failed; otherwise retry later"),
        "comment": _spec(
            "comment", ToolKind.MUTATE, "github.write", RiskTier.MEDIUM,
            "Comment on an issue or pull request; the comment ends with an invisible marker "
            "of the idempotency key",
            '{repo: "owner/name", issue: number, body}', "{id, url}",
            "list the issue's comments since keepflow recorded the attempt and look for the "
            "key's marker: found = applied; absent from a complete listing once GitHub cannot "
            "still be working on it = failed; otherwise retry later"),
        "add_labels": _spec(
            "add_labels", ToolKind.MUTATE, "github.write", RiskTier.LOW,
            "Add labels to an issue or pull request (labels it has already stay)",
            '{repo: "owner/name", issue: number, labels: [name]}', "{labels}",
            "read the issue's labels: all of them present = applied, else failed (adding "
            "labels is idempotent, so applying them again is harmless)"),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        token: Secret = s["token"]
        self._token = token
        self._base = httpx.URL(str(s.get("base_url", DEFAULT_BASE_URL)).rstrip("/"))
        self._patterns = tuple(str(p) for p in s.get("repositories", ()))
        self._rules = ParamRules(config.name, self._patterns, tuple(
            m for m in map(repo_pattern, self._patterns) if m is not None))
        self._redact = Redactor([token.reveal()])
        self._api: GitHubApi | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GitHubConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("github", settings, SETTINGS)
        bearer_token("github", settings, what="a GitHub token")
        service_base_url("github", settings.get("base_url", DEFAULT_BASE_URL),
                         example=f"{DEFAULT_BASE_URL} (or https://HOST/api/v3 for GitHub "
                                 "Enterprise Server)")
        repositories = settings.get("repositories")
        if repositories is None:
            return
        if not isinstance(repositories, list) or not repositories or len(repositories) > 1000:
            raise ConfigError('must be a non-empty list of "owner/name" patterns, e.g. '
                              '["acme/web", "acme-labs/*"]', key="repositories")
        for pattern in repositories:
            if not isinstance(pattern, str) or repo_pattern(pattern) is None:
                shown = pattern[:80] if isinstance(pattern, str) else type(pattern).__name__
                raise ConfigError(f'{shown!a} is not an "owner/name" pattern (letters, '
                                  'digits, "-", "_", "." and "*")', key="repositories")

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        try:
            p = self._parse(call)
        except PermanentError:
            return f"{self.name}.{call.tool} (invalid params)"
        if p.tool == "list_issues":
            return f"list issues of GitHub {p.repo}"
        if p.tool == "create_issue":
            title, _ = self._redact.cut(p.title, 80)
            return f"create GitHub issue in {p.repo}: {title!r}"
        if p.tool == "comment":
            return f"comment on GitHub {p.repo}#{p.issue}"
        return f"add labels {', '.join(p.labels)} to GitHub {p.repo}#{p.issue}"

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        p = self._parse(call)
        with deadline_in(call.timeout):
            if p.tool == "list_issues":
                return self._list(p)
            key = self._key(call)
            if p.tool == "add_labels":
                return self._add_labels(p)
            return self._post(p, key)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        p = self._parse(call)
        with deadline_in(call.timeout):
            if p.tool == "add_labels":
                return self._reconcile_labels(p)
            key = self._key(call)
            if p.tool == "create_issue":
                return self._reconcile_issue(p, key, call)
            if p.tool == "comment":
                return self._reconcile_comment(p, key, call)
        raise PermanentError(f"{self.name}.{call.tool} is not a mutation")

    def check(self) -> None:
        """``GET /user`` proves the token; each exact repository of ``repositories`` is read
        to prove the token can see it (and that it has issues)."""
        with deadline_in(CHECK_TIMEOUT):
            user = self._get("/user", "GET /user", "GitHub has no /user here: is base_url "
                             "the API's URL (https://HOST/api/v3 for GitHub Enterprise)?")
            if not isinstance(user.data, Mapping) or not isinstance(user.data.get("login"),
                                                                      str):
                raise malformed(Target("GET /user", "", {}), "it names no user",
                                mutate=False, status=user.status)
            for pattern in self._patterns:
                if "*" in pattern:
                    continue
                owner, name = pattern.split("/")
                path = f"/repos/{segment(owner)}/{segment(name)}"
                repo = self._get(path, f"GET {path}", f"no such repository {pattern}, or "
                                 "the token cannot see it (GitHub answers 404 for both)")
                if isinstance(repo.data, Mapping) and repo.data.get("has_issues") is False:
                    raise PreconditionError(f"GitHub repository {pattern} has issues "
                                            "disabled: enable them in its settings, or remove "
                                            "it from repositories", repository=pattern)

    def close(self) -> None:
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            api.close()

    # -- tools -------------------------------------------------------------------------------

    def _list(self, p: Params) -> dict[str, Any]:
        query = {"state": p.state, "per_page": str(p.limit)}
        if p.labels:
            query["labels"] = ",".join(p.labels)
        if p.since is not None:
            query["since"] = iso(p.since)
        query.update(p.cursor)
        path = f"{p.repo_path}/issues"
        answer = self._get(path, f"GET {path}", self._no_repo(p), query=query)
        if not isinstance(answer.data, list):
            raise malformed(Target(f"GET {path}", "", {}), "its body is not a list of "
                            "issues", mutate=False, status=answer.status)
        issues = []
        for item in answer.data[:MAX_LIMIT]:
            if isinstance(item, Mapping) and "pull_request" in item:
                continue
            issues.append(self._issue(item, f"GET {path}", answer.status))
        nxt = answer.next_page()
        return {"issues": issues, "next": encode_cursor(nxt) if nxt else None}

    def _post(self, p: Params, key: str) -> dict[str, Any]:
        if p.tool == "create_issue":
            path = f"{p.repo_path}/issues"
            body: dict[str, Any] = {"title": p.title, "body": with_marker(p.body, key)}
            if p.labels:
                body["labels"] = list(p.labels)
            if p.assignees:
                body["assignees"] = list(p.assignees)
            target = Target(f"POST {path}", self._no_repo(p),
                            {"assignee": "assignees", "assignees": "assignees",
                             "labels": "labels", "title": "title", "body": "body"})
        else:
            path = f"{p.repo_path}/issues/{p.issue}/comments"
            body = {"body": with_marker(p.body, key)}
            target = Target(f"POST {path}", self._no_issue(p), {"body": "body"})
        answer = self._client().request("POST", path, target, mutate=True, body=body)
        if p.tool == "create_issue":
            return self._created(answer.data, target.what, answer.status)
        return self._commented(answer.data, target.what, answer.status)

    def _add_labels(self, p: Params) -> dict[str, Any]:
        path = f"{p.repo_path}/issues/{p.issue}/labels"
        target = Target(f"POST {path}", self._no_issue(p), {"labels": "labels",
                                                            "name": "labels"})
        answer = self._client().request("POST", path, target, mutate=True,
                                        body={"labels": list(p.labels)})
        if not isinstance(answer.data, list):
            raise malformed(target, "its body is not the issue's list of labels",
                            mutate=True, status=answer.status)
        return {"labels": self._label_names(answer.data)}

    # -- reconcile ---------------------------------------------------------------------------

    def _reconcile_issue(self, p: Params, key: str, call: ToolCall) -> ReconcileResult:
        since = lower_bound(call)
        path = f"{p.repo_path}/issues"
        what = f"GET {path}"
        found, complete = self._scan(
            path, what, self._no_repo(p), since,
            {"state": "all", "sort": "created", "direction": "desc"}, key, newest_first=True)
        if found is not None:
            return ReconcileResult(ReconcileOutcome.APPLIED, self._created(found, what, 200),
                                   f"issue #{found.get('number')} carries the key's marker")
        if not complete:
            hit = self._search(p, key)
            if hit is not None:
                return ReconcileResult(ReconcileOutcome.APPLIED,
                                       self._created(hit, "GET /search/issues", 200),
                                       f"GitHub's search found issue #{hit.get('number')} "
                                       "with the key's marker")
            return ReconcileResult(
                ReconcileOutcome.RETRY, None,
                f"no issue of {p.repo} with the key's marker among the newest "
                f"{SCAN_PAGES * 100}, and GitHub's search (which lags) found none yet")
        window = " created since the attempt" if since is not None else ""
        return self._absent(call, f"no issue of {p.repo}{window} carries the key's marker")

    def _reconcile_comment(self, p: Params, key: str, call: ToolCall) -> ReconcileResult:
        since = lower_bound(call)
        path = f"{p.repo_path}/issues/{p.issue}/comments"
        what = f"GET {path}"
        found, complete = self._scan(path, what, self._no_issue(p), since, {}, key,
                                     newest_first=False)
        if found is not None:
            return ReconcileResult(ReconcileOutcome.APPLIED,
                                   self._commented(found, what, 200),
                                   "a comment carries the key's marker")
        if not complete:
            return ReconcileResult(
                ReconcileOutcome.RETRY, None,
                f"{p.repo}#{p.issue} has more than {SCAN_PAGES * 100} comments since the "
                "attempt; none of those read carries the key's marker")
        window = " since the attempt" if since is not None else ""
        return self._absent(call, f"no comment on {p.repo}#{p.issue}{window} carries the "
                                  "key's marker")

    def _reconcile_labels(self, p: Params) -> ReconcileResult:
        path = f"{p.repo_path}/issues/{p.issue}"
        answer = self._get(path, f"GET {path}", self._no_issue(p))
        data = answer.data
        if not isinstance(data, Mapping) or not isinstance(data.get("labels"), list):
            raise malformed(Target(f"GET {path}", "", {}), "it has no list of labels",
                            mutate=False, status=answer.status)
        names = self._label_names(data["labels"])
        have = {n.casefold() for n in names}
        missing = [label for label in p.labels if label.casefold() not in have]
        if not missing:
            return ReconcileResult(ReconcileOutcome.APPLIED, {"labels": names},
                                   "the issue has every label")
        return ReconcileResult(ReconcileOutcome.FAILED, None,
                               f"the issue lacks {', '.join(missing)}; adding labels again is "
                               "harmless")

    def _scan(self, path: str, what: str, missing: str, since: datetime | None,
              base: Mapping[str, str], key: str, *, newest_first: bool
              ) -> tuple[Mapping[str, Any] | None, bool]:
        """Look for the key's marker in a listing; returns (item, whether the scan saw every
        item created since ``since``)."""
        needle = marker(key)
        query = dict(base, per_page="100")
        if since is not None:
            query["since"] = iso(since)  # updated since: includes everything created since
        cursor: Mapping[str, str] = {}
        for _ in range(SCAN_PAGES):
            answer = self._get(path, what, missing, query={**query, **cursor})
            if not isinstance(answer.data, list):
                raise malformed(Target(what, "", {}), "its body is not a list",
                                mutate=False, status=answer.status)
            for item in answer.data:
                if not isinstance(item, Mapping):
                    continue
                created = parse_time(item.get("created_at"))
                if newest_first and since is not None and created is not None \
                        and created < since:
                    return None, True  # older than the attempt: the rest are older still
                body = item.get("body")
                if isinstance(body, str) and needle in body and "pull_request" not in item:
                    return item, True
            nxt = answer.next_page()
            if nxt is None:
                return None, True
            cursor = nxt
        return None, False

    def _search(self, p: Params, key: str) -> Mapping[str, Any] | None:
        """GitHub's search for the marker: its index lags, so only a hit counts."""
        query = {"q": f'repo:{p.repo} is:issue in:body "keepflow:{key}"',
                 "per_page": str(SEARCH_RESULTS)}
        answer = self._get("/search/issues", "GET /search/issues", "GitHub has no search "
                           "API here", query=query)
        items = answer.data.get("items") if isinstance(answer.data, Mapping) else None
        if not isinstance(items, list):
            raise malformed(Target("GET /search/issues", "", {}), "it has no list of items",
                            mutate=False, status=answer.status)
        needle = marker(key)
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("body"), str) \
                    and needle in item["body"] and "pull_request" not in item:
                return item
        return None

    @staticmethod
    def _absent(call: ToolCall, what: str) -> ReconcileResult:
        """A complete listing without the marker: failed, unless GitHub may still be working
        on the request. Without ``attempted_at`` the listing had no lower bound (every item
        was read) and no settle window is known: failed."""
        settled = settled_at(call)
        if settled is not None and datetime.now(UTC) < settled:
            return ReconcileResult(ReconcileOutcome.RETRY, None,
                                   f"{what} yet, and GitHub may still be handling the request "
                                   f"(it ends requests after 10 s); ask again shortly")
        return ReconcileResult(ReconcileOutcome.FAILED, None, f"{what}: it did not happen")

    # -- results -----------------------------------------------------------------------------

    def _issue(self, item: Any, what: str, status: int) -> dict[str, Any]:
        if not isinstance(item, Mapping) or not positive(item.get("number")):
            raise malformed(Target(what, "", {}), "an issue in it has no number",
                            mutate=False, status=status)
        user = item.get("user")
        labels = item.get("labels")
        created, updated = parse_time(item.get("created_at")), parse_time(item.get("updated_at"))
        return {
            "number": item["number"],
            "title": clean_text(item.get("title"), TITLE_CHARS, self._redact),
            "state": clean_text(item.get("state"), STATE_CHARS, self._redact),
            "labels": self._label_names(labels if isinstance(labels, list) else []),
            "user": clean_text(user.get("login"), NAME_CHARS, self._redact)
            if isinstance(user, Mapping) else None,
            "created_at": iso(created) if created else None,
            "updated_at": iso(updated) if updated else None,
            "url": clean_link(item.get("html_url"), "", self._redact),
            "body": clean_text(item.get("body"), BODY_CHARS, self._redact, multiline=True),
        }

    def _created(self, data: Any, what: str, status: int) -> dict[str, Any]:
        if not isinstance(data, Mapping) or not positive(data.get("number")):
            raise malformed(Target(what, "", {}), "it names no issue number", mutate=True,
                            status=status)
        return {"number": data["number"],
                "url": clean_link(data.get("html_url"), "", self._redact),
                "title": clean_text(data.get("title"), TITLE_CHARS, self._redact)}

    def _commented(self, data: Any, what: str, status: int) -> dict[str, Any]:
        if not isinstance(data, Mapping) or not positive(data.get("id")):
            raise malformed(Target(what, "", {}), "it names no comment id", mutate=True,
                            status=status)
        return {"id": data["id"], "url": clean_link(data.get("html_url"), "", self._redact)}

    def _label_names(self, labels: list[Any]) -> list[str]:
        names: list[str] = []
        for label in labels[:LABELS_MAX]:
            raw = label.get("name") if isinstance(label, Mapping) else label
            name = clean_text(raw, NAME_CHARS, self._redact)
            if name is not None:
                names.append(name)
        return names

    # -- internals ---------------------------------------------------------------------------

    def _client(self) -> GitHubApi:
        with self._lock:
            if self._api is None:
                self._api = GitHubApi(self._base, self._token.reveal(), self._redact)
            return self._api

    def _get(self, path: str, what: str, missing: str, *,
             query: Mapping[str, str] | None = None) -> Answer:
        return self._client().request("GET", path, Target(what, missing, {"since": "since"}),
                                      mutate=False, query=query)

    def _key(self, call: ToolCall) -> str:
        return check_key(self.name, call.tool, call.idempotency_key)

    def _no_repo(self, p: Params) -> str:
        return (f"no such repository {p.repo}, or the token cannot see it (GitHub answers "
                "404 for both); check the name and the token's access")

    def _no_issue(self, p: Params) -> str:
        return (f"no issue #{p.issue} in {p.repo}, or no such repository, or the token "
                "cannot see it (GitHub answers 404 for each)")

    def _parse(self, call: ToolCall) -> Params:
        """Check the params (SPEC §6: malformed calls are rejected before anything runs)."""
        self.tool(call.tool)
        return self._rules.parse(call.tool, call.params)


register_connector(GitHubConnector)
