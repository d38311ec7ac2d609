"""The params of the ``github`` connector's tools, checked before anything is sent (SPEC §6,
§9; docs/connectors.md#github).

A malformed call is a :class:`~keepflow.errors.PermanentError` naming the param
(``details["field"]``), raised by ``validate`` and again by ``call``; a repository outside
the connection's ``repositories`` allow-list is :class:`~keepflow.errors.PermissionDenied`.
Names go into URL paths, so they are held to GitHub's own alphabet: an owner of letters,
digits and single hyphens (at most 39), a repository name of letters, digits, ``-``, ``_``
and ``.`` (at most 100, never ``.`` or ``..``). Texts are held to GitHub's bounds (a title
of 256 characters, a body of 65,536 less the idempotency marker, labels of 50), and must be
storable (no NUL, no lone surrogate).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from keepflow.connectors.github_api import DOC, decode_cursor, parse_time, segment
from keepflow.errors import PermanentError, PermissionDenied
from keepflow.storable import first_unstorable

PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "list_issues": frozenset({"repo", "state", "labels", "since", "limit", "page_cursor"}),
    "create_issue": frozenset({"repo", "title", "body", "labels", "assignees"}),
    "comment": frozenset({"repo", "issue", "body"}),
    "add_labels": frozenset({"repo", "issue", "labels"}),
}

#: GitHub's own bounds on what a call sends (its validation answers 422 beyond them).
TITLE_MAX: Final = 256
BODY_MAX: Final = 65536
LABEL_MAX: Final = 50
LABELS_MAX: Final = 100
ASSIGNEES_MAX: Final = 10
#: Issues per page: GitHub's default and maximum ``per_page``.
DEFAULT_LIMIT: Final = 30
MAX_LIMIT: Final = 100
#: Characters of an idempotency key carried in a marker.
KEY_CHARS: Final = 200

OWNER: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})\Z")
NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,100}\Z")
_OWNER_PATTERN: Final = re.compile(r"[A-Za-z0-9*-]{1,39}\Z")
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9._*-]{1,100}\Z")
CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: A key safe inside an HTML comment: no "--", no ">", no spaces.
_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:]*(?:-[A-Za-z0-9._:]+)*\Z")
_STATES: Final = ("open", "closed", "all")


def marker(key: str) -> str:
    """What a post carries of its idempotency key (an HTML comment, invisible rendered)."""
    return f"<!-- keepflow:{key} -->"


def with_marker(body: str | None, key: str) -> str:
    """``body`` ending with the key's marker, after a blank line."""
    text = (body or "").rstrip()
    return f"{text}\n\n{marker(key)}" if text else marker(key)


#: Characters a body may have: GitHub's bound less the longest marker and its blank line.
BODY_ROOM: Final = BODY_MAX - len(marker("k" * KEY_CHARS)) - 2


def repo_pattern(pattern: str) -> re.Pattern[str] | None:
    """An allow-list entry (``acme/*``) as a regular expression on lower-cased
    ``owner/name``; ``None`` when it is not one."""
    if pattern.count("/") != 1:
        return None
    owner, name = pattern.split("/")
    if not _OWNER_PATTERN.match(owner) or not _NAME_PATTERN.match(name):
        return None
    parts = ["[^/]*".join(re.escape(piece) for piece in part.lower().split("*"))
             for part in (owner, name)]
    return re.compile(f"{parts[0]}/{parts[1]}\\Z")


@dataclass(frozen=True)
class Params:
    """A call's checked params."""

    tool: str
    owner: str
    name: str
    state: str = "open"
    labels: tuple[str, ...] = ()
    since: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: Mapping[str, str] = field(default_factory=dict)
    title: str = ""
    body: str | None = None
    assignees: tuple[str, ...] = ()
    issue: int = 0

    @property
    def repo(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def repo_path(self) -> str:
        return f"/repos/{segment(self.owner)}/{segment(self.name)}"


def check_key(connection: str, tool: str, key: Any) -> str:
    """The call's idempotency key, if a marker can carry it (the host's always can)."""
    if not isinstance(key, str) or len(key) > KEY_CHARS or not _KEY.match(key):
        raise PermanentError(
            f"{connection}.{tool}: a mutation needs the host's idempotency key (letters, "
            "digits, single '-', '.', '_', ':'); nothing was sent", sent=False)
    return key


@dataclass(frozen=True)
class ParamRules:
    """How one connection checks params: its name (for messages) and its allow-list."""

    connection: str
    patterns: tuple[str, ...] = ()
    allowed: Sequence[re.Pattern[str]] = ()

    def parse(self, tool: str, p: Any) -> Params:
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.connection}.{tool}: params must be an object",
                                 sent=False)
        known = PARAMS[tool]
        unknown = sorted(str(k) for k in set(p) - known)
        if unknown:
            raise self._bad(tool, unknown[0], f"unknown parameter; {tool} takes "
                            f"{sorted(known)}")
        owner, name = self._repo(tool, p.get("repo"))
        if tool == "list_issues":
            state = "open" if p.get("state") is None else p.get("state")
            if state not in _STATES:
                raise self._bad(tool, "state", 'must be "open", "closed" or "all"')
            return Params(tool, owner, name, state=state,
                          labels=self._labels(tool, p.get("labels"), filter_=True),
                          since=self._since(tool, p.get("since")),
                          limit=self._limit(tool, p.get("limit")),
                          cursor=self._cursor(tool, p.get("page_cursor")))
        if tool == "create_issue":
            assignees = _list(p.get("assignees"))
            if assignees is None or len(assignees) > ASSIGNEES_MAX or not all(
                    isinstance(a, str) and OWNER.match(a) for a in assignees):
                raise self._bad(tool, "assignees", f"must be a list of at most "
                                f"{ASSIGNEES_MAX} GitHub logins")
            return Params(tool, owner, name, title=self._title(tool, p.get("title")),
                          body=self._body(tool, p.get("body"), required=False),
                          labels=self._labels(tool, p.get("labels")),
                          assignees=tuple(dict.fromkeys(assignees)))
        raw = p.get("issue")
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or not positive(raw) or raw > 2**31:
            raise self._bad(tool, "issue", "must be the issue's (or pull request's) number, "
                            "a whole number from 1")
        issue = raw
        if tool == "comment":
            return Params(tool, owner, name, issue=issue,
                          body=self._body(tool, p.get("body"), required=True))
        labels = self._labels(tool, p.get("labels"))
        if not labels:
            raise self._bad(tool, "labels", "must name at least one label")
        return Params(tool, owner, name, issue=issue, labels=labels)

    def _repo(self, tool: str, raw: Any) -> tuple[str, str]:
        if not isinstance(raw, str) or raw.count("/") != 1:
            raise self._bad(tool, "repo", 'must be "owner/name", e.g. "acme/web"')
        owner, name = raw.split("/")
        if not OWNER.match(owner) or not NAME.match(name) or name in (".", ".."):
            raise self._bad(tool, "repo", 'must be "owner/name": an owner of letters, digits '
                            'and "-", a name of letters, digits, "-", "_" and "."')
        if self.allowed and not any(m.match(raw.lower()) for m in self.allowed):
            raise PermissionDenied(
                f"{self.connection}.{tool}: params.repo: {raw!r} is not in this connection's "
                f"repositories ({', '.join(self.patterns)}); nothing was sent. Add it to "
                f"repositories in connections.toml if workflows may use it ({DOC})",
                field="repo", sent=False, repository=raw)
        return owner, name

    def _title(self, tool: str, raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self._bad(tool, "title", "is required: a non-empty string")
        title = raw.strip()
        if len(title) > TITLE_MAX or CONTROL.search(title) or first_unstorable(title):
            raise self._bad(tool, "title", f"must be one line of at most {TITLE_MAX} "
                            "characters, without control characters")
        return title

    def _body(self, tool: str, raw: Any, *, required: bool) -> str | None:
        if raw is None and not required:
            return None
        if not isinstance(raw, str) or (required and not raw.strip()):
            raise self._bad(tool, "body", "is required: a non-empty string" if required
                            else "must be a string")
        if len(raw) > BODY_ROOM or first_unstorable(raw) is not None:
            raise self._bad(tool, "body", f"must be text of at most {BODY_ROOM} characters "
                            f"(GitHub takes {BODY_MAX}; the idempotency marker needs the "
                            "rest), without NUL or lone surrogates")
        return raw

    def _labels(self, tool: str, raw: Any, *, filter_: bool = False) -> tuple[str, ...]:
        labels = _list(raw)
        if labels is None or len(labels) > LABELS_MAX or not all(
                isinstance(x, str) and x.strip() and len(x) <= LABEL_MAX
                and not CONTROL.search(x) and not first_unstorable(x)
                and not (filter_ and "," in x) for x in labels):
            raise self._bad(tool, "labels", f"must be a list of at most {LABELS_MAX} label "
                            f"names, each 1 to {LABEL_MAX} characters without control "
                            "characters" + (" or commas" if filter_ else ""))
        return tuple(dict.fromkeys(x.strip() for x in labels))

    def _since(self, tool: str, raw: Any) -> datetime | None:
        if raw is None:
            return None
        when = parse_time(raw) if isinstance(raw, str) else None
        if when is None or when.year < 2000:
            raise self._bad(tool, "since", 'must be an ISO 8601 timestamp, e.g. '
                            '"2024-05-01T00:00:00Z"')
        return when

    def _limit(self, tool: str, raw: Any) -> int:
        if raw is None:
            return DEFAULT_LIMIT
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not positive(raw) or raw > MAX_LIMIT:
            raise self._bad(tool, "limit", f"must be a whole number from 1 to {MAX_LIMIT} "
                            "(GitHub's page size); page through more with page_cursor")
        return int(raw)

    def _cursor(self, tool: str, raw: Any) -> Mapping[str, str]:
        if raw is None:
            return {}
        cursor = decode_cursor(raw) if isinstance(raw, str) else None
        if cursor is None:
            raise self._bad(tool, "page_cursor", "must be the `next` of an earlier "
                            "list_issues result")
        return cursor

    def _bad(self, tool: str, field_: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.connection}.{tool}: params.{field_}: {problem}",
                              field=field_, sent=False)


def _list(raw: Any) -> list[Any] | None:
    """A list param; ``null`` is the empty list, anything else but a list is ``None``."""
    if raw is None:
        return []
    return list(raw) if isinstance(raw, (list, tuple)) else None


def positive(value: Any) -> bool:
    """A whole number from 1 (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
