"""Run the orders example end to end on the embedded SQLite store, using the real CLI.

``keepflow init --example orders`` creates the shop database with a few orders, a books
database for invoices and an accounting database, with their connections; the demo deploys
``orders.js``, runs the producer, drains the consumers, then shows events, runs and what the
databases received. A second round adds orders and runs everything again to show that nothing
is done twice.

    python examples/orders/demo.py        # state is kept in ./.keepflow-demo for exploring
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOME = Path.cwd() / ".keepflow-demo"
KEEPFLOW = [sys.executable, "-m", "keepflow.cli"]


def keepflow(*args: str) -> None:
    print(f"\n$ keepflow {' '.join(args)}", flush=True)
    env = {**os.environ, "KEEPFLOW_HOME": str(HOME)}
    env.pop("KEEPFLOW_DATABASE_URL", None)  # the demo is about the embedded store
    res = subprocess.run([*KEEPFLOW, *args], env=env, check=False)
    if res.returncode != 0:
        sys.exit(f"demo: `keepflow {' '.join(args)}` failed with exit code {res.returncode}")


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute(sql).fetchall()
    conn.close()
    return found


def main() -> None:
    shutil.rmtree(HOME, ignore_errors=True)
    print(f"keepflow demo — state in {HOME}")
    keepflow("init", "--example", "orders")
    keepflow("deploy", str(HERE / "orders.js"))
    keepflow("trigger", "orders", "pollOrders")
    keepflow("drain", "orders")

    print("\n--- a second round: two new orders; the producer re-reads, nothing is repeated")
    with sqlite3.connect(HOME / "shop.db") as shop:
        shop.executemany("INSERT INTO orders (customer, amount) VALUES (?, ?)",
                         [("Umbrella", 42.0), ("Hooli", 999.99)])
    shop.close()
    keepflow("trigger", "orders", "pollOrders")
    keepflow("drain")

    keepflow("workflows")
    keepflow("events", "orders")
    keepflow("runs", "orders", "--limit", "6")

    invoices = rows(HOME / "books.db", "SELECT order_id, customer, amount FROM invoices")
    print(f"\nbooks.db invoices ({len(invoices)}):")
    for order_id, customer, amount in invoices:
        print(f"  order {order_id}: {customer} {amount} EUR")
    told = rows(HOME / "accounting.db", "SELECT invoice_order_id, text FROM notifications")
    print(f"accounting.db notifications ({len(told)}, one per invoice):")
    for order_id, text in told:
        print(f"  order {order_id}: {text}")
    print(f"\nExplore further: KEEPFLOW_HOME={HOME} .venv/bin/keepflow run show <run id>")


if __name__ == "__main__":
    main()
