"""A fake GitHub REST API (v2022-11-28) on loopback, for the ``github`` connector's tests.

It follows GitHub's published shapes (docs.github.com/en/rest): issues
(/rest/issues/issues), issue comments (/rest/issues/comments), labels (/rest/issues/labels)
and issue search (/rest/search/search), with GitHub's pagination (``per_page`` up to 100,
``page``, a ``Link`` header whose URLs use ``/repositories/{id}/…`` as GitHub's do), its
error bodies (``{"message", "documentation_url", "status"}``; a ``422`` with ``errors:
[{resource, field, code}]``), its rate-limit answers (primary: ``403`` with
``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset``; secondary: ``429``/``403`` with
``retry-after``, or a bare ``403`` that only says so) and its ``x-ratelimit-*`` headers on
every answer.

What tests steer:

* ``add_repo(...)``: a repository, optionally private to some tokens (``readers``; GitHub
  answers 404 to the others), writable only by some (``writers``; the others get
  ``403 Resource not accessible by personal access token``), or with issues disabled (410);
* ``seed_issue(...)``: an issue or pull request made "earlier" (``age`` seconds ago);
* ``search_lag``: seconds before a new issue becomes searchable (GitHub's search index lags
  behind its records); ``make_searchable()`` indexes everything now;
* ``rate_limit(form, seconds, ...)``: the next matching request is rate limited, in one of
  the forms above (:data:`RATE_FORMS`);
* every fault of :class:`~tests.support.fake_api.FakeApi` (``drop``, ``apply_then_drop``, …);
* ``reset()``: everything back to a fresh GitHub, for a server shared by many tests.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from tests.support.fake_api import MUTATING, FakeApi, Request, Response

DOCS = "https://docs.github.com/rest"
API_VERSION = "2022-11-28"
BODY_MAX = 65536
RATE_FORMS = ("primary", "primary_429", "secondary", "secondary_403", "secondary_bare")

_REPO = r"(?:/api/v3)?/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass
class FakeComment:
    id: int
    body: str
    user: str
    created_at: float
    updated_at: float


@dataclass
class FakeIssue:
    number: int
    title: str
    body: str | None
    user: str
    created_at: float
    updated_at: float
    searchable_at: float
    state: str = "open"
    labels: list[str] = field(default_factory=list)
    assignees: list[str] = field(default_factory=list)
    pull_request: bool = False
    comments: list[FakeComment] = field(default_factory=list)


@dataclass
class FakeRepo:
    owner: str
    name: str
    id: int
    has_issues: bool = True
    readers: set[str] | None = None  # tokens that can see it; None: every token
    writers: set[str] | None = None  # tokens that may write; None: every token
    collaborators: set[str] = field(default_factory=set)  # assignable logins
    issues: list[FakeIssue] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # lower-case name -> name

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class FakeGitHub(FakeApi):
    login: str = "keepflow-bot"
    #: Seconds before a created issue shows up in search results.
    search_lag: float = 0.0
    #: Added to this machine's clock for the timestamps GitHub writes (clock skew).
    time_offset: float = 0.0
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    _forms: deque[str] = field(default_factory=deque)
    _next_id: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.route
        r("GET", r"(?:/api/v3)?/user", self._user)
        r("GET", _REPO, self._repo)
        r("GET", _REPO + "/issues", self._list_issues)
        r("POST", _REPO + "/issues", self._create_issue)
        r("GET", _REPO + r"/issues/(?P<number>[0-9]+)", self._get_issue)
        r("GET", _REPO + r"/issues/(?P<number>[0-9]+)/comments", self._list_comments)
        r("POST", _REPO + r"/issues/(?P<number>[0-9]+)/comments", self._create_comment)
        r("POST", _REPO + r"/issues/(?P<number>[0-9]+)/labels", self._add_labels)
        r("GET", r"(?:/api/v3)?/search/issues", self._search)

    # -- what tests set up -----------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.time_offset

    def add_repo(self, full_name: str, **kwargs: Any) -> FakeRepo:
        owner, name = full_name.split("/")
        with self.lock:
            repo = FakeRepo(owner, name, id=len(self.repos) + 1296269, **kwargs)
            self.repos[full_name.lower()] = repo
        return repo

    def seed_issue(self, full_name: str, title: str, *, body: str | None = None,
                   age: float = 3600.0, labels: list[str] | None = None,
                   state: str = "open", pull_request: bool = False, user: str = "octocat",
                   searchable: bool = True) -> FakeIssue:
        with self.lock:
            repo = self.repos[full_name.lower()]
            when = self.now() - age
            issue = FakeIssue(len(repo.issues) + 1, title, body, user, when, when,
                              when if searchable else float("inf"), state=state,
                              labels=list(labels or []), pull_request=pull_request)
            for label in issue.labels:
                repo.labels.setdefault(label.lower(), label)
            repo.issues.append(issue)
            return issue

    def seed_comment(self, full_name: str, number: int, body: str, *, age: float = 60.0
                     ) -> FakeComment:
        with self.lock:
            issue = self.repos[full_name.lower()].issues[number - 1]
            when = self.now() - age
            comment = FakeComment(self._new_id(), body, "octocat", when, when)
            issue.comments.append(comment)
            return comment

    def reset(self) -> None:
        """Back to a fresh GitHub (one server can serve many tests: starting and stopping one
        costs up to half a second)."""
        with self.lock:
            self.requests.clear()
            self._faults.clear()
            self._forms.clear()
            self.repos.clear()
            self.tokens = {"good-token"}
            self.search_lag = 0.0
            self.time_offset = 0.0

    def issues_of(self, full_name: str) -> list[FakeIssue]:
        with self.lock:
            return [i for i in self.repos[full_name.lower()].issues if not i.pull_request]

    def make_searchable(self) -> None:
        with self.lock:
            for repo in self.repos.values():
                for issue in repo.issues:
                    issue.searchable_at = min(issue.searchable_at, self.now())

    def rate_limit(self, form: str = "secondary", seconds: float = 2.0, *,
                   methods: tuple[str, ...] = MUTATING, path: str | None = None,
                   times: int = 1) -> None:
        """The next ``times`` matching requests are rate limited in ``form``."""
        assert form in RATE_FORMS, form
        with self.lock:
            self._forms.extend([form] * times)
            self.fault("rate_limit", times=times, methods=methods, path=path,
                       retry_after=seconds)

    # -- how GitHub answers ----------------------------------------------------------------

    def auth_error(self, req: Request) -> Response:
        return 401, self._limits(), {"message": "Bad credentials", "documentation_url": DOCS,
                                     "status": "401"}

    def not_found(self, req: Request) -> Response:
        return 404, self._limits(), {"message": "Not Found", "documentation_url": DOCS,
                                     "status": "404"}

    def rate_limited(self, req: Request, retry_after: float | None) -> Response:
        form = self._forms.popleft() if self._forms else "secondary"
        seconds = int(retry_after or 60)
        if form.startswith("primary"):
            headers = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
                       "x-ratelimit-used": "5000", "x-ratelimit-resource": "core",
                       "x-ratelimit-reset": str(int(time.time()) + seconds)}
            status = 429 if form == "primary_429" else 403
            return status, headers, {
                "message": "API rate limit exceeded for user ID 1. If you reach out to GitHub "
                           "Support for help, please include the request ID.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-"
                                     "the-rest-api", "status": str(status)}
        headers = {} if form == "secondary_bare" else {"retry-after": str(seconds)}
        status = 429 if form == "secondary" else 403
        return status, {**self._limits(), **headers}, {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                       "before you try again.",
            "documentation_url": "https://docs.github.com/free-pro-team@latest/rest/overview/"
                                 "rate-limits-for-the-rest-api#about-secondary-rate-limits",
            "status": str(status)}

    def _dispatch(self, req: Request) -> Response:
        if not req.headers.get("user-agent"):
            return 403, {}, {"message": "Request forbidden by administrative rules. Please "
                                        "make sure your request has a User-Agent header "
                                        "(https://docs.github.com/en/rest/overview/resources-"
                                        "in-the-rest-api#user-agent-required)."}
        version = req.headers.get("x-github-api-version")
        if version is not None and version != API_VERSION:
            return 400, {}, {"message": f"Unsupported 'X-GitHub-Api-Version' header value "
                                        f"'{version}'", "documentation_url": DOCS}
        return super()._dispatch(req)

    # -- handlers --------------------------------------------------------------------------

    def _user(self, req: Request, m: re.Match[str]) -> Response:
        return 200, self._limits(), {"login": self.login, "id": 1, "type": "User",
                                     "node_id": "MDQ6VXNlcjE=", "site_admin": False}

    def _repo(self, req: Request, m: re.Match[str]) -> Response:
        repo = self._visible(req, m)
        if repo is None:
            return self.not_found(req)
        can_write = repo.writers is None or req.token in repo.writers
        return 200, self._limits(), {
            "id": repo.id, "node_id": "R_kgDO", "name": repo.name, "full_name": repo.full_name,
            "owner": {"login": repo.owner, "id": 7, "type": "Organization"},
            "private": repo.readers is not None, "has_issues": repo.has_issues,
            "html_url": f"https://github.com/{repo.full_name}",
            "permissions": {"admin": False, "maintain": False, "push": can_write,
                            "triage": can_write, "pull": True}}

    def _list_issues(self, req: Request, m: re.Match[str]) -> Response:
        repo, error = self._issues_of(req, m, write=False)
        if error is not None:
            return error
        assert repo is not None
        state = req.arg("state", "open")
        since = req.arg("since")
        since_t = _parse_time(since) if since else None
        if since and since_t is None:
            return self._invalid("Issue", "since")
        wanted = [x.lower() for x in (req.arg("labels") or "").split(",") if x]
        items = [i for i in repo.issues
                 if (state == "all" or i.state == state)
                 and (since_t is None or i.updated_at >= since_t)
                 and all(w in [x.lower() for x in i.labels] for w in wanted)]
        key = "updated_at" if req.arg("sort") == "updated" else "created_at"
        items.sort(key=lambda i: (getattr(i, key), i.number),
                   reverse=req.arg("direction", "desc") != "asc")
        return self._page(req, f"/repositories/{repo.id}/issues", items,
                          lambda i: self._issue_json(repo, i))

    def _create_issue(self, req: Request, m: re.Match[str]) -> Response:
        repo, error = self._issues_of(req, m, write=True)
        if error is not None:
            return error
        assert repo is not None
        data = req.json
        if not isinstance(data, dict):
            return 400, self._limits(), {"message": "Problems parsing JSON",
                                         "documentation_url": DOCS, "status": "400"}
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            return self._invalid("Issue", "title", "missing_field")
        body = data.get("body")
        if body is not None and not isinstance(body, str):
            return self._invalid("Issue", "body")
        if isinstance(body, str) and len(body) > BODY_MAX:
            return self._invalid("Issue", "body", "custom",
                                 message=f"body is too long (maximum is {BODY_MAX} "
                                         "characters)")
        labels = data.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            return self._invalid("Issue", "labels")
        assignees = data.get("assignees") or []
        for login in assignees:
            if login != self.login and login not in repo.collaborators:
                return self._invalid("Issue", "assignees", value=login)
        now = self.now()
        issue = FakeIssue(len(repo.issues) + 1, title, body, self.login, now, now,
                          now + self.search_lag, assignees=list(assignees))
        self._label(repo, issue, labels)
        repo.issues.append(issue)
        out = self._issue_json(repo, issue)
        return 201, {**self._limits(), "Location": out["url"]}, out

    def _get_issue(self, req: Request, m: re.Match[str]) -> Response:
        repo, issue, error = self._issue_at(req, m, write=False)
        if error is not None:
            return error
        assert repo is not None
        assert issue is not None
        return 200, self._limits(), self._issue_json(repo, issue)

    def _list_comments(self, req: Request, m: re.Match[str]) -> Response:
        repo, issue, error = self._issue_at(req, m, write=False)
        if error is not None:
            return error
        assert repo is not None
        assert issue is not None
        since = req.arg("since")
        since_t = _parse_time(since) if since else None
        if since and since_t is None:
            return self._invalid("IssueComment", "since")
        items = [c for c in issue.comments if since_t is None or c.updated_at >= since_t]
        return self._page(req, f"/repositories/{repo.id}/issues/{issue.number}/comments",
                          items, lambda c: self._comment_json(repo, issue, c))

    def _create_comment(self, req: Request, m: re.Match[str]) -> Response:
        repo, issue, error = self._issue_at(req, m, write=True)
        if error is not None:
            return error
        assert repo is not None
        assert issue is not None
        data = req.json
        body = data.get("body") if isinstance(data, dict) else None
        if not isinstance(body, str) or not body:
            return self._invalid("IssueComment", "body", "missing_field")
        if len(body) > BODY_MAX:
            return self._invalid("IssueComment", "body", "custom",
                                 message=f"body is too long (maximum is {BODY_MAX} "
                                         "characters)")
        now = self.now()
        comment = FakeComment(self._new_id(), body, self.login, now, now)
        issue.comments.append(comment)
        issue.updated_at = now
        out = self._comment_json(repo, issue, comment)
        return 201, {**self._limits(), "Location": out["url"]}, out

    def _add_labels(self, req: Request, m: re.Match[str]) -> Response:
        repo, issue, error = self._issue_at(req, m, write=True)
        if error is not None:
            return error
        assert repo is not None
        assert issue is not None
        data = req.json
        raw = data.get("labels") if isinstance(data, dict) else data
        names = [x.get("name") if isinstance(x, dict) else x for x in raw] \
            if isinstance(raw, list) else None
        if not names or not all(isinstance(x, str) and x.strip() for x in names):
            return self._invalid("Label", "name")
        self._label(repo, issue, names)
        issue.updated_at = self.now()
        return 200, self._limits(), [self._label_json(repo, x) for x in issue.labels]

    def _search(self, req: Request, m: re.Match[str]) -> Response:
        q = req.arg("q")
        if not q:
            return self._invalid("Search", "q", "missing")
        terms: list[str] = []
        repo_name: str | None = None
        kinds: set[str] = set()
        where: set[str] = set()
        for qualifier, value, phrase, word in re.findall(
                r'(\w+):("[^"]*"|\S+)|"([^"]*)"|(\S+)', q):
            if qualifier == "repo":
                repo_name = value.strip('"').lower()
            elif qualifier == "is":
                kinds.add(value)
            elif qualifier == "in":
                where.update(value.split(","))
            elif phrase or word:
                terms.append((phrase or word).lower())
        now = self.now()
        found: list[tuple[FakeRepo, FakeIssue]] = []
        for key, repo in self.repos.items():
            if repo_name is not None and key != repo_name:
                continue
            if repo.readers is not None and req.token not in repo.readers:
                continue
            for issue in repo.issues:
                if issue.searchable_at > now:
                    continue  # not in the index yet
                if "issue" in kinds and issue.pull_request:
                    continue
                if "pr" in kinds and not issue.pull_request:
                    continue
                text = " ".join(
                    part for part, name in ((issue.title, "title"), (issue.body or "", "body"))
                    if not where or name in where).lower()
                if all(t in text for t in terms):
                    found.append((repo, issue))
        found.sort(key=lambda x: x[1].created_at, reverse=True)
        status, headers, items = self._page(req, "/search/issues", found,
                                            lambda x: self._issue_json(*x) | {"score": 1.0})
        return status, headers, {"total_count": len(found), "incomplete_results": False,
                                 "items": items}

    # -- shapes ----------------------------------------------------------------------------

    def _limits(self) -> dict[str, str]:
        return {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
                "x-ratelimit-used": "1", "x-ratelimit-resource": "core",
                "x-ratelimit-reset": str(int(time.time()) + 3600),
                "x-github-api-version-selected": API_VERSION,
                "x-github-media-type": "github.v3; format=json"}

    def _invalid(self, resource: str, field_: str, code: str = "invalid", *,
                 message: str | None = None, value: Any = None) -> Response:
        error: dict[str, Any] = {"resource": resource, "field": field_, "code": code}
        if message is not None:
            error["message"] = message
        if value is not None:
            error["value"] = value
        return 422, self._limits(), {"message": "Validation Failed", "errors": [error],
                                     "documentation_url": DOCS, "status": "422"}

    def _page(self, req: Request, path: str, items: list[Any], render: Any) -> Response:
        try:
            per_page = min(max(int(req.arg("per_page", "30") or 30), 1), 100)
        except ValueError:
            per_page = 30
        try:
            page = max(int(req.arg("page", "1") or 1), 1)
        except ValueError:
            page = 1
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page: page * per_page]
        query = {k: v[-1] for k, v in req.query.items()}
        links = []

        def link(n: int, rel: str) -> str:
            return f'<{self.url}{path}?{urlencode({**query, "page": str(n)})}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        headers = self._limits()
        if links:
            headers["Link"] = ", ".join(links)
        return 200, headers, [render(x) for x in chunk]

    def _issue_json(self, repo: FakeRepo, i: FakeIssue) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        kind = "pull" if i.pull_request else "issues"
        out: dict[str, Any] = {
            "id": repo.id * 1000 + i.number, "node_id": f"I_kw{i.number}",
            "url": f"{api}/issues/{i.number}", "repository_url": api,
            "labels_url": f"{api}/issues/{i.number}/labels{{/name}}",
            "comments_url": f"{api}/issues/{i.number}/comments",
            "html_url": f"https://github.com/{repo.full_name}/{kind}/{i.number}",
            "number": i.number, "state": i.state,
            "state_reason": "completed" if i.state == "closed" else None,
            "title": i.title, "body": i.body,
            "user": {"login": i.user, "id": 2, "type": "User"},
            "labels": [self._label_json(repo, x) for x in i.labels],
            "assignee": {"login": i.assignees[0]} if i.assignees else None,
            "assignees": [{"login": a} for a in i.assignees], "milestone": None,
            "locked": False, "comments": len(i.comments),
            "created_at": stamp(i.created_at), "updated_at": stamp(i.updated_at),
            "closed_at": stamp(i.updated_at) if i.state == "closed" else None,
            "author_association": "OWNER"}
        if i.pull_request:
            out["pull_request"] = {"url": f"{api}/pulls/{i.number}",
                                   "html_url": out["html_url"], "merged_at": None}
        return out

    def _comment_json(self, repo: FakeRepo, issue: FakeIssue, c: FakeComment
                      ) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        return {"id": c.id, "node_id": f"IC_kw{c.id}", "url": f"{api}/issues/comments/{c.id}",
                "html_url": f"https://github.com/{repo.full_name}/issues/{issue.number}"
                            f"#issuecomment-{c.id}",
                "issue_url": f"{api}/issues/{issue.number}", "body": c.body,
                "user": {"login": c.user, "id": 1, "type": "User"},
                "created_at": stamp(c.created_at), "updated_at": stamp(c.updated_at),
                "author_association": "OWNER"}

    def _label_json(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        return {"id": abs(hash(name.lower())) % 10**9, "node_id": "LA_kw",
                "url": f"{self.url}/repos/{repo.full_name}/labels/{name}", "name": name,
                "description": None, "color": "ededed", "default": False}

    # -- lookups ---------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _label(self, repo: FakeRepo, issue: FakeIssue, names: list[str]) -> None:
        for name in names:
            known = repo.labels.setdefault(name.lower(), name)  # created when unknown
            if known.lower() not in [x.lower() for x in issue.labels]:
                issue.labels.append(known)

    def _visible(self, req: Request, m: re.Match[str]) -> FakeRepo | None:
        repo = self.repos.get(f"{m['owner']}/{m['name']}".lower())
        if repo is None or (repo.readers is not None and req.token not in repo.readers):
            return None
        return repo

    def _issues_of(self, req: Request, m: re.Match[str], *, write: bool
                   ) -> tuple[FakeRepo | None, Response | None]:
        repo = self._visible(req, m)
        if repo is None:
            return None, self.not_found(req)
        if not repo.has_issues:
            return None, (410, self._limits(), {"message": "Issues are disabled for this repo",
                                                "documentation_url": DOCS, "status": "410"})
        if write and repo.writers is not None and req.token not in repo.writers:
            return None, (403, {**self._limits(),
                                "x-accepted-github-permissions": "issues=write"},
                          {"message": "Resource not accessible by personal access token",
                           "documentation_url": DOCS, "status": "403"})
        return repo, None

    def _issue_at(self, req: Request, m: re.Match[str], *, write: bool
                  ) -> tuple[FakeRepo | None, FakeIssue | None, Response | None]:
        repo, error = self._issues_of(req, m, write=write)
        if error is not None:
            return None, None, error
        assert repo is not None
        number = int(m["number"])
        if not 1 <= number <= len(repo.issues):
            return None, None, self.not_found(req)
        return repo, repo.issues[number - 1], None
