"""Examples that run on a fresh home: ``keepflow init --example NAME`` creates what the
example's script needs (local SQLite databases with a little data, and their connections) and
copies the script into the home, so ``keepflow deploy`` works on the first try.

Each example is a directory of this package holding the script; its set-up is below. The
repository's ``examples/`` links to the same scripts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from keepflow.errors import Conflict, UsageError


@dataclass(frozen=True)
class Example:
    name: str
    script: str  # file name inside the example's directory
    workflow: str  # the name the script gives its workflow
    producer: str  # the producer to trigger first
    summary: str
    set_up: Callable[[Path], list[Path]]  # creates the databases under the home
    connections: Callable[[Path], str]  # the connections.toml text for that home


#: The orders example's databases: name -> (CREATE TABLE, INSERT, rows to insert).
_ORDERS_DATABASES: dict[str, tuple[str, str, list[tuple[object, ...]]]] = {
    "shop": ("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
             "amount REAL NOT NULL)", "INSERT INTO orders (customer, amount) VALUES (?, ?)",
             [("ACME GmbH", 120.0), ("Globex", 75.5), ("Initech", 310.0)]),
    "books": ("CREATE TABLE invoices (order_id INTEGER PRIMARY KEY, customer TEXT, "
              "amount REAL, created_at TEXT DEFAULT CURRENT_TIMESTAMP)", "", []),
    "accounting": ("CREATE TABLE notifications (invoice_order_id INTEGER PRIMARY KEY, "
                   "text TEXT NOT NULL, created_at TEXT DEFAULT CURRENT_TIMESTAMP)", "", []),
}


def _orders_databases(home: Path) -> list[Path]:
    """Each database that does not exist yet, created with its table and rows."""
    created = []
    for name, (schema, insert, rows) in _ORDERS_DATABASES.items():
        path = home / f"{name}.db"
        if path.exists():
            continue
        with sqlite3.connect(path) as db:
            db.execute(schema)
            if rows:
                db.executemany(insert, rows)
        db.close()
        created.append(path)
    return created


def _orders_connections(home: Path) -> str:
    def url(name: str) -> str:
        return f"sqlite:///{(home / f'{name}.db').resolve().as_posix()}"

    return (
        "# keepflow connections (docs/connectors.md), written by `keepflow init --example "
        "orders`.\n# Scripts reach each one as ctx.<name>.<tool>.\n\n"
        "[connections.shop]          # the shop's orders; the script only reads them\n"
        f'type = "sql"\nurl = "{url("shop")}"\ntables = ["orders"]\n\n'
        "[connections.books]         # invoices are recorded here\n"
        f'type = "sql"\nurl = "{url("books")}"\ntables = ["invoices"]\n\n'
        "[connections.accounting]    # accounting is told about each invoice here\n"
        f'type = "sql"\nurl = "{url("accounting")}"\ntables = ["notifications"]\n'
    )


EXAMPLES = {
    "orders": Example(
        "orders", "orders.js", "orders", "pollOrders",
        "orders from a shop database become invoices in a books database; accounting is told",
        _orders_databases, _orders_connections),
}


def script_source(example: Example) -> str:
    return (resources.files(__package__) / example.name / example.script).read_text(
        encoding="utf-8")


def install(name: str, home: Path, connections_file: Path, template: str) -> list[Path]:
    """Set example ``name`` up in ``home``; returns what was created. Never overwrites a
    connections file a person edited: that is refused, naming what to add by hand."""
    example = EXAMPLES.get(name)
    if example is None:
        raise UsageError(f"unknown example {name!r}; known: {', '.join(sorted(EXAMPLES))}")
    text = example.connections(home)
    if connections_file.exists():
        current = connections_file.read_text(encoding="utf-8", errors="replace")
        if current not in (template, text):
            raise Conflict(
                f"{connections_file} already exists and was edited; nothing was changed. Add "
                f"the example's connections to it by hand (see docs/connectors.md), or run "
                f"`keepflow init --example {name}` with a new KEEPFLOW_HOME:\n{text}")
    created = example.set_up(home)
    if not connections_file.exists() or connections_file.read_text(encoding="utf-8") != text:
        connections_file.write_text(text, encoding="utf-8")
        created.append(connections_file)
    script = home / example.script
    if not script.exists():
        script.write_text(script_source(example), encoding="utf-8")
        created.append(script)
    return created
