"""Hostile queries and hostile databases against the ``sql`` connector, on real SQLite and
PostgreSQL (docs/connectors.md#sql-result-size, #sql-sessions).

A script chooses the SQL and the database's bytes are untrusted, so:

* no result may be loaded whole into the host before a limit applies: huge values, many
  rows, wide rows and values whose JSON is much bigger than their bytes are refused *while*
  they are read, in bounded memory and time, with a ``PermanentError`` naming ``max_bytes``;
* a mutation's result never blocks a workflow after the write happened: oversized values
  come back as ``{"truncated": true, "bytes": n}`` and the write happened exactly once;
* nothing a call does to its database session (``search_path``, ``role``, advisory locks,
  temporary tables, prepared statements) reaches a later call;
* a value nested too deeply is a typed error (or a marker in a mutation result), never an
  untyped exception.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

# The connector fixtures (and their helper modules) live beside the connector integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "connectors"))

from sql_shop import SqlTarget, connector, create_shop, get, m, q

from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome
from keepflow.connectors.secret import Secret
from keepflow.connectors.sql import SqlConnector
from keepflow.connectors.sql.limits import DEFAULT_MAX_BYTES, MAX_JSON_DEPTH, json_size
from keepflow.errors import ConfigError, PermanentError, PreconditionError, TransientError
from tests.integration.connectors import conftest as connector_fixtures

sql_target_url = connector_fixtures.sql_target_url
sql_target = connector_fixtures.sql_target

pytestmark = pytest.mark.integration
PG_ONLY = pytest.mark.parametrize("sql_target_url", ["postgresql"], indirect=True)
SQLITE_ONLY = pytest.mark.parametrize("sql_target_url", ["sqlite"], indirect=True)

DOCS = "docs/connectors.md#sql-result-size"
MiB = 1024 * 1024


def by_backend(target: SqlTarget, sqlite: str, postgresql: str) -> str:
    return sqlite if target.kind == "sqlite" else postgresql


def big_text(target: SqlTarget, n: int) -> str:
    """SQL for a text of ``n`` 'x' characters, built by the database itself."""
    return by_backend(target, f"replace(hex(zeroblob({n // 2})), '0', 'x')",
                      f"repeat('x', {n})")


@contextmanager
def bounded(seconds: float, mib: float) -> Iterator[None]:
    """The block takes less than ``seconds`` and its Python allocations peak below ``mib``
    (the red-team repro allocated the whole value, its base64 and its JSON)."""
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.1f}s"
    assert peak < mib * MiB, f"peak {peak / MiB:.0f} MiB"


def refused_for_size(c: SqlConnector, call: Any, *, timeout_s: float = 5.0,
                     mib: float = 24) -> PermanentError:
    with bounded(timeout_s, mib), pytest.raises(PermanentError) as info:
        c.call(call)
    err = info.value
    assert err.details.get("limit") == "max_bytes", err.message
    assert "max_bytes" in err.message
    assert DOCS in err.message
    assert len(err.message) < 700
    return err


@pytest.fixture
def shop(sql_target: SqlTarget) -> Iterator[SqlConnector]:
    create_shop(sql_target)
    blob = by_backend(sql_target, "BLOB", "BYTEA")
    sql_target.execute(
        f"CREATE TABLE docs (k TEXT PRIMARY KEY, status TEXT, body TEXT, raw {blob}, data JSON)",
        "INSERT INTO docs (k, status, body) VALUES ('small', 'new', 'hello')",
    )
    c = connector(sql_target)
    yield c
    c.close()


# ---------------------------------------------------------------- query: bytes, bounded


def test_one_huge_value_is_refused_fast_in_bounded_memory(shop: SqlConnector,
                                                         sql_target: SqlTarget) -> None:
    """The red-team repro: one 100 MB value, on a connection without `tables`."""
    for sql in (by_backend(sql_target, "SELECT zeroblob(100000000) AS b",
                           "SELECT repeat('x', 100000000) AS b"),
                f"SELECT {big_text(sql_target, 100_000_000)} AS b",
                by_backend(sql_target, "SELECT randomblob(50000000) AS b",
                           "SELECT decode(repeat('ab', 50000000), 'hex') AS b")):
        refused_for_size(shop, q(sql, timeout=2.0), timeout_s=4.0)
    assert shop.call(q("SELECT 1 AS one"))["rows"] == [{"one": 1}]  # the connection is fine


def test_a_huge_stored_value_is_refused_without_being_loaded(shop: SqlConnector,
                                                             sql_target: SqlTarget) -> None:
    huge = big_text(sql_target, 30 * MiB)
    sql_target.execute(f"INSERT INTO docs (k, body) VALUES ('huge', {huge})")
    refused_for_size(shop, q("SELECT body FROM docs WHERE k = :k", k="huge"))
    refused_for_size(shop, q("SELECT * FROM docs ORDER BY k"))
    # What fits is still readable, from the same table.
    rows = shop.call(q("SELECT k, status FROM docs ORDER BY k"))["rows"]
    assert [r["k"] for r in rows] == ["huge", "small"]


def test_many_rows_are_refused_while_fetching(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    c = connector(sql_target, max_rows=100_000)
    try:
        rows = by_backend(
            sql_target,
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000) "
            f"SELECT i, {big_text(sql_target, 1000)} AS pad FROM r",
            f"SELECT g AS i, {big_text(sql_target, 1000)} AS pad "
            "FROM generate_series(1, 100000) AS g")
        err = refused_for_size(c, q(rows, timeout=5.0), timeout_s=6.0)
        # It stopped near the limit (about 4 MiB of ~1 KiB rows), not after 100,000 rows.
        assert "stopped at row" in err.message
        stopped = int(err.message.split("stopped at row ")[1].split(")")[0])
        assert 3000 < stopped < 5000
    finally:
        c.close()


def test_wide_rows_of_large_values_are_refused(shop: SqlConnector,
                                               sql_target: SqlTarget) -> None:
    """Many columns of values each below max_bytes: together far above it. On SQLite the
    per-value limit is shared out among the columns, so not even one row is built."""
    each = by_backend(sql_target, "zeroblob(3000000)", "repeat('x', 3000000)")
    cols = ", ".join(f"{each} AS c{i}" for i in range(60))
    refused_for_size(shop, q(f"SELECT {cols}", timeout=3.0), timeout_s=5.0)
    # A wide row of small values is fine.
    small = ", ".join(f"{i} AS c{i}" for i in range(60))
    assert len(shop.call(q(f"SELECT {small}"))["rows"][0]) == 60


def test_json_escaping_is_counted_like_the_sandbox_counts_it(sql_target: SqlTarget) -> None:
    """1 MiB of control characters is 6 MiB of JSON (\\u0001): bytes alone would pass."""
    create_shop(sql_target)
    c = connector(sql_target, max_bytes=2 * MiB)
    try:
        ctrl = by_backend(sql_target, "replace(hex(zeroblob(524288)), '0', char(1))",
                          "repeat(chr(1), 1048576)")
        refused_for_size(c, q(f"SELECT {ctrl} AS s"))
        ok = c.call(q(f"SELECT {big_text(sql_target, MiB)} AS s"))
        assert json_size(ok) <= 2 * MiB
    finally:
        c.close()


def test_the_limit_is_the_setting_and_results_below_it_work(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    c = connector(sql_target, max_bytes=64 * 1024)
    try:
        fits = c.call(q(f"SELECT {big_text(sql_target, 60_000)} AS s"))
        assert len(fits["rows"][0]["s"]) == 60_000
        assert json_size(fits) <= 64 * 1024
        err = refused_for_size(c, q(f"SELECT {big_text(sql_target, 70_000)} AS s"))
        assert "65536" in err.message
    finally:
        c.close()


def test_truncation_by_max_rows_still_works_with_the_byte_bound(sql_target: SqlTarget) -> None:
    """The row after the last one is never sent, however large it is."""
    create_shop(sql_target)
    c = connector(sql_target, max_rows=2)
    try:
        sql = ("SELECT 1 AS n, 'a' AS v UNION ALL SELECT 2, 'b' UNION ALL "
               f"SELECT 3, {big_text(sql_target, 3_000_000)} ORDER BY n")
        result = c.call(q(sql))
        assert result == {"rows": [{"n": 1, "v": "a"}, {"n": 2, "v": "b"}], "rowCount": 2,
                          "truncated": True}
    finally:
        c.close()


def test_the_byte_bound_holds_on_a_connection_with_an_allow_list(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    c = connector(sql_target, tables=["invoices"])
    try:
        sql = by_backend(sql_target, "SELECT zeroblob(100000000) AS b, subject FROM invoices",
                         "SELECT repeat(subject, 10000000) AS b FROM invoices")
        refused_for_size(c, q(sql, timeout=3.0), timeout_s=5.0)
        assert c.call(q("SELECT count(*) AS n FROM invoices"))["rows"] == [{"n": 3}]
    finally:
        c.close()


def test_the_deadline_covers_reading_the_rows(shop: SqlConnector,
                                              sql_target: SqlTarget) -> None:
    """Rows that are slow to produce one by one: the call ends at its deadline."""
    slow = by_backend(
        sql_target,
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000000) "
        "SELECT i FROM r WHERE i % 5000000 = 0",
        "SELECT g FROM generate_series(1, 300000000) AS g WHERE g % 50000000 = 0")
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out|statement timeout|cancel"):
        shop.call(q(slow, timeout=0.5))
    assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize("value", [0, 1023, 2**40, True, "4MB", 4.5])
def test_max_bytes_is_validated(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        SqlConnector.validate_settings({"url": "sqlite:////tmp/x.db", "max_bytes": value})
    assert info.value.details.get("key") == "max_bytes"
    assert DOCS in str(info.value)


def test_max_bytes_has_a_default_below_the_sandbox_message_limit() -> None:
    assert 4 * MiB == DEFAULT_MAX_BYTES
    SqlConnector.validate_settings({"url": "sqlite:////tmp/x.db", "max_bytes": 1024})


# ---------------------------------------------------------------- get and mutation results


def _store_big_doc(target: SqlTarget, size: int = 9 * MiB) -> None:
    target.execute(f"INSERT INTO docs (k, status, body) VALUES "
                   f"('d1', 'new', {big_text(target, size)})")


def test_get_of_an_oversized_row_fails_naming_the_limit(shop: SqlConnector,
                                                        sql_target: SqlTarget) -> None:
    _store_big_doc(sql_target)
    err = refused_for_size(shop, get("docs", {"k": "d1"}))
    assert "'body'" in err.message
    assert shop.call(get("docs", {"k": "small"}))["row"]["body"] == "hello"


def test_an_oversized_update_result_is_marked_and_the_write_happened_once(
        shop: SqlConnector, sql_target: SqlTarget) -> None:
    """The red-team repro: a 9 MiB column returned by `update` blocked the workflow."""
    _store_big_doc(sql_target)
    call = m("update", "docs", {"k": "d1"}, {"status": "approved"})
    with bounded(5.0, 24):
        result = shop.call(call)
    assert result["rowCount"] == 1
    assert result["truncated"] is True
    assert result["row"]["status"] == "approved"
    assert result["row"]["body"] == {"truncated": True, "bytes": 9 * MiB}
    assert json_size(result) <= DEFAULT_MAX_BYTES
    assert sql_target.scalar("SELECT status FROM docs WHERE k = 'd1'") == "approved"
    assert sql_target.scalar("SELECT length(body) FROM docs WHERE k = 'd1'") == 9 * MiB
    verdict = shop.reconcile(call)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result["row"]["body"] == {"truncated": True, "bytes": 9 * MiB}


def test_an_oversized_insert_is_written_exactly_once(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    sql_target.execute("CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT)")
    c = connector(sql_target, max_bytes=64 * 1024)
    try:
        body = "é" * 100_000  # 200 KB stored, 600 KB as the sandbox's JSON
        call = m("insert", "notes", {"k": "n1"}, {"body": body})
        first = c.call(call)
        assert first["rowCount"] == 1
        assert first["truncated"] is True
        assert first["row"] == {"k": "n1", "body": {"truncated": True, "bytes": 200_000}}
        again = c.call(call)  # the retry of the same ledger attempt
        assert again["rowCount"] == 0
        assert again["alreadyPresent"] is True
        assert again["row"]["body"]["truncated"] is True
        assert sql_target.scalar("SELECT count(*) FROM notes") == 1
        assert sql_target.scalar("SELECT body FROM notes") == body
        assert c.reconcile(call).outcome is ReconcileOutcome.APPLIED
        gone = c.call(m("delete", "notes", {"k": "n1"}))
        assert gone["row"]["body"]["truncated"] is True
        assert sql_target.scalar("SELECT count(*) FROM notes") == 0
    finally:
        c.close()


def test_a_value_whose_json_is_bigger_than_its_bytes_is_marked(sql_target: SqlTarget) -> None:
    """20,000 control characters are 20 kB stored and 120 kB of JSON: the exact JSON count
    after fetching catches what the stored size did not."""
    create_shop(sql_target)
    sql_target.execute("CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT)")
    c = connector(sql_target, max_bytes=64 * 1024)
    try:
        result = c.call(m("upsert", "notes", {"k": "n"}, {"body": "\x01" * 20_000}))
        assert result["row"]["body"] == {"truncated": True, "bytes": 20_000}
        assert json_size(result) <= 64 * 1024
        refused_for_size(c, get("notes", {"k": "n"}))
        assert sql_target.scalar("SELECT length(body) FROM notes") == 20_000
    finally:
        c.close()


def test_largest_values_are_marked_first_until_the_row_fits(sql_target: SqlTarget) -> None:
    create_shop(sql_target)
    cols = ", ".join(f"c{i} TEXT" for i in range(12))
    sql_target.execute(f"CREATE TABLE wide (k TEXT PRIMARY KEY, {cols})")
    c = connector(sql_target, max_bytes=8192)
    try:
        values = {f"c{i}": "v" * (i * 300) for i in range(12)}
        result = c.call(m("upsert", "wide", {"k": "w"}, values))
        row = result["row"]
        assert json_size(result) <= 8192 + 64
        marked = [n for n, v in row.items() if isinstance(v, dict)]
        kept = [n for n, v in row.items() if isinstance(v, str) and n != "k"]
        assert marked
        assert kept
        assert min(int(n[1:]) for n in marked) > max(int(n[1:]) for n in kept)
        for n in kept:
            assert row[n] == values[n]
    finally:
        c.close()


def test_binary_values_are_bounded_as_their_base64(shop: SqlConnector,
                                                   sql_target: SqlTarget) -> None:
    raw = by_backend(sql_target, "randomblob(3500000)",
                     "decode(repeat('ab', 3500000), 'hex')")
    sql_target.execute(f"INSERT INTO docs (k, raw) VALUES ('b', {raw})")
    refused_for_size(shop, get("docs", {"k": "b"}))  # 3.5 MB is 4.7 MB of base64
    result = shop.call(m("update", "docs", {"k": "b"}, {"status": "seen"}))
    assert result["row"]["raw"] == {"truncated": True, "bytes": 3_500_000}


@PG_ONLY
def test_every_kind_of_column_is_measured_and_returned(shop: SqlConnector,
                                                       sql_target: SqlTarget) -> None:
    """The size of each column is asked in SQL: it must work for every type a table has."""
    sql_target.execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad')",
        "CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 100)",
        "CREATE TABLE odd (id int PRIMARY KEY, m mood, tags text[], u uuid, t timestamptz, "
        "n numeric, j json, jb jsonb, i interval, b bytea, d short_text, v varchar(9), "
        "c char(3), r int4range)",
        "INSERT INTO odd VALUES (1, 'happy', '{a,b}', gen_random_uuid(), now(), 1.5, "
        "'{\"a\": 1}', '[1]', '1 day', '\\x00ff', 'dom', 'vc', 'ch', '[1,5)')")
    row = shop.call(get("odd", {"id": 1}))["row"]
    assert (row["m"], row["tags"], row["j"]) == ("happy", ["a", "b"], {"a": 1})
    assert (row["jb"], row["b"], row["d"]) == ([1], "AP8=", "dom")
    result = shop.call(m("update", "odd", {"id": 1}, {"m": "sad"}))
    assert result["row"]["m"] == "sad"
    assert "truncated" not in result


# ---------------------------------------------------------------- deeply nested values


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 3000, "deepest"])
def test_deeply_nested_json_in_a_result_is_typed(shop: SqlConnector, sql_target: SqlTarget,
                                                 levels: int | str) -> None:
    if levels == "deepest":  # as deep as each database will store
        levels = by_backend(sql_target, "100000", "5000")
    levels = int(levels)
    sql_target.execute(f"INSERT INTO docs (k, data) VALUES ('deep', '{_deep(levels)}')")
    with pytest.raises(PermanentError) as info:
        shop.call(get("docs", {"k": "deep"}))
    assert info.value.details.get("limit") == "depth"
    assert DOCS in info.value.message
    if sql_target.kind == "postgresql":  # psycopg decodes json itself: the red-team repro
        with pytest.raises(PermanentError) as info:
            shop.call(q(f"SELECT CAST('{_deep(levels)}' AS jsonb) AS j"))
        assert info.value.details.get("limit") == "depth"
    # The write to such a row works and says what it left out.
    result = shop.call(m("update", "docs", {"k": "deep"}, {"status": "seen"}))
    assert result["row"]["data"] == {"truncated": True, "nestedDeeperThan": MAX_JSON_DEPTH}
    assert result["row"]["status"] == "seen"


def test_json_at_the_depth_limit_comes_back(shop: SqlConnector, sql_target: SqlTarget) -> None:
    sql_target.execute(f"INSERT INTO docs (k, data) VALUES ('ok', '{_deep(MAX_JSON_DEPTH)}')")
    value = shop.call(get("docs", {"k": "ok"}))["row"]["data"]
    for _ in range(MAX_JSON_DEPTH - 1):
        value = value[0]
    assert value == []


@SQLITE_ONLY  # PostgreSQL refuses to store text that is not JSON in a json column
def test_text_in_a_json_column_that_is_not_json_comes_back_as_text(
        shop: SqlConnector, sql_target: SqlTarget) -> None:
    sql_target.execute("INSERT INTO docs (k, data) VALUES ('bad', '{not json')")
    assert shop.call(get("docs", {"k": "bad"}))["row"]["data"] == "{not json"


def test_no_untyped_exception_leaves_a_transaction(shop: SqlConnector,
                                                   sql_target: SqlTarget) -> None:
    """Whatever goes wrong inside, the caller gets a typed error and nothing is written."""
    def fail_inside(exc: Exception) -> None:
        with shop._db.transaction("test", 5.0, read_only=False) as conn:
            conn.execute(sa.text("INSERT INTO logs (line) VALUES ('x')"))
            raise exc

    for exc in (ValueError("boom"), RecursionError("deep"), KeyError("k")):
        with pytest.raises(PermanentError):
            fail_inside(exc)
    assert sql_target.scalar("SELECT count(*) FROM logs") == 0


def test_the_database_cannot_flood_an_error_message(shop: SqlConnector,
                                                    sql_target: SqlTarget) -> None:
    """An error's text comes from the database (PostgreSQL quotes a bad value back in full)
    and travels to the script, the ledger and the UI: it is cut short. (The driver still
    receives PostgreSQL's message whole: memory grows with it, see the docs' limits.)"""
    sql = by_backend(sql_target, f"SELECT * FROM {'t' * 2_000_000}",
                     "SELECT CAST(repeat('x', 20000000) AS int) AS n")
    with bounded(5.0, 100), pytest.raises((PermanentError, PreconditionError)) as info:
        shop.call(q(sql))
    assert len(info.value.message) < 1000
    assert len(json.dumps(info.value.to_dict())) < 2000


# ---------------------------------------------------------------- session state


def _pg_connector(target: SqlTarget, url: sa.URL) -> SqlConnector:
    return SqlConnector(ConnectionConfig("shop", "sql", {
        "url": Secret(url.render_as_string(hide_password=False), "SHOP_URL")}))


@PG_ONLY
def test_search_path_set_by_a_query_does_not_reach_a_later_insert(
        sql_target: SqlTarget) -> None:
    """The red-team repro: set_config('search_path', 'shadow', false) in a read, then another
    workflow's insert into `orders` landed in shadow.orders."""
    assert sql_target.schema
    shadow = f"kf_shadow_{uuid.uuid4().hex[:8]}"
    sql_target.execute("CREATE TABLE orders (k TEXT PRIMARY KEY, v TEXT)",
                       f'CREATE SCHEMA "{shadow}"',
                       f'CREATE TABLE "{shadow}".orders (k TEXT PRIMARY KEY, v TEXT)')
    # No `schema` setting: the session's own search_path (here from the URL) decides.
    url = sa.make_url(sql_target.url).update_query_dict(
        {"options": f"-csearch_path={sql_target.schema}"})
    c = _pg_connector(sql_target, url)
    try:
        got = c.call(q("SELECT set_config('search_path', :p, false) AS s", p=shadow))
        assert got["rows"] == [{"s": shadow}]
        assert c.call(q("SELECT current_setting('search_path') AS p"))["rows"][0]["p"] \
            != shadow
        c.call(m("insert", "orders", {"k": "o1"}, {"v": "paid"}))
        assert sql_target.scalar("SELECT count(*) FROM orders") == 1
        assert sql_target.scalar(f'SELECT count(*) FROM "{shadow}".orders') == 0
    finally:
        c.close()
        sql_target.execute(f'DROP SCHEMA "{shadow}" CASCADE')


@PG_ONLY
def test_a_role_set_by_a_query_does_not_outlive_it(shop: SqlConnector) -> None:
    me = shop.call(q("SELECT current_user AS u"))["rows"][0]["u"]
    switched = shop.call(q("SELECT set_config('role', 'pg_monitor', false) AS r, "
                           "current_user AS u"))
    assert switched["rows"][0]["r"] == "pg_monitor"
    for _ in range(3):
        assert shop.call(q("SELECT current_user AS u"))["rows"][0]["u"] == me
    # A later mutation runs as the connection's own user (pg_monitor may not write here).
    assert shop.call(m("upsert", "docs", {"k": "after-role"}, {"status": "ok"}))["rowCount"] == 1


@PG_ONLY
def test_an_advisory_lock_taken_by_a_query_is_released(shop: SqlConnector,
                                                       sql_target: SqlTarget) -> None:
    key = 700_000 + uuid.uuid4().int % 100_000
    assert shop.call(q("SELECT pg_advisory_lock(:k) IS NULL AS locked", k=key))["rows"]
    assert shop.call(q("SELECT pg_advisory_lock_shared(:k) IS NULL AS l", k=key + 1))["rows"]
    outside = sa.create_engine(sql_target.engine.url, poolclass=NullPool)
    try:
        with outside.connect() as conn:
            for k in (key, key + 1):
                assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": k}).scalar() is True
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": k})
    finally:
        outside.dispose()


def test_a_temporary_table_does_not_reach_the_next_call(shop: SqlConnector,
                                                        sql_target: SqlTarget) -> None:
    """Scripts cannot create one (CREATE, INTO are refused, reads are read-only), but code of
    the database's owner (a trigger) may: it must die with the call's session."""
    for sql in ("CREATE TEMP TABLE kf_t (x int)", "SELECT 1 AS x INTO TEMP kf_t"):
        with pytest.raises(PermanentError):
            shop.call(q(sql))
    with shop._db.transaction("owner's trigger", 5.0, read_only=False) as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE kf_t (x int)")
        conn.exec_driver_sql("INSERT INTO kf_t VALUES (1)")
    temp = by_backend(sql_target, "temp.kf_t", "pg_temp.kf_t")
    for _ in range(3):
        with pytest.raises(PreconditionError, match="kf_t"):
            shop.call(q(f"SELECT x FROM {temp}"))


@PG_ONLY
def test_many_calls_on_pooled_sessions_keep_working(shop: SqlConnector) -> None:
    """psycopg would prepare a statement after five runs; the reset (DISCARD ALL) drops the
    server's copy behind its back, so the next run would fail (\"_pg3_0\" does not exist)
    unless psycopg prepares nothing."""
    for i in range(12):
        assert shop.call(m("upsert", "docs", {"k": str(i % 3)}, {"status": "x"}))["rowCount"] == 1
    for _ in range(12):
        assert shop.call(q("SELECT k FROM docs WHERE k = :k", k="1"))["rows"] == [{"k": "1"}]
    for _ in range(12):
        assert shop.call(get("docs", {"k": "2"}))["row"]["status"] == "x"


@PG_ONLY
def test_a_read_cannot_switch_its_transaction_to_read_write(shop: SqlConnector,
                                                            sql_target: SqlTarget) -> None:
    sql_target.execute("CREATE SEQUENCE kf_seq")
    with pytest.raises(PermanentError):
        shop.call(q("SELECT set_config('transaction_read_only', 'off', true) AS s, "
                    "nextval('kf_seq') AS n"))
    with pytest.raises(PermanentError, match="read-only"):
        shop.call(q("SELECT nextval('kf_seq') AS n"))
