"""Failure classification of the sql connector against real databases (SPEC §8): locks and
timeouts are transient and write nothing, a broken COMMIT is uncertain and reconciles,
credentials are auth errors, secrets never leak."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sql_shop import SqlTarget, connector, create_shop, m, q

from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome
from keepflow.connectors.secret import Secret
from keepflow.connectors.sql import SqlConnector
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

pytestmark = pytest.mark.integration

ROW = {"subject": "Locked out"}


@pytest.fixture
def shop(sql_target: SqlTarget) -> Iterator[SqlConnector]:
    create_shop(sql_target)
    c = connector(sql_target)
    yield c
    c.close()


def pg_only(target: SqlTarget) -> None:
    if target.kind != "postgresql":
        pytest.skip("PostgreSQL-specific behaviour")


def test_locked_database_is_transient_and_writes_nothing(
    shop: SqlConnector, sql_target: SqlTarget
) -> None:
    call = m("insert", "invoices", {"message_id": "m-lock"}, ROW, timeout=0.3)
    if sql_target.kind == "sqlite":
        path = sa.make_url(sql_target.url).database
        assert path
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(TransientError, match="busy"):
                shop.call(call)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    else:
        with sql_target.engine.connect() as holder:
            holder.exec_driver_sql("LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TransientError):
                shop.call(call)
            holder.rollback()
    assert shop.reconcile(call).outcome is ReconcileOutcome.FAILED
    assert shop.call(call)["rowCount"] == 1  # once the lock is gone, the retry works


def test_a_query_past_its_deadline_is_interrupted_as_transient(shop: SqlConnector) -> None:
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT count(*) AS n FROM c")
    with pytest.raises(TransientError):
        shop.call(q(endless, timeout=0.3))


def test_missing_sqlite_file_is_a_precondition(tmp_path: Path) -> None:
    c = SqlConnector(ConnectionConfig("shop", "sql", {"url": f"sqlite:///{tmp_path}/no.db"}))
    try:
        with pytest.raises(PreconditionError):
            c.call(q("SELECT 1"))
        with pytest.raises(PreconditionError):
            c.call(m("insert", "invoices", {"message_id": "x"}, {}))
        with pytest.raises(PreconditionError):
            c.check()
        assert not (tmp_path / "no.db").exists()  # never created by accident
    finally:
        c.close()


def test_unreachable_postgres_is_transient(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@/db?host={tmp_path}"  # no server on this socket dir
    c = SqlConnector(ConnectionConfig("remote", "sql", {"url": url}))
    try:
        with pytest.raises(TransientError):
            c.call(m("insert", "invoices", {"message_id": "x"}, {}))
        assert c.reconcile(m("insert", "invoices", {"message_id": "x"}, {})).outcome is \
            ReconcileOutcome.RETRY
    finally:
        c.close()


def test_postgres_authentication_failure_is_auth(sql_target: SqlTarget) -> None:
    pg_only(sql_target)
    url = sa.make_url(sql_target.url).set(username="kf_no_such_role", password="wrong-pw-123")
    c = SqlConnector(ConnectionConfig("shop", "sql", {
        "url": Secret(url.render_as_string(hide_password=False), "SHOP_URL")}))
    try:
        with pytest.raises(AuthError) as info:
            c.check()
        assert "wrong-pw-123" not in str(info.value)
        with pytest.raises(AuthError):
            c.call(m("insert", "invoices", {"message_id": "x"}, {}))
    finally:
        c.close()


def test_connection_lost_during_commit_is_uncertain_and_reconciles(
    shop: SqlConnector, sql_target: SqlTarget
) -> None:
    """A deferred trigger kills the session inside COMMIT: the client cannot know whether
    the commit happened (SPEC §6 step 4); reconcile by key finds out it did not."""
    pg_only(sql_target)
    sql_target.execute(
        "CREATE FUNCTION kf_kill_self() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER kf_kill AFTER INSERT ON invoices DEFERRABLE INITIALLY "
        "DEFERRED FOR EACH ROW EXECUTE FUNCTION kf_kill_self()",
    )
    call = m("insert", "invoices", {"message_id": "m-commit"}, ROW)
    with pytest.raises(UncertainOutcome, match="during COMMIT"):
        shop.call(call)
    verdict = shop.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.FAILED
    # The connector recovers: the pool replaces the dead connection.
    sql_target.execute("DROP TRIGGER kf_kill ON invoices")
    assert shop.call(call)["rowCount"] == 1


def test_an_error_answered_to_commit_is_definite(shop: SqlConnector,
                                                 sql_target: SqlTarget) -> None:
    pg_only(sql_target)
    sql_target.execute(
        "CREATE FUNCTION kf_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = '23514'; END $$",
        "CREATE CONSTRAINT TRIGGER kf_refuse AFTER INSERT ON invoices DEFERRABLE INITIALLY "
        "DEFERRED FOR EACH ROW EXECUTE FUNCTION kf_refuse()",
    )
    with pytest.raises(ConnectorError) as info:
        shop.call(m("insert", "invoices", {"message_id": "m-refused"}, ROW))
    assert not isinstance(info.value, UncertainOutcome)
    assert "refused at commit" in str(info.value)


def test_secret_url_never_leaks(sql_target: SqlTarget,
                                caplog: pytest.LogCaptureFixture) -> None:
    pg_only(sql_target)
    create_shop(sql_target)
    caplog.set_level(logging.DEBUG)
    password = "pw-8c2e-never-shown"
    url = sa.make_url(sql_target.url)
    if url.password:  # a real password is needed to log in: only check it is hidden
        password = str(url.password)
    else:  # trust auth ignores the password, so any value works
        url = url.set(password=password)
    c = SqlConnector(ConnectionConfig("shop", "sql", {
        "url": Secret(url.render_as_string(hide_password=False), "SHOP_URL"),
        "schema": sql_target.schema}))
    try:
        texts = [repr(c), repr(c.config), c.describe(q("SELECT 1"))]
        for bad in (q("SELECT * FROM nope"), m("insert", "nope", {"id": 1}, {}),
                    m("insert", "invoices", {"message_id": "m-1"}, {"subject": "different"})):
            with pytest.raises(ConnectorError) as info:
                c.call(bad)
            texts += [str(info.value), str(info.value.to_dict())]
        texts.append(caplog.text)
        for text in texts:
            assert password not in text
    finally:
        c.close()
