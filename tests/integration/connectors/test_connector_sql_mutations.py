"""sql mutations and their reconcile by unique key on real SQLite and PostgreSQL
(SPEC §5.2 one mutation, §6 reconcile, §9 "SQL insert: look up by unique key")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sql_shop import SqlTarget, connector, create_shop, get, m

from keepflow.connectors.base import ReconcileOutcome
from keepflow.connectors.sql import SqlConnector
from keepflow.errors import PermanentError, PreconditionError

pytestmark = pytest.mark.integration


@pytest.fixture
def shop(sql_target: SqlTarget) -> Iterator[SqlConnector]:
    create_shop(sql_target)
    c = connector(sql_target)
    yield c
    c.close()


NEW = {"subject": "Invoice March", "amount": 12.5, "data": {"lines": [1, 2]}}


def test_insert_returns_the_row_and_reconciles_as_applied(shop: SqlConnector) -> None:
    call = m("insert", "invoices", {"message_id": "m-10"}, NEW)
    result = shop.call(call)
    assert result["rowCount"] == 1
    assert result["row"]["subject"] == "Invoice March"
    assert result["row"]["status"] == "new"  # database default
    assert result["row"]["data"] == {"lines": [1, 2]}
    verdict = shop.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == {"rowCount": 1, "row": result["row"]}


def test_insert_again_with_the_same_values_is_the_same_mutation(
    shop: SqlConnector, sql_target: SqlTarget
) -> None:
    call = m("insert", "invoices", {"message_id": "m-10"}, NEW)
    first = shop.call(call)
    again = shop.call(call)  # e.g. after a wrong "it didn't happen"
    assert again == {"rowCount": 0, "row": first["row"], "alreadyPresent": True}
    assert sql_target.scalar("SELECT count(*) FROM invoices WHERE message_id = 'm-10'") == 1


def test_insert_over_a_different_row_is_a_unique_conflict(shop: SqlConnector) -> None:
    call = m("insert", "invoices", {"message_id": "m-1"}, {"subject": "Something else"})
    with pytest.raises(PermanentError, match="unique conflict") as info:
        shop.call(call)
    assert info.value.details["columns"] == ["subject"]
    # Reconcile cannot tell whose row this is: it asks again (and eventually the person).
    assert shop.reconcile(call).outcome is ReconcileOutcome.RETRY


def test_insert_reconciles_as_failed_when_the_key_is_absent(shop: SqlConnector) -> None:
    verdict = shop.reconcile(m("insert", "invoices", {"message_id": "m-404"}, NEW))
    assert verdict.outcome is ReconcileOutcome.FAILED


def test_insert_by_a_unique_column_that_is_not_the_primary_key(shop: SqlConnector) -> None:
    call = m("insert", "orders", {"ref": "R-1"}, {"id": 7, "note": "first"})
    assert shop.call(call)["row"] == {"id": 7, "ref": "R-1", "note": "first"}
    assert shop.reconcile(call).outcome is ReconcileOutcome.APPLIED


@pytest.mark.parametrize(
    ("table", "key", "values", "error", "fragment"),
    [
        ("invoices", {"message_id": "m-11"}, {}, PermanentError, "subject"),  # NOT NULL
        ("invoices", {"message_id": "m-11"}, {"subject": "x", "nope": 1}, PermanentError,
         "has no column 'nope'"),
        ("invoices", {"message_id": "m-11"}, {"subject": "x", "subject = 1; --": 1},
         PermanentError, "has no column"),
        ("invoices", {"message_id": "m-11"}, {"subject": {"a": 1}}, PermanentError,
         "not a JSON column"),
        ("invoices", {"subject": "x"}, {}, PermanentError, "not a unique key"),
        ("logs", {"line": "x"}, {}, PermanentError, "no unique key"),
        ("nope", {"id": 1}, {}, PreconditionError, "does not exist"),
        ("invoices; DROP TABLE invoices", {"id": 1}, {}, PreconditionError, "does not exist"),
    ],
)
def test_insert_errors_change_nothing(
    shop: SqlConnector, sql_target: SqlTarget, table: str, key: dict[str, object],
    values: dict[str, object], error: type[Exception], fragment: str,
) -> None:
    with pytest.raises(error) as info:
        shop.call(m("insert", table, key, values))
    assert fragment in str(info.value)
    assert sql_target.scalar("SELECT count(*) FROM invoices") == 3


def test_update_and_its_reconcile(shop: SqlConnector, sql_target: SqlTarget) -> None:
    call = m("update", "invoices", {"message_id": "m-1"}, {"status": "paid"})
    assert shop.reconcile(call).outcome is ReconcileOutcome.FAILED  # not yet
    result = shop.call(call)
    assert result["rowCount"] == 1
    assert result["row"]["status"] == "paid"
    assert result["row"]["subject"] == "Invoice December"
    assert shop.reconcile(call).outcome is ReconcileOutcome.APPLIED
    sql_target.execute("UPDATE invoices SET status = 'refunded' WHERE message_id = 'm-1'")
    verdict = shop.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.FAILED
    assert "status" in verdict.detail


def test_update_of_a_missing_row_is_a_precondition(shop: SqlConnector) -> None:
    with pytest.raises(PreconditionError, match="no row has this key"):
        shop.call(m("update", "invoices", {"message_id": "m-404"}, {"status": "paid"}))


def test_upsert_inserts_then_updates(shop: SqlConnector, sql_target: SqlTarget) -> None:
    call = m("upsert", "invoices", {"message_id": "m-20"}, {"subject": "New", "amount": 1})
    assert shop.reconcile(call).outcome is ReconcileOutcome.FAILED
    assert shop.call(call)["row"]["subject"] == "New"
    assert shop.reconcile(call).outcome is ReconcileOutcome.APPLIED
    second = m("upsert", "invoices", {"message_id": "m-20"}, {"subject": "Changed"})
    assert shop.reconcile(second).outcome is ReconcileOutcome.FAILED
    result = shop.call(second)
    assert result["row"]["subject"] == "Changed"
    assert result["row"]["amount"] in ("1", 1)
    assert shop.reconcile(second).outcome is ReconcileOutcome.APPLIED
    assert sql_target.scalar("SELECT count(*) FROM invoices WHERE message_id = 'm-20'") == 1


def test_delete_returns_the_deleted_row_and_reconciles(shop: SqlConnector) -> None:
    call = m("delete", "invoices", {"message_id": "m-3"})
    assert shop.reconcile(call).outcome is ReconcileOutcome.FAILED  # still there
    result = shop.call(call)
    assert result["rowCount"] == 1
    assert result["row"]["subject"] == "Invoice February"
    assert shop.call(get("invoices", {"message_id": "m-3"})) == {"row": None}
    verdict = shop.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == {"rowCount": 1, "row": None}


def test_delete_of_a_missing_row_is_a_precondition(shop: SqlConnector) -> None:
    with pytest.raises(PreconditionError):
        shop.call(m("delete", "invoices", {"message_id": "m-404"}))


def test_reconcile_matches_values_the_way_the_database_stores_them(
    shop: SqlConnector,
) -> None:
    # The script passes the amount as a string and the database stores a number: the
    # comparison is done by the database, so reconcile still recognises the row.
    call = m("insert", "invoices", {"message_id": "m-30"}, {"subject": "S", "amount": "30"})
    shop.call(call)
    assert shop.reconcile(call).outcome is ReconcileOutcome.APPLIED


def test_new_tables_are_found_without_restart(shop: SqlConnector,
                                              sql_target: SqlTarget) -> None:
    with pytest.raises(PreconditionError):
        shop.call(m("insert", "later", {"id": 1}, {}))
    sql_target.execute("CREATE TABLE later (id INTEGER PRIMARY KEY)")
    assert shop.call(m("insert", "later", {"id": 1}, {}))["row"] == {"id": 1}
    sql_target.execute("ALTER TABLE later ADD COLUMN note TEXT")  # the cached table is stale
    assert shop.call(m("insert", "later", {"id": 2}, {"note": "n"}))["row"] == \
        {"id": 2, "note": "n"}
