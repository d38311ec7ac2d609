"""The ``notion`` connector: pages of Notion databases (SPEC §9, docs/connectors.md#notion).

Tools: ``query_database`` (read), and the mutations ``create_page`` and ``update_page``. It
is a client of Notion's public REST API through the official ``notion_client`` package,
pinned to API version ``2022-06-28`` — the version whose database endpoints
(``GET /v1/databases/{id}``, ``POST /v1/databases/{id}/query``) it is written against
(notion_client 3 defaults to 2025-09-03, where databases became "data sources"; the query
is sent with ``Client.request`` since that SDK has no ``databases.query`` any more).

* Property values are flattened to plain JSON when read and built from plain values when
  written, by the database's schema (:mod:`keepflow.connectors.notion_values`).
* Every request ends by the call's deadline and reads at most
  :data:`MAX_RESPONSE_BYTES` of an answer (:mod:`keepflow.connectors.notion_wire`);
  ``notion_client``'s own retries are off: the host retries, with its back-off policy.
* Notion has no idempotency keys. ``create_page`` is keyed by the call's ``key_property``
  instead: it creates the page only when the database has no page whose ``key_property``
  equals the value, and reconcile looks the page up by that value. ``update_page`` sets
  values, so it can be repeated; reconcile compares the page's values with the call's.
  Notion does not document that a query sees a page created a moment ago, so a reconcile
  that finds nothing answers RETRY until the call's timeout and
  :attr:`NotionConnector.query_lag_seconds` have passed since the host recorded the attempt
  (``ToolCall.attempted_at``), and FAILED after (docs/connectors.md#notion-reconcile).

Settings: ``token`` (from ``token_secret`` / ``token_env``; an internal integration's
token), ``base_url`` (default ``https://api.notion.com``), ``databases`` (optional
allow-list of database ids: the scope dimension ``database``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import httpx
from notion_client import Client

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
from keepflow.connectors.http_transport import DeadlineTransport, deadline_in
from keepflow.connectors.limits import CallLimits
from keepflow.connectors.notion_values import (
    KEY_TYPES,
    MAX_PIECES,
    MAX_WRITE_CHARS,
    NAME_CHARS,
    STAMP_CHARS,
    check_plain,
    check_text,
    flatten,
    key_filter,
    notion_id,
    paragraph,
    same_value,
    to_notion,
)
from keepflow.connectors.notion_wire import (
    DEFAULT_BASE_URL,
    DOC,
    FAILURES,
    NotionTransport,
    check_base_url,
    classify,
    malformed,
    proxy_for,
)
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret
from keepflow.connectors.setting_checks import bearer_token, reject_unknown
from keepflow.errors import (
    ConfigError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
)

log = logging.getLogger("keepflow.connectors.notion")
#: notion_client's logger: quiet (this connector reports every failure itself).
_SDK_LOG: Final = logging.getLogger("keepflow.connectors.notion.sdk")

NOTION_VERSION: Final = "2022-06-28"
SETTINGS: Final = frozenset({"token", "base_url", "databases"})
PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "query_database": frozenset({"database", "filter", "sorts", "limit", "cursor"}),
    "create_page": frozenset({"database", "properties", "key_property", "children"}),
    "update_page": frozenset({"page", "properties"}),
}

MiB: Final = 1024 * 1024
#: Bytes of one answer read at most (100 pages of a wide database fit many times over).
MAX_RESPONSE_BYTES: Final = 4 * MiB
#: Pages of one query (Notion's largest page_size).
MAX_LIMIT: Final = 100
#: Characters of a pagination cursor (Notion's are UUIDs).
CURSOR_CHARS: Final = 256
#: Bytes of a query's filter or sorts, as JSON.
QUERY_JSON_BYTES: Final = 32 * 1024
#: Properties one call writes, and paragraphs it adds (Notion: 100 elements per array).
MAX_WRITTEN: Final = 100
MAX_CHILDREN: Final = 100
#: Notion's largest request body (500 KB).
MAX_REQUEST_BYTES: Final = 500_000
#: Properties of one page handed back at most.
MAX_READ_PROPERTIES: Final = 200
#: Characters of a key_property value (one text object).
KEY_CHARS: Final = 2000
DATABASES_MAX: Final = 1000
#: Seconds a database's schema is reused before it is read again.
SCHEMA_SECONDS: Final = 60.0
#: Seconds one ``check()`` may take.
CHECK_SECONDS: Final = 15.0
#: Per-operation timeout handed to notion_client (the call's deadline is what ends a call).
SDK_TIMEOUT_MS: Final = 120_000
_PRINTABLE: Final = re.compile(r"[\x21-\x7e]+\Z")

_PAGE: Final = ("{id, url, created_time, last_edited_time, properties: {name: plain "
                "value}}")


def _mutation(name: str, description: str, params: str, result: str, strategy: str,
              scope: tuple[str, ...]) -> ToolSpec:
    return ToolSpec(name, ToolKind.MUTATE, "notion.write", RiskTier.MEDIUM, description,
                    scope, reconcile=True, reconcile_doc="docs/connectors.md#notion-reconcile",
                    params=params, result=result, reconcile_strategy=strategy)


@dataclass(frozen=True)
class _Params:
    """A call's checked params."""

    tool: str
    database: str = ""
    page: str = ""
    filter: Mapping[str, Any] | None = None
    sorts: list[Any] | None = None
    limit: int = MAX_LIMIT
    cursor: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    key_property: str = ""
    children: tuple[str, ...] = ()

    @property
    def key_value(self) -> Any:
        return self.properties.get(self.key_property)


class NotionConnector(Connector):
    """Type ``notion``. See the module docstring and ``docs/connectors.md#notion``."""

    type_name: ClassVar[str] = "notion"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "query_database": ToolSpec(
            "query_database", ToolKind.READ, "notion.read", RiskTier.LOW,
            "Query a Notion database: pages with their properties as plain values, one page "
            "of results at a time", ("database",),
            params="{database, filter?, sorts?, limit? (≤ 100), cursor?}",
            result=f"{{pages: [{_PAGE}], next_cursor}}"),
        "create_page": _mutation(
            "create_page", "Create a page in a Notion database, unless one with the same "
                           "key_property value is there",
            "{database, properties: {name: value}, key_property, children?: [text]}",
            "{id, url}",
            "query the database for key_property = its value: a page = applied (its id and "
            "url); none = failed once nothing has been found for a few seconds (Notion's "
            "query may lag a new page; until then: retry)", ("database",)),
        "update_page": _mutation(
            "update_page", "Set properties of a Notion page (a page of an allowed database)",
            "{page, properties: {name: value}}", "{id, url, last_edited_time}",
            "retrieve the page and compare its properties with the values written: all "
            "equal = applied; any other = failed (setting them again is safe)", ("page",)),
    }
    #: Notion allows an average of three requests a second per integration; a create_page
    #: makes up to three (schema, key query, create).
    default_limits: ClassVar[CallLimits] = CallLimits(rate=2.0, burst=3)
    #: Seconds a create_page's reconcile keeps answering RETRY while no page with the key
    #: is found (docs/connectors.md#notion-reconcile).
    query_lag_seconds: ClassVar[float] = 5.0

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        token: Secret = s["token"]
        self._token = token
        self._base_url = str(s.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        allowed = s.get("databases")
        self._databases: frozenset[str] | None = (
            None if allowed is None else frozenset(notion_id(d) or "" for d in allowed))
        self._redact = Redactor([token.reveal()])
        self._lock = threading.Lock()
        self._sdk: Client | None = None
        self._http: httpx.Client | None = None
        self._schemas: dict[str, tuple[float, dict[str, str]]] = {}
        self._misses: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"NotionConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("notion", settings, SETTINGS)
        bearer_token("notion", settings, what="a Notion integration's token")
        check_base_url(settings.get("base_url", DEFAULT_BASE_URL))
        databases = settings.get("databases")
        if databases is not None:
            if not isinstance(databases, list) or not databases or \
                    len(databases) > DATABASES_MAX:
                raise ConfigError(f"must be a list of 1 to {DATABASES_MAX} database ids",
                                  key="databases")
            for item in databases:
                if notion_id(item) is None:
                    raise ConfigError(f"{str(item)[:60]!r} is not a Notion database id (32 "
                                      "hexadecimal digits, dashes optional)", key="databases")

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        p = call.params if isinstance(call.params, Mapping) else {}
        if call.tool == "update_page":
            page = notion_id(p.get("page")) or "(invalid page id)"
            props = p.get("properties")
            names = ", ".join(_shown(k, 40) for k in list(props)[:5]) \
                if isinstance(props, Mapping) else ""
            return f"update Notion page {page} ({names})"
        database = notion_id(p.get("database")) or "(invalid database id)"
        if call.tool == "create_page":
            key = p.get("key_property")
            props = p.get("properties")
            value = props.get(key) if isinstance(props, Mapping) and isinstance(key, str) \
                else None
            return (f"create a page in Notion database {database} "
                    f"({_shown(key, 60)} = {_shown(value, 80)})")
        return f"query Notion database {database}"

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        p = self._parse(call)
        with deadline_in(max(call.timeout, 0.0)):
            if p.tool == "query_database":
                return self._query(p, call.timeout)
            if p.tool == "create_page":
                return self._create(p, call.timeout)
            return self._update(p, call.timeout)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Look the page up (strategies: docs/connectors.md#notion-reconcile); Notion's
        failures answer RETRY, never raise."""
        try:
            p = self._parse(call)
            with deadline_in(max(call.timeout, 0.0)):
                if p.tool == "create_page":
                    return self._reconcile_create(p, call)
                if p.tool == "update_page":
                    return self._reconcile_update(p, call.timeout)
            raise PermanentError(f"{self.name}.{call.tool} does not mutate")
        except ConnectorError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)

    def check(self) -> None:
        """``GET /v1/users/me`` (the token works), then each allowed database (it exists and
        is shared with the integration)."""
        with deadline_in(CHECK_SECONDS):
            me = self._send("GET", "users/me", None, mutate=False,
                            what=f"{self.name}: GET /v1/users/me", timeout=CHECK_SECONDS)
            if me.get("object") != "user":
                raise malformed(f"{self.name}: GET /v1/users/me", mutate=False,
                                why="not a user object")
            for database in sorted(self._databases or ()):
                self._schema(database, "check", CHECK_SECONDS, fresh=True)

    def close(self) -> None:
        with self._lock:
            http, self._http, self._sdk = self._http, None, None
        if http is not None:
            http.close()

    # -- tools -------------------------------------------------------------------------------

    def _query(self, p: _Params, timeout: float) -> dict[str, Any]:
        body: dict[str, Any] = {"page_size": p.limit}
        if p.filter is not None:
            body["filter"] = p.filter
        if p.sorts is not None:
            body["sorts"] = p.sorts
        if p.cursor is not None:
            body["start_cursor"] = p.cursor
        what = f"{self.name}.query_database: POST /v1/databases/{p.database}/query"
        answer = self._send("POST", f"databases/{p.database}/query", body, mutate=False,
                            what=what, timeout=timeout)
        results = answer.get("results")
        has_more = answer.get("has_more")
        if not isinstance(results, list) or not isinstance(has_more, bool):
            raise malformed(what, mutate=False, why="no results list or has_more flag")
        cursor = answer.get("next_cursor") if has_more else None
        if cursor is not None and (not isinstance(cursor, str) or len(cursor) > CURSOR_CHARS
                                   or not _PRINTABLE.match(cursor)):
            raise malformed(what, mutate=False, why="its next_cursor is not a cursor")
        pages = [self._page(item, what, mutate=False) for item in results[:p.limit]]
        return {"pages": pages, "next_cursor": cursor}

    def _create(self, p: _Params, timeout: float) -> dict[str, Any]:
        schema = self._schema(p.database, "create_page", timeout)
        properties = self._convert("create_page", p.properties, schema)
        key_kind = self._key_kind(p, schema)
        found = self._find_by_key(p, key_kind, timeout)
        if found:  # the page is there already: nothing is created (the key identifies it)
            return found[0]
        body: dict[str, Any] = {"parent": {"database_id": p.database},
                                "properties": properties}
        if p.children:
            body["children"] = [paragraph(text, i, self._bad_for("create_page"))
                                for i, text in enumerate(p.children)]
        self._check_size("create_page", body)
        what = f"{self.name}.create_page: POST /v1/pages"
        try:
            answer = self._send("POST", "pages", body, mutate=True, what=what, timeout=timeout)
        except PermanentError:
            self._forget_schema(p.database)  # a property may have changed: read it again
            raise
        page = self._page(answer, what, mutate=True)
        return {"id": page["id"], "url": page["url"]}

    def _update(self, p: _Params, timeout: float) -> dict[str, Any]:
        current = self._current_page(p, timeout)
        kinds = _kinds_of(current)
        properties = self._convert("update_page", p.properties, kinds)
        body = {"properties": properties}
        self._check_size("update_page", body)
        what = f"{self.name}.update_page: PATCH /v1/pages/{p.page}"
        answer = self._send("PATCH", f"pages/{p.page}", body, mutate=True, what=what,
                            timeout=timeout)
        page = self._page(answer, what, mutate=True)
        return {"id": page["id"], "url": page["url"],
                "last_edited_time": page["last_edited_time"]}

    # -- reconcile ---------------------------------------------------------------------------

    def _reconcile_create(self, p: _Params, call: ToolCall) -> ReconcileResult:
        schema = self._schema(p.database, "create_page", call.timeout)
        key_kind = self._key_kind(p, schema)
        found = self._find_by_key(p, key_kind, call.timeout)
        shown = f"{_shown(p.key_property, 60)} = {_shown(p.key_value, 80)}"
        mark = call.idempotency_key or f"{p.database}:{p.key_property}:{p.key_value!r}"
        if found:
            with self._lock:
                self._misses.pop(mark, None)
            more = f" ({len(found)} pages have it: the oldest is taken)" if len(found) > 1 \
                else ""
            return ReconcileResult(ReconcileOutcome.APPLIED, found[0],
                                   f"the database has a page with {shown}{more}")
        if call.attempted_at is not None:
            # The host says when the attempt began: once the call's own time and the query's
            # lag have passed since, a page it created would show.
            since = (datetime.now(UTC) - call.attempted_at).total_seconds()
            lagged = since >= call.timeout + self.query_lag_seconds
        else:  # driven without the host: count from the first miss this process saw
            now = time.monotonic()
            with self._lock:
                self._prune_misses(now)
                first = self._misses.setdefault(mark, now)
                lagged = now - first >= self.query_lag_seconds
                if lagged:
                    self._misses.pop(mark, None)
        if lagged:
            return ReconcileResult(ReconcileOutcome.FAILED, None,
                                   f"no page with {shown} in the database")
        return ReconcileResult(
            ReconcileOutcome.RETRY, None,
            f"no page with {shown} found yet; Notion's query may not show a page created a "
            f"moment ago, so it is asked again before the create counts as not done")

    def _reconcile_update(self, p: _Params, timeout: float) -> ReconcileResult:
        try:
            current = self._current_page(p, timeout)
        except PreconditionError as exc:
            return ReconcileResult(ReconcileOutcome.FAILED, None, exc.message)
        what = f"{self.name}.update_page: GET /v1/pages/{p.page}"
        held = current.get("properties")
        for name, value in p.properties.items():
            prop = held.get(name) if isinstance(held, Mapping) else None
            kind = prop.get("type") if isinstance(prop, Mapping) else None
            if not isinstance(kind, str) or not same_value(kind, value, prop):
                return ReconcileResult(ReconcileOutcome.FAILED, None,
                                       f"'{_shown(name, 60)}' does not hold the value written")
        page = self._page(current, what, mutate=False)
        return ReconcileResult(ReconcileOutcome.APPLIED,
                               {"id": page["id"], "url": page["url"],
                                "last_edited_time": page["last_edited_time"]},
                               "every property holds the value written")

    def _prune_misses(self, now: float) -> None:
        if len(self._misses) > 1000:
            for mark, at in list(self._misses.items()):
                if now - at > 3600:
                    del self._misses[mark]

    # -- Notion ------------------------------------------------------------------------------

    def _client(self) -> Client:
        """The notion_client ``Client``, built on first use."""
        with self._lock:
            if self._sdk is None:
                inner = DeadlineTransport(proxy=proxy_for(self._base_url))
                transport = NotionTransport(inner, MAX_RESPONSE_BYTES)
                self._http = httpx.Client(transport=transport, follow_redirects=False,
                                          trust_env=False)
                self._sdk = Client(client=self._http, auth=self._token.reveal(),
                                   base_url=self._base_url, timeout_ms=SDK_TIMEOUT_MS,
                                   notion_version=NOTION_VERSION, retry=False,
                                   logger=_SDK_LOG, log_level=logging.CRITICAL)
            return self._sdk

    def _send(self, method: str, path: str, body: dict[str, Any] | None, *, mutate: bool,
              what: str, timeout: float) -> dict[str, Any]:
        """One request; its answer as a JSON object, or the typed error it means."""
        client = self._client()
        try:
            answer = client.request(path=path, method=method, body=body)
        except FAILURES as exc:
            raise classify(exc, mutate=mutate, what=what, connection=self.name,
                           redact=self._redact, deadline=timeout,
                           max_bytes=MAX_RESPONSE_BYTES) from None
        if not isinstance(answer, dict):
            raise malformed(what, mutate=mutate, why="not a JSON object")
        return answer

    def _schema(self, database: str, tool: str, timeout: float, *, fresh: bool = False
                ) -> dict[str, str]:
        """Property name -> type of ``database`` (read at most every SCHEMA_SECONDS)."""
        now = time.monotonic()
        with self._lock:
            cached = self._schemas.get(database)
        if cached is not None and not fresh and now - cached[0] < SCHEMA_SECONDS:
            return cached[1]
        what = f"{self.name}.{tool}: GET /v1/databases/{database}"
        answer = self._send("GET", f"databases/{database}", None, mutate=False, what=what,
                            timeout=timeout)
        props = answer.get("properties")
        if answer.get("object") != "database" or not isinstance(props, Mapping):
            raise malformed(what, mutate=False, why="not a database object")
        schema: dict[str, str] = {}
        for name, prop in props.items():
            kind = prop.get("type") if isinstance(prop, Mapping) else None
            if isinstance(name, str) and isinstance(kind, str):
                schema[name] = kind
        with self._lock:
            self._schemas[database] = (now, schema)
        return schema

    def _forget_schema(self, database: str) -> None:
        with self._lock:
            self._schemas.pop(database, None)

    def _find_by_key(self, p: _Params, kind: str, timeout: float) -> list[dict[str, Any]]:
        """Pages of ``p.database`` whose key property holds the key value, oldest first."""
        what = (f"{self.name}.create_page: POST /v1/databases/{p.database}/query "
                f"({_shown(p.key_property, 60)} = {_shown(p.key_value, 80)})")
        body = {"filter": key_filter(p.key_property, kind, p.key_value),
                "sorts": [{"timestamp": "created_time", "direction": "ascending"}],
                "page_size": 10}
        answer = self._send("POST", f"databases/{p.database}/query", body, mutate=False,
                            what=what, timeout=timeout)
        results = answer.get("results")
        if not isinstance(results, list):
            raise malformed(what, mutate=False, why="no results list")
        found = []
        for item in results[:10]:
            props = item.get("properties") if isinstance(item, Mapping) else None
            held = props.get(p.key_property) if isinstance(props, Mapping) else None
            if same_value(kind, p.key_value, held):  # the filter's match, checked exactly
                page = self._page(item, what, mutate=False)
                found.append({"id": page["id"], "url": page["url"]})
        return found

    def _current_page(self, p: _Params, timeout: float) -> dict[str, Any]:
        """The page to update, refused when it is outside the allowed databases."""
        what = f"{self.name}.update_page: GET /v1/pages/{p.page}"
        page = self._send("GET", f"pages/{p.page}", None, mutate=False, what=what,
                          timeout=timeout)
        if page.get("object") != "page" or not isinstance(page.get("properties"), Mapping):
            raise malformed(what, mutate=False, why="not a page object")
        if self._databases is not None:
            parent = page.get("parent")
            database = notion_id(parent.get("database_id")) if isinstance(parent, Mapping) \
                else None
            if database not in self._databases:
                raise PermissionDenied(
                    f"{self.name}.update_page: page {p.page} is not in a database connection "
                    f"'{self.name}' may use (its databases setting; see {DOC})", field="page")
        return page

    def _page(self, obj: Any, what: str, *, mutate: bool) -> dict[str, Any]:
        """A page object as the connector hands it back (cleaned, bounded)."""
        page_id = notion_id(obj.get("id")) if isinstance(obj, Mapping) else None
        props = obj.get("properties", {}) if isinstance(obj, Mapping) else None
        if page_id is None or not isinstance(props, Mapping):
            raise malformed(what, mutate=mutate, why="a page without an id or properties")
        redact = self._redact
        flat: dict[str, Any] = {}
        for name, prop in props.items():
            if len(flat) >= MAX_READ_PROPERTIES:
                break
            key = clean_text(name, NAME_CHARS, redact)
            if key is not None and key not in flat:
                flat[key] = flatten(prop, redact)
        return {"id": page_id, "url": clean_link(obj.get("url"), "", redact),
                "created_time": clean_text(obj.get("created_time"), STAMP_CHARS, redact),
                "last_edited_time": clean_text(obj.get("last_edited_time"), STAMP_CHARS,
                                               redact),
                "properties": flat}

    # -- params ------------------------------------------------------------------------------

    def _parse(self, call: ToolCall) -> _Params:
        """Check the params (SPEC §6: malformed calls are rejected before anything runs)."""
        tool = call.tool
        self.tool(tool)
        p = call.params
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{tool}: params must be an object")
        known = PARAMS[tool]
        unknown = sorted(str(k) for k in set(p) - known)
        if unknown:
            raise self._bad(tool, unknown[0][:60], f"unknown parameter; {tool} takes "
                                                   f"{sorted(known)}")
        if tool == "update_page":
            page = notion_id(p.get("page"))
            if page is None:
                raise self._bad(tool, "page", "must be a Notion page id: 32 hexadecimal "
                                              "digits, dashes optional")
            return _Params(tool, page=page, properties=self._properties(tool, p))
        database = self._database(tool, p.get("database"))
        if tool == "query_database":
            return _Params(tool, database=database,
                           filter=self._json_param(tool, p, "filter", Mapping, "an object"),
                           sorts=self._json_param(tool, p, "sorts", list, "a list"),
                           limit=self._limit(tool, p.get("limit")),
                           cursor=self._cursor(tool, p.get("cursor")))
        properties = self._properties(tool, p)
        key = p.get("key_property")
        if not isinstance(key, str) or key not in properties:
            raise self._bad(tool, "key_property", "must name one of params.properties: the "
                                                  "property that identifies the page (such "
                                                  "as \"Order id\")")
        value = properties[key]
        if isinstance(value, str):
            if not value.strip():
                raise self._bad(tool, f"properties.{_shown(key, 60)}", "is the key_property: "
                                "it must not be empty")
            if len(value) > KEY_CHARS:
                raise self._bad(tool, f"properties.{_shown(key, 60)}",
                                f"is the key_property: at most {KEY_CHARS} characters")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(tool, f"properties.{_shown(key, 60)}", "is the key_property: it "
                            "must be non-empty text or a number")
        children = p.get("children")
        if children is not None:
            if not isinstance(children, list) or len(children) > MAX_CHILDREN:
                raise self._bad(tool, "children", f"must be a list of at most {MAX_CHILDREN} "
                                                  "paragraphs (texts)")
            for i, text in enumerate(children):
                if not isinstance(text, str):
                    raise self._bad(tool, f"children[{i}]", "must be text (a paragraph)")
                check_text(f"children[{i}]", text, MAX_WRITE_CHARS, self._bad_for(tool))
        return _Params(tool, database=database, properties=properties, key_property=key,
                       children=tuple(children or ()))

    def _database(self, tool: str, raw: Any) -> str:
        database = notion_id(raw)
        if database is None:
            raise self._bad(tool, "database", "must be a Notion database id: 32 hexadecimal "
                                              "digits, dashes optional (in the database's "
                                              "URL, before ?v=)")
        if self._databases is not None and database not in self._databases:
            raise PermissionDenied(
                f"{self.name}.{tool}: database {database} is not one connection "
                f"'{self.name}' may use (its databases setting; see {DOC})", field="database")
        return database

    def _properties(self, tool: str, p: Mapping[str, Any]) -> Mapping[str, Any]:
        props = p.get("properties")
        if not isinstance(props, Mapping) or not props:
            raise self._bad(tool, "properties", "must be an object of property name -> "
                                                "value, with at least one property")
        if len(props) > MAX_WRITTEN:
            raise self._bad(tool, "properties", f"has more than {MAX_WRITTEN} properties")
        bad = self._bad_for(tool)
        for name, value in props.items():
            if not isinstance(name, str) or not name:
                raise self._bad(tool, "properties", "property names must be non-empty text")
            check_text("properties", name, 1000, bad)
            check_plain(f"properties.{_shown(name, 60)}", value, bad)
        return props

    def _json_param(self, tool: str, p: Mapping[str, Any], name: str, kind: type,
                    shape: str) -> Any:
        value = p.get(name)
        if value is None:
            return None
        if not isinstance(value, kind):
            raise self._bad(tool, name, f"must be {shape} in Notion's {name} format (see "
                                        "developers.notion.com/reference/post-database-query)")
        if isinstance(value, list) and len(value) > MAX_PIECES:
            raise self._bad(tool, name, f"has more than {MAX_PIECES} items")
        try:
            size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8"))
        except (TypeError, ValueError, RecursionError):
            raise self._bad(tool, name, "must be plain JSON (valid text, finite numbers)"
                            ) from None
        if size > QUERY_JSON_BYTES:
            raise self._bad(tool, name, f"is larger than {QUERY_JSON_BYTES} bytes as JSON")
        return value

    def _limit(self, tool: str, raw: Any) -> int:
        if raw is None:
            return MAX_LIMIT
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_LIMIT:
            raise self._bad(tool, "limit", f"must be a whole number from 1 to {MAX_LIMIT} "
                                           "(pages per query; pass next_cursor for more)")
        return raw

    def _cursor(self, tool: str, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or len(raw) > CURSOR_CHARS or not _PRINTABLE.match(raw):
            raise self._bad(tool, "cursor", "must be the next_cursor of an earlier "
                                            "query_database result")
        return raw

    def _convert(self, tool: str, values: Mapping[str, Any], kinds: Mapping[str, str]
                 ) -> dict[str, Any]:
        """The request's property values, by the schema's types (``PermanentError`` before
        anything is written)."""
        bad = self._bad_for(tool)
        out: dict[str, Any] = {}
        for name, value in values.items():
            kind = kinds.get(name)
            field_name = f"properties.{_shown(name, 60)}"
            if kind is None:
                names = ", ".join(_shown(k, 40) for k in sorted(kinds)[:30])
                raise bad(field_name, f"the database has no such property; its properties "
                                      f"are: {names or 'none'}")
            out[name] = to_notion(field_name, kind, value, bad)
        return out

    def _key_kind(self, p: _Params, schema: Mapping[str, str]) -> str:
        kind = schema.get(p.key_property)
        if kind not in KEY_TYPES:
            raise self._bad("create_page", "key_property",
                            f"'{_shown(p.key_property, 60)}' is a {_shown(kind, 30)} "
                            f"property; a key_property is one of {', '.join(sorted(KEY_TYPES))}")
        return kind

    def _check_size(self, tool: str, body: Mapping[str, Any]) -> None:
        size = len(json.dumps(body, ensure_ascii=False).encode("utf-8"))
        if size > MAX_REQUEST_BYTES:
            raise self._bad(tool, "properties", f"the request would be {size} bytes; Notion "
                                                f"takes at most {MAX_REQUEST_BYTES}")

    def _bad(self, tool: str, field_name: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.name}.{tool}: params.{field_name}: {problem}",
                              field=field_name)

    def _bad_for(self, tool: str) -> Any:
        return lambda field_name, problem: self._bad(tool, field_name, problem)


def _kinds_of(page: Mapping[str, Any]) -> dict[str, str]:
    """Property name -> type, from a page object (its values say their types)."""
    props = page.get("properties")
    kinds: dict[str, str] = {}
    if isinstance(props, Mapping):
        for name, prop in props.items():
            kind = prop.get("type") if isinstance(prop, Mapping) else None
            if isinstance(name, str) and isinstance(kind, str):
                kinds[name] = kind
    return kinds


def _shown(value: Any, limit: int) -> str:
    """A value for a message: inert, short."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)[:limit + 1]
    cut = text[:limit]
    shown = "".join(c if c.isprintable() else "?" for c in cut)
    return shown + ("…" if len(text) > limit else "")


register_connector(NotionConnector)
