"""sql.query and sql.get on real SQLite and PostgreSQL: SELECT-only, bound parameters,
identifier validation, allow-list (SPEC §4 reads cannot write, §9 scopes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sql_shop import SqlTarget, connector, create_shop, get, q

from keepflow.connectors.sql import SqlConnector
from keepflow.errors import PermanentError, PermissionDenied, PreconditionError

pytestmark = pytest.mark.integration


@pytest.fixture
def shop(sql_target: SqlTarget) -> Iterator[SqlConnector]:
    create_shop(sql_target)
    c = connector(sql_target)
    yield c
    c.close()


def test_query_binds_parameters(shop: SqlConnector) -> None:
    result = shop.call(q("SELECT message_id, subject FROM invoices WHERE subject LIKE :p "
                         "ORDER BY message_id", p="Invoice J%"))
    assert result == {"rows": [{"message_id": "m-2", "subject": "Invoice January"}],
                      "rowCount": 1}
    # A value that looks like SQL stays a value.
    none = shop.call(q("SELECT * FROM invoices WHERE subject = :s", s="x' OR '1'='1"))
    assert none == {"rows": [], "rowCount": 0}


def test_query_with_cte_and_row_cap(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    c = connector(sql_target, max_rows=2)
    try:
        result = c.call(q("WITH s AS (SELECT message_id FROM invoices) "
                          "SELECT message_id FROM s ORDER BY message_id"))
        assert result == {"rows": [{"message_id": "m-1"}, {"message_id": "m-2"}],
                          "rowCount": 2, "truncated": True}
    finally:
        c.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DROP TABLE invoices",
        "SELECT 1 /* x */; DELETE FROM invoices",
        "WITH d AS (DELETE FROM invoices RETURNING *) SELECT * FROM d",
        "DELETE FROM invoices",
        "PRAGMA writable_schema = 1",
        "ATTACH DATABASE '/tmp/kf-attack.db' AS x",
        "SELECT * INTO stolen FROM invoices",
        "SELECT * FROM invoices FOR UPDATE",
        "SELECT $$;$$; DROP TABLE invoices",
        "UPDATE invoices SET subject = 'x'",
    ],
)
def test_injection_attempts_are_rejected_and_change_nothing(
    shop: SqlConnector, sql_target: SqlTarget, sql: str
) -> None:
    with pytest.raises(PermanentError):
        shop.call(q(sql))
    assert sql_target.scalar("SELECT count(*) FROM invoices") == 3
    assert sql_target.scalar("SELECT count(*) FROM invoices WHERE subject = 'x'") == 0


def test_a_comment_hides_nothing(shop: SqlConnector, sql_target: SqlTarget) -> None:
    result = shop.call(q("SELECT count(*) AS n FROM invoices -- ; DROP TABLE invoices"))
    assert result["rows"] == [{"n": 3}]
    assert sql_target.scalar("SELECT count(*) FROM invoices") == 3


def test_read_transaction_refuses_writes_even_past_the_lexer(shop: SqlConnector) -> None:
    """Layer 3 of sql_guard: the database itself refuses writes in a read transaction."""
    with pytest.raises(PermanentError, match="read-only"), \
            shop._db.transaction("test", 5.0, read_only=True) as conn:
        conn.execute(sa.text("INSERT INTO logs (line) VALUES ('x')"))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({}, "params.params.s is missing"), ({"s": "a", "t": "b"}, "params.params.t is not used"),
     ({"s": "a", "kf_limit": 1}, "not used")],
)
def test_query_parameters_must_match(shop: SqlConnector, params: dict[str, str],
                                     fragment: str) -> None:
    with pytest.raises(PermanentError, match=fragment):
        shop.call(q("SELECT * FROM invoices WHERE subject = :s", **params))


def test_query_of_a_missing_table_is_a_precondition(shop: SqlConnector) -> None:
    with pytest.raises(PreconditionError):
        shop.call(q("SELECT * FROM no_such_table"))


def test_bad_sql_is_permanent(shop: SqlConnector) -> None:
    with pytest.raises(PermanentError):
        shop.call(q("SELECT nosuchcolumn FROM invoices"))
    with pytest.raises(PermanentError):
        shop.call(q("SELECT FROM WHERE"))


def test_get_by_unique_key(shop: SqlConnector) -> None:
    row = shop.call(get("invoices", {"message_id": "m-2"}))["row"]
    assert row["subject"] == "Invoice January"
    assert row["status"] == "new"
    assert shop.call(get("invoices", {"message_id": "nope"})) == {"row": None}


@pytest.mark.parametrize(
    ("table", "key", "error", "fragment"),
    [
        ("logs", {"line": "x"}, PermanentError, "not a unique key"),
        ("invoices", {"subject": "x"}, PermanentError, "use one of: (message_id)"),
        ("invoices", {"nope": "x"}, PermanentError, "has no column 'nope'"),
        ("invoices", {'message_id" = 1; --': "x"}, PermanentError, "has no column"),
        ("nope", {"id": 1}, PreconditionError, "does not exist"),
        ("invoices; DROP TABLE invoices", {"id": 1}, PreconditionError, "does not exist"),
    ],
)
def test_get_validates_identifiers_against_the_schema(
    shop: SqlConnector, sql_target: SqlTarget, table: str, key: dict[str, str],
    error: type[Exception], fragment: str,
) -> None:
    with pytest.raises(error) as info:
        shop.call(get(table, key))
    assert fragment in str(info.value)
    assert sql_target.scalar("SELECT count(*) FROM invoices") == 3


def test_tables_allow_list(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    c = connector(sql_target, tables=["invoices", "logs"])
    try:
        assert c.call(get("invoices", {"message_id": "m-1"}))["row"] is not None
        with pytest.raises(PermissionDenied, match="does not allow table 'secrets'"):
            c.call(get("secrets", {"k": "root"}))
        with pytest.raises(PermissionDenied, match="secrets"):
            c.call(q("SELECT v FROM secrets"))
        with pytest.raises(PermissionDenied, match="secrets"):
            c.call(q('SELECT i.subject FROM invoices i JOIN "secrets" s ON s.k = i.subject'))
        assert c.call(q("SELECT count(*) AS n FROM invoices"))["rows"] == [{"n": 3}]
    finally:
        c.close()


def test_values_come_back_as_json(shop: SqlConnector, sql_target: SqlTarget) -> None:
    sql_target.execute(
        "INSERT INTO invoices (message_id, subject, amount, data) "
        "VALUES ('m-9', 'J', 12.5, '{\"a\": [1, 2]}')")
    row = shop.call(get("invoices", {"message_id": "m-9"}))["row"]
    assert row["data"] == {"a": [1, 2]}
    # NUMERIC: exact decimal string on PostgreSQL; SQLite stores a REAL.
    assert row["amount"] == ("12.5" if sql_target.kind == "postgresql" else 12.5)
