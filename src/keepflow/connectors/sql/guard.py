"""The ``sql.query`` gate: exactly one SELECT, parameters bound, nothing else (SPEC §4, §9).

A read tool must not be able to write, so ``query`` accepts a single ``SELECT`` or
``WITH … SELECT`` statement and rejects everything else with :class:`PermanentError` before
the database sees it. This lexer is the first of three layers; the others do not depend on
it being perfect (and the ``tables`` allow-list does not depend on it at all: it is enforced
on what the database will touch, see :mod:`sql_allow`):

1. this check: one statement, starts with SELECT/WITH, no data-changing keyword anywhere
   outside literals, identifiers and comments (catches ``; DROP TABLE``, writable CTEs,
   ``SELECT … INTO``, PRAGMA, ATTACH);
2. the statement is executed wrapped as ``SELECT * FROM (<sql>) AS kf_q LIMIT :kf_limit``,
   which is syntactically a single statement with a bound parameter, so PostgreSQL's
   extended protocol refuses a second command and the row cap is applied by the server;
3. the transaction is read-only: ``SET TRANSACTION READ ONLY`` on PostgreSQL, a SQLite
   connection opened with ``mode=ro`` and ``PRAGMA query_only``.

The lexer errs on the side of rejecting: anything it cannot classify for certain (dollar
quoting, ``?`` placeholders, nested comments) is refused with a message saying what to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keepflow.connectors.sql.params import surrogate_problem
from keepflow.errors import PermanentError

#: Words that change data or schema, or attach other databases. ``REPLACE`` is allowed only
#: as a function call (``replace(a, b, c)``); as a statement it writes (SQLite).
FORBIDDEN = frozenset({
    "insert", "update", "delete", "merge", "into", "create", "drop", "alter", "truncate",
    "grant", "revoke", "copy", "pragma", "attach", "detach", "vacuum", "reindex",
})

_WORD = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?")
_BIND = re.compile(r":([A-Za-z_]\w*)")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Token:
    kind: str  # word, ident (quoted identifier), string, number, bind, comment, space, op, semi
    text: str


@dataclass(frozen=True)
class CheckedQuery:
    #: The statement to execute through ``sqlalchemy.text`` (comments dropped, colons inside
    #: literals escaped so they are not taken for parameters, no trailing semicolon).
    sql: str
    binds: frozenset[str]


def check_select(sql: str, *, sqlite: bool) -> CheckedQuery:
    """Validate ``sql`` as a single read-only statement or raise :class:`PermanentError`."""
    if "\x00" in sql:  # C parsers stop at a NUL: what follows it would go unchecked
        raise _reject("contains a NUL character")
    if surrogate_problem(sql):
        raise _reject("contains a lone UTF-16 surrogate (text that is not valid Unicode)")
    tokens = tokenize(sql, sqlite=sqlite)
    significant = [t for t in tokens if t.kind not in ("space", "comment")]
    while significant and significant[-1].kind == "semi":
        significant.pop()
    if not significant:
        raise _reject("is empty")
    if any(t.kind == "semi" for t in significant):
        raise _reject("must be a single statement (no ';' between statements)")
    first = next((t for t in significant if t.text != "("), significant[0])
    if first.kind != "word" or first.text.lower() not in ("select", "with"):
        raise _reject("must start with SELECT or WITH (query is read-only; use the mutation "
                      "tools insert/update/upsert/delete to write)")
    for i, tok in enumerate(significant):
        word = tok.text.lower()
        if tok.kind != "word":
            continue
        if word == "replace":
            nxt = significant[i + 1] if i + 1 < len(significant) else None
            if nxt is not None and nxt.text == "(":
                continue
        if word in FORBIDDEN or word == "replace":
            raise _reject(f"contains '{tok.text.upper()}', which query does not allow")
    out: list[str] = []
    for tok in _strip_trailing(tokens):
        if tok.kind == "comment":
            out.append(" ")
        elif tok.kind in ("string", "ident"):
            out.append(tok.text.replace(":", "\\:"))
        else:
            out.append(tok.text)
    binds = frozenset(t.text[1:] for t in significant if t.kind == "bind")
    return CheckedQuery("".join(out).strip(), binds)


def tokenize(sql: str, *, sqlite: bool) -> list[Token]:
    """Split ``sql`` into tokens; raise :class:`PermanentError` on what cannot be lexed safely."""
    tokens: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            m = _SPACE.match(sql, i)
            assert m
            tokens.append(Token("space", m.group()))
            i = m.end()
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            tokens.append(Token("comment", sql[i:end]))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise _reject("has an unterminated /* comment")
            if "/*" in sql[i + 2:end]:
                raise _reject("has a nested /* comment")
            tokens.append(Token("comment", sql[i:end + 2]))
            i = end + 2
        elif c == "'" and not sqlite and tokens and tokens[-1].text in ("E", "e"):
            i = _escape_string(sql, i, tokens)  # PostgreSQL E'...': backslash escapes
        elif c == "'":
            i = _quoted(sql, i, "'", "string", tokens)
        elif c == '"':
            i = _quoted(sql, i, '"', "ident", tokens)
        elif sqlite and c == "`":
            i = _quoted(sql, i, "`", "ident", tokens)
        elif sqlite and c == "[":
            end = sql.find("]", i + 1)
            if end < 0:
                raise _reject("has an unterminated [identifier]")
            tokens.append(Token("ident", sql[i:end + 1]))
            i = end + 1
        elif c == "$":
            raise _reject("uses '$' (dollar quoting or $-parameters); use ':name' parameters "
                          "and '...' strings")
        elif c == "?":
            raise _reject("uses '?' placeholders; use named ':name' parameters")
        elif c == ";":
            tokens.append(Token("semi", c))
            i += 1
        elif c == ":":
            if sql.startswith("::", i):
                tokens.append(Token("op", "::"))
                i += 2
            elif (m := _BIND.match(sql, i)) is not None:
                tokens.append(Token("bind", m.group()))
                i = m.end()
            else:
                tokens.append(Token("op", c))
                i += 1
        elif (m := _WORD.match(sql, i)) is not None:
            tokens.append(Token("word", m.group()))
            i = m.end()
        elif (m := _NUMBER.match(sql, i)) is not None:
            tokens.append(Token("number", m.group()))
            i = m.end()
        else:
            tokens.append(Token("op", c))
            i += 1
    return tokens


def _quoted(sql: str, start: int, quote: str, kind: str, tokens: list[Token]) -> int:
    """A literal or identifier in ``quote``s with the quote doubled inside; returns the end."""
    i = start + 1
    while True:
        end = sql.find(quote, i)
        if end < 0:
            raise _reject(f"has an unterminated {quote} quote")
        if sql.startswith(quote * 2, end):
            i = end + 2
            continue
        tokens.append(Token(kind, sql[start:end + 1]))
        return end + 1


def _escape_string(sql: str, start: int, tokens: list[Token]) -> int:
    i = start + 1
    while i < len(sql):
        c = sql[i]
        if c == "\\" or sql.startswith("''", i):
            i += 2
        elif c == "'":
            tokens.append(Token("string", sql[start:i + 1]))
            return i + 1
        else:
            i += 1
    raise _reject("has an unterminated ' quote")


def _strip_trailing(tokens: list[Token]) -> list[Token]:
    out = list(tokens)
    while out and out[-1].kind in ("space", "comment", "semi"):
        out.pop()
    return out


def _reject(problem: str) -> PermanentError:
    return PermanentError(f"params.sql {problem}", field="sql")
