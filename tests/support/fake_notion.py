"""A fake of Notion's REST API, version 2022-06-28, on loopback (tests of the notion
connector; docs/connectors.md#notion).

Built from Notion's published reference, not from the connector:

* objects and requests: https://developers.notion.com/reference/post-database-query (query:
  ``filter`` on one property ``equals``, or ``and``/``or`` of such, ``sorts`` by property
  or timestamp, ``start_cursor``/``page_size`` pagination with ``has_more`` and
  ``next_cursor`` as in https://developers.notion.com/reference/intro#pagination),
  /reference/retrieve-a-database, /reference/post-page, /reference/patch-page,
  /reference/retrieve-a-page, /reference/get-self, and the page and property-value objects
  of /reference/page and /reference/page-property-values;
* errors as /reference/status-codes: ``{"object": "error", "status", "code", "message"}``
  (``unauthorized`` 401, ``object_not_found`` 404, ``validation_error`` and
  ``missing_version`` 400, ``invalid_json`` 400) and /reference/request-limits (429
  ``rate_limited`` with ``Retry-After``; 2,000 characters per text object, 100 elements per
  array, 100 blocks per request);
* every request needs a ``Notion-Version`` header; this fake serves ``2022-06-28`` only.

Seed it with :meth:`FakeNotion.add_database` and :meth:`FakeNotion.add_page` (plain
values) or :meth:`FakeNotion.add_raw_page` (property values exactly as given: hostile
answers).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tests.support.fake_api import FakeApi, Handler, Request, Response

VERSION = "2022-06-28"
START = datetime(2024, 1, 1, tzinfo=UTC)
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}\Z")
_ANNOTATIONS = {"bold": False, "italic": False, "strikethrough": False, "underline": False,
                "code": False, "color": "default"}
TEXT_TYPES = ("title", "rich_text")
WRITABLE = {"title", "rich_text", "number", "select", "status", "multi_select", "date",
            "checkbox", "url", "email", "phone_number"}
FILTERABLE = {"title", "rich_text", "number", "select", "status", "url", "email",
              "phone_number", "checkbox"}


class Refused(Exception):
    """An error answer (raised inside handlers)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.answer = error(status, code, message)


def error(status: int, code: str, message: str) -> Response:
    return status, {}, {"object": "error", "status": status, "code": code, "message": message,
                        "request_id": str(uuid.uuid4())}


def invalid(message: str) -> Refused:
    return Refused(400, "validation_error", message)


def canonical(raw: str) -> str | None:
    if not _UUID.match(raw):
        return None
    h = raw.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" if len(h) == 32 else None


def rich(text: str) -> list[dict[str, Any]]:
    """Text as Notion returns it: one text object per 2,000 characters."""
    pieces = [text[i:i + 2000] for i in range(0, len(text), 2000)] or []
    return [{"type": "text", "text": {"content": p, "link": None},
             "annotations": dict(_ANNOTATIONS), "plain_text": p, "href": None}
            for p in pieces]


def units(text: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class FakeNotion(FakeApi):
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: dict[str, list[Any]] = field(default_factory=dict)
    bot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _tick: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.route("GET", r"/v1/users/me", self._versioned(self._me))
        self.route("GET", r"/v1/databases/([^/]*)", self._versioned(self._get_database))
        self.route("POST", r"/v1/databases/([^/]*)/query", self._versioned(self._query))
        self.route("POST", r"/v1/pages", self._versioned(self._create))
        self.route("GET", r"/v1/pages/([^/]*)", self._versioned(self._get_page))
        self.route("PATCH", r"/v1/pages/([^/]*)", self._versioned(self._update))

    # -- what FakeApi asks -----------------------------------------------------------------

    def auth_error(self, req: Request) -> Response:
        return error(401, "unauthorized", "API token is invalid.")

    def rate_limited(self, req: Request, retry_after: float | None) -> Response:
        status, headers, body = error(
            429, "rate_limited", "You have been rate limited. Please try again in a few "
                                 "minutes.")
        if retry_after is not None:
            headers["Retry-After"] = str(int(retry_after)) if float(retry_after).is_integer() \
                else str(retry_after)
        return status, headers, body

    def not_found(self, req: Request) -> Response:
        return error(400, "invalid_request_url", "Invalid request URL.")

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> FakeNotion:
        super().start()
        server = self._server
        assert server is not None
        plain = server.handle_error

        def quiet(request: Any, client_address: Any) -> None:
            # A client that stops reading a long answer (as the connector must) is no error.
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                plain(request, client_address)

        server.handle_error = quiet  # type: ignore[method-assign]
        return self

    def reset(self) -> None:
        """Forget every database, page, request and fault (one server for many tests)."""
        with self.lock:
            self.databases.clear()
            self.pages.clear()
            self.children.clear()
            self.requests.clear()
            self._faults.clear()
            self.tokens = {"good-token"}
            self._tick = 0

    # -- seeding ---------------------------------------------------------------------------

    def add_database(self, title: str, properties: dict[str, Any]) -> str:
        """A database whose schema maps names to a type, or to ``(type, [option names])``
        for select, multi_select and status. Returns its id."""
        db_id = str(uuid.uuid4())
        schema: dict[str, Any] = {}
        for name, spec in properties.items():
            kind, options = (spec, []) if isinstance(spec, str) else spec
            config: dict[str, Any] = {}
            if kind in ("select", "multi_select", "status"):
                config = {"options": [self._option(o) for o in options]}
            elif kind == "number":
                config = {"format": "number"}
            schema[name] = {"id": "title" if kind == "title" else uuid.uuid4().hex[:4],
                            "name": name, "type": kind, kind: config}
        with self.lock:
            now = self._now()
            self.databases[db_id] = {
                "object": "database", "id": db_id, "cover": None, "icon": None,
                "created_time": now, "last_edited_time": now,
                "created_by": {"object": "user", "id": self.bot_id},
                "last_edited_by": {"object": "user", "id": self.bot_id},
                "title": rich(title), "description": [], "is_inline": False,
                "properties": schema,
                "parent": {"type": "page_id", "page_id": str(uuid.uuid4())},
                "url": f"https://www.notion.so/{db_id.replace('-', '')}",
                "public_url": None, "archived": False}
        return db_id

    def add_page(self, database: str, values: dict[str, Any]) -> dict[str, Any]:
        """A page from plain values (text, numbers, option names, ISO dates, booleans)."""
        with self.lock:
            schema = self.databases[database]["properties"]
            props = {name: self._plain_to_request(schema[name]["type"], value)
                     for name, value in values.items()}
            return self._new_page(database, props)

    def add_raw_page(self, database: str, properties: dict[str, Any]) -> dict[str, Any]:
        """A page whose property values are exactly ``properties`` (hostile answers)."""
        with self.lock:
            page = self._blank_page(database)
            page["properties"] = properties
            self.pages[page["id"]] = page
            return page

    def pages_in(self, database: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(p) for p in self.pages.values()
                    if p["parent"].get("database_id") == database and not p["archived"]]

    @staticmethod
    def plain(page: dict[str, Any], name: str) -> Any:
        """A property of a stored page as a test compares it (text, number, name, …)."""
        prop = page["properties"][name]
        kind = prop["type"]
        value = prop[kind]
        if kind in TEXT_TYPES:
            return "".join(p["plain_text"] for p in value)
        if kind in ("select", "status"):
            return value and value["name"]
        if kind == "multi_select":
            return [o["name"] for o in value]
        if kind == "date":
            return value and value["start"]
        return value

    # -- handlers --------------------------------------------------------------------------

    def _versioned(self, handler: Handler) -> Handler:
        def answer(req: Request, match: re.Match[str]) -> Response:
            version = req.headers.get("notion-version")
            if version is None:
                return error(400, "missing_version", "Notion-Version header failed "
                             "validation: Notion-Version header should be defined, instead "
                             "was `undefined`.")
            if version != VERSION:
                return error(400, "validation_error", f"Notion-Version header failed "
                             f"validation: this server speaks {VERSION}, instead was "
                             f"`{version[:40]}`.")
            try:
                return handler(req, match)
            except Refused as refused:
                return refused.answer
        return answer

    def _me(self, req: Request, match: re.Match[str]) -> Response:
        return 200, {}, {"object": "user", "id": self.bot_id, "name": "keepflow test",
                         "avatar_url": None, "type": "bot",
                         "bot": {"owner": {"type": "workspace", "workspace": True},
                                 "workspace_name": "Test workspace"},
                         "request_id": str(uuid.uuid4())}

    def _get_database(self, req: Request, match: re.Match[str]) -> Response:
        return 200, {}, copy.deepcopy(self._database(match.group(1)))

    def _query(self, req: Request, match: re.Match[str]) -> Response:
        db = self._database(match.group(1))
        body = self._body(req)
        extra = sorted(set(body) - {"filter", "sorts", "start_cursor", "page_size",
                                    "filter_properties", "archived"})
        if extra:
            raise invalid(f"body failed validation: body.{extra[0]} should be not present, "
                          f"instead was `{json.dumps(body[extra[0]])[:40]}`.")
        size = body.get("page_size", 100)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 100:
            raise invalid("body failed validation: body.page_size should be a number less "
                          f"than or equal to `100`, instead was `{json.dumps(size)}`.")
        schema = db["properties"]
        rows = [p for p in self.pages.values()
                if p["parent"].get("database_id") == db["id"] and not p["archived"]]
        if body.get("filter") is not None:
            test = self._compile(body["filter"], schema)
            rows = [p for p in rows if test(p)]
        for sort in reversed(body.get("sorts") or []):
            rows = self._sorted(rows, sort, schema)
        start = 0
        cursor = body.get("start_cursor")
        if cursor is not None:
            ids = [p["id"] for p in rows]
            if not isinstance(cursor, str) or cursor not in ids:
                raise invalid("body failed validation: body.start_cursor should be a valid "
                              f"uuid, instead was `{json.dumps(cursor)[:60]}`.")
            start = ids.index(cursor)
        chunk = rows[start:start + size]
        more = start + size < len(rows)
        return 200, {}, {"object": "list", "results": [copy.deepcopy(p) for p in chunk],
                         "next_cursor": rows[start + size]["id"] if more else None,
                         "has_more": more, "type": "page", "page": {},
                         "request_id": str(uuid.uuid4())}

    def _create(self, req: Request, match: re.Match[str]) -> Response:
        body = self._body(req)
        parent = body.get("parent")
        if not isinstance(parent, dict) or not isinstance(parent.get("database_id"), str):
            raise invalid("body failed validation: body.parent.database_id should be defined "
                          "(this fake creates pages in databases only).")
        db = self._database(parent["database_id"])
        props = body.get("properties", {})
        if not isinstance(props, dict):
            raise invalid("body failed validation: body.properties should be an object.")
        children = body.get("children", [])
        if not isinstance(children, list) or len(children) > 100:
            raise invalid("body failed validation: body.children.length should be ≤ `100`.")
        for i, block in enumerate(children):
            self._check_block(block, i)
        page = self._new_page(db["id"], props)
        self.children[page["id"]] = copy.deepcopy(children)
        return 200, {}, copy.deepcopy(page)

    def _get_page(self, req: Request, match: re.Match[str]) -> Response:
        return 200, {}, copy.deepcopy(self._page(match.group(1)))

    def _update(self, req: Request, match: re.Match[str]) -> Response:
        page = self._page(match.group(1))
        body = self._body(req)
        if page["archived"] and body.get("archived") is not False:
            raise invalid("Can't edit block that is archived. You must unarchive the block "
                          "before editing.")
        props = body.get("properties", {})
        if not isinstance(props, dict):
            raise invalid("body failed validation: body.properties should be an object.")
        schema = self.databases[page["parent"]["database_id"]]["properties"]
        values = {name: self._stored(name, schema, value) for name, value in props.items()}
        for name, value in values.items():
            page["properties"][name] = value
        if isinstance(body.get("archived"), bool):
            page["archived"] = body["archived"]
        page["last_edited_time"] = self._now()
        return 200, {}, copy.deepcopy(page)

    # -- the model -------------------------------------------------------------------------

    def _now(self) -> str:
        self._tick += 1
        when = START + timedelta(minutes=self._tick)
        return when.strftime("%Y-%m-%dT%H:%M:00.000Z")

    @staticmethod
    def _option(name: str) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "name": name, "color": "default"}

    def _body(self, req: Request) -> dict[str, Any]:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            raise Refused(400, "invalid_json", "Error parsing JSON body.") from None
        if not isinstance(body, dict):
            raise Refused(400, "invalid_json", "Error parsing JSON body.")
        return body

    def _database(self, raw: str) -> dict[str, Any]:
        db_id = canonical(raw)
        if db_id is None:
            raise invalid(f"path failed validation: path.database_id should be a valid uuid, "
                          f"instead was `\"{raw[:60]}\"`.")
        db = self.databases.get(db_id)
        if db is None:
            raise Refused(404, "object_not_found", f"Could not find database with ID: "
                          f"{db_id}. Make sure the relevant pages and databases are shared "
                          "with your integration.")
        return db

    def _page(self, raw: str) -> dict[str, Any]:
        page_id = canonical(raw)
        if page_id is None:
            raise invalid(f"path failed validation: path.page_id should be a valid uuid, "
                          f"instead was `\"{raw[:60]}\"`.")
        page = self.pages.get(page_id)
        if page is None:
            raise Refused(404, "object_not_found", f"Could not find page with ID: {page_id}. "
                          "Make sure the relevant pages and databases are shared with your "
                          "integration.")
        return page

    def _blank_page(self, database: str) -> dict[str, Any]:
        page_id = str(uuid.uuid4())
        now = self._now()
        return {"object": "page", "id": page_id, "created_time": now,
                "last_edited_time": now,
                "created_by": {"object": "user", "id": self.bot_id},
                "last_edited_by": {"object": "user", "id": self.bot_id},
                "cover": None, "icon": None,
                "parent": {"type": "database_id", "database_id": database},
                "archived": False, "properties": {},
                "url": f"https://www.notion.so/{page_id.replace('-', '')}",
                "public_url": None}

    def _new_page(self, database: str, props: dict[str, Any]) -> dict[str, Any]:
        schema = self.databases[database]["properties"]
        values = {name: self._stored(name, schema, value) for name, value in props.items()}
        page = self._blank_page(database)
        for name, prop in schema.items():
            page["properties"][name] = values.get(name) or self._empty(prop, page)
        title = next((self.plain(page, n) for n, p in schema.items() if p["type"] == "title"),
                     "")
        slug = "-".join(re.findall(r"[A-Za-z0-9]+", title))[:60]
        hexid = page["id"].replace("-", "")
        page["url"] = f"https://www.notion.so/{slug}-{hexid}" if slug else \
            f"https://www.notion.so/{hexid}"
        self.pages[page["id"]] = page
        return page

    @staticmethod
    def _empty(prop: dict[str, Any], page: dict[str, Any]) -> dict[str, Any]:
        kind = prop["type"]
        value: Any = None
        extra: dict[str, Any] = {}
        if kind in (*TEXT_TYPES, "multi_select", "people", "relation"):
            value = []
        if kind == "relation":
            extra = {"has_more": False}
        if kind == "checkbox":
            value = False
        if kind in ("created_time", "last_edited_time"):
            value = page[kind]
        if kind == "formula":
            value = {"type": "string", "string": None}
        return {"id": prop["id"], "type": kind, kind: value, **extra}

    def _stored(self, name: str, schema: dict[str, Any], value: Any) -> dict[str, Any]:
        """A request's property value as the page stores it (or a validation_error)."""
        prop = schema.get(name)
        if prop is None:
            raise invalid(f"{name} is not a property that exists.")
        kind = prop["type"]
        where = f"body.properties.{name}"
        if not isinstance(value, dict):
            raise invalid(f"body failed validation: {where} should be an object.")
        if kind not in WRITABLE:
            raise invalid(f"body failed validation: {where} is a {kind} property, which "
                          "cannot be set.")
        if kind not in value:
            raise invalid(f"body failed validation: {where}.{kind} should be defined, "
                          f"instead was `undefined`.")
        given = value[kind]
        out: Any
        if kind in TEXT_TYPES:
            out = self._texts(given, f"{where}.{kind}")
        elif kind == "number":
            if given is not None and (isinstance(given, bool)
                                      or not isinstance(given, (int, float))):
                raise invalid(f"body failed validation: {where}.number should be a number or "
                              f"`null`, instead was `{json.dumps(given)[:40]}`.")
            out = given
        elif kind in ("select", "status"):
            out = None if given is None else self._choose(prop, given, f"{where}.{kind}",
                                                          create=kind == "select")
        elif kind == "multi_select":
            if not isinstance(given, list) or len(given) > 100:
                raise invalid(f"body failed validation: {where}.multi_select should be an "
                              "array of at most 100 options.")
            out = [self._choose(prop, o, f"{where}.multi_select", create=True) for o in given]
        elif kind == "date":
            out = None if given is None else self._date(given, f"{where}.date")
        elif kind == "checkbox":
            if not isinstance(given, bool):
                raise invalid(f"body failed validation: {where}.checkbox should be a boolean.")
            out = given
        else:
            limit = 2000 if kind == "url" else 200
            if given is not None and (not isinstance(given, str) or units(given) > limit):
                raise invalid(f"body failed validation: {where}.{kind} should be a string of "
                              f"at most {limit} characters or `null`.")
            out = given
        return {"id": prop["id"], "type": kind, kind: out}

    def _texts(self, given: Any, where: str) -> list[dict[str, Any]]:
        if not isinstance(given, list):
            raise invalid(f"body failed validation: {where} should be an array, instead was "
                          f"`{json.dumps(given)[:40]}`.")
        if len(given) > 100:
            raise invalid(f"body failed validation: {where}.length should be ≤ `100`, "
                          f"instead was `{len(given)}`.")
        out = []
        for i, piece in enumerate(given):
            text = piece.get("text") if isinstance(piece, dict) else None
            content = text.get("content") if isinstance(text, dict) else None
            if not isinstance(content, str):
                raise invalid(f"body failed validation: {where}[{i}].text.content should be "
                              "a string.")
            if units(content) > 2000:
                raise invalid(f"body failed validation: {where}[{i}].text.content.length "
                              f"should be ≤ `2000`, instead was `{units(content)}`.")
            out.extend(rich(content))
        return out

    def _choose(self, prop: dict[str, Any], given: Any, where: str, *, create: bool
                ) -> dict[str, Any]:
        name = given.get("name") if isinstance(given, dict) else None
        if not isinstance(name, str) or not name or "," in name or len(name) > 100:
            raise invalid(f"body failed validation: {where}.name should be a string without "
                          "commas of at most 100 characters.")
        options = prop[prop["type"]]["options"]
        found = next((o for o in options if o["name"] == name), None)
        if found is None:
            if not create:
                raise invalid(f"Invalid status option. Status option \"{name}\" does not "
                              f"exist\".")
            found = self._option(name)
            options.append(found)
        return dict(found)

    @staticmethod
    def _date(given: Any, where: str) -> dict[str, Any]:
        if not isinstance(given, dict) or not isinstance(given.get("start"), str):
            raise invalid(f"body failed validation: {where}.start should be defined.")
        out = {"start": FakeNotion._moment(given["start"], f"{where}.start"), "end": None,
               "time_zone": None}
        if given.get("end") is not None:
            out["end"] = FakeNotion._moment(given["end"], f"{where}.end")
        return out

    @staticmethod
    def _moment(text: Any, where: str) -> str:
        """Dates as given; date-times as Notion echoes them (milliseconds, +00:00)."""
        try:
            if isinstance(text, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                return date.fromisoformat(text).isoformat()
            when = datetime.fromisoformat(text)
        except (TypeError, ValueError):
            raise invalid(f"body failed validation: {where} should be a valid ISO 8601 date "
                          f"string, instead was `{json.dumps(text)[:40]}`.") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+00:00")

    def _check_block(self, block: Any, i: int) -> None:
        if not isinstance(block, dict) or block.get("type") != "paragraph" or \
                not isinstance(block.get("paragraph"), dict):
            raise invalid(f"body failed validation: body.children[{i}] should be a block "
                          "(this fake knows paragraphs).")
        self._texts(block["paragraph"].get("rich_text"), f"body.children[{i}].paragraph"
                    ".rich_text")

    def _plain_to_request(self, kind: str, value: Any) -> dict[str, Any]:
        if kind in TEXT_TYPES:
            return {kind: [{"type": "text", "text": {"content": value}}]}
        if kind in ("select", "status"):
            return {kind: None if value is None else {"name": value}}
        if kind == "multi_select":
            return {kind: [{"name": v} for v in value]}
        if kind == "date":
            return {kind: None if value is None else {"start": value}}
        return {kind: value}

    # -- filters and sorts -----------------------------------------------------------------

    def _compile(self, flt: Any, schema: dict[str, Any]) -> Any:
        """The filter as a predicate on pages (a validation_error for a filter Notion
        refuses, whether or not any page is there)."""
        if not isinstance(flt, dict):
            raise invalid("body failed validation: body.filter should be an object.")
        for compound in ("and", "or"):
            if compound in flt:
                parts = flt[compound]
                if not isinstance(parts, list) or len(parts) > 100:
                    raise invalid(f"body failed validation: body.filter.{compound} should be "
                                  "an array.")
                tests = [self._compile(p, schema) for p in parts]
                if compound == "and":
                    return lambda page: all(t(page) for t in tests)
                return lambda page: any(t(page) for t in tests)
        name = flt.get("property")
        if not isinstance(name, str) or name not in schema:
            raise invalid(f"Could not find property with name or id: {name}")
        kind = schema[name]["type"]
        conditions = [k for k in flt if k != "property"]
        if len(conditions) != 1:
            raise invalid("body failed validation: body.filter should have one condition.")
        ctype = conditions[0]
        accepted = {kind, "rich_text"} if kind == "title" else {kind}
        if ctype not in accepted or kind not in FILTERABLE:
            raise invalid(f"body failed validation: body.filter.{ctype} should be not present "
                          f"(the property {name} is a {kind} property).")
        cond = flt[ctype]
        if not isinstance(cond, dict) or set(cond) != {"equals"}:
            raise invalid("body failed validation: this fake's filters are `equals` only.")
        wanted = cond["equals"]
        return lambda page: bool(self.plain(page, name) == wanted)

    def _sorted(self, rows: list[dict[str, Any]], sort: Any, schema: dict[str, Any]
                ) -> list[dict[str, Any]]:
        if not isinstance(sort, dict) or sort.get("direction") not in ("ascending",
                                                                       "descending"):
            raise invalid("body failed validation: body.sorts[0].direction should be "
                          "`ascending` or `descending`.")
        reverse = sort["direction"] == "descending"
        if "timestamp" in sort:
            if sort["timestamp"] not in ("created_time", "last_edited_time"):
                raise invalid("body failed validation: body.sorts[0].timestamp should be "
                              "`created_time` or `last_edited_time`.")
            return sorted(rows, key=lambda p: p[sort["timestamp"]], reverse=reverse)
        name = sort.get("property")
        if name not in schema:
            raise invalid(f"Could not find sort property with name or id: {name}")

        def key(page: dict[str, Any]) -> tuple[bool, Any]:
            value = self.plain(page, name)
            return value is None, value if not isinstance(value, list) else tuple(value)

        present = [p for p in rows if self.plain(p, name) is not None]
        absent = [p for p in rows if self.plain(p, name) is None]
        return sorted(present, key=key, reverse=reverse) + absent
