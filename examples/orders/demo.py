"""Run the orders example end to end on the embedded SQLite store, using the real CLI.

It creates a shop database with a few orders, a books database for invoices, and a local HTTP
endpoint standing in for accounting; deploys ``orders.js``; runs the producer; drains the
consumers; then shows events, runs and what the outside world received. A second round adds
orders and re-runs everything to show that nothing is done twice.

    python examples/orders/demo.py        # state is kept in ./.keepflow-demo for exploring
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOME = Path.cwd() / ".keepflow-demo"
KEEPFLOW = [sys.executable, "-m", "keepflow.cli"]


class Accounting(BaseHTTPRequestHandler):
    """Records notifications by Idempotency-Key; GET /notifications/<key> answers reconcile."""

    disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK

    received: dict[str, dict[str, object]] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers.get("Idempotency-Key", "")
        with self.lock:
            record = self.received.setdefault(key, {"id": len(self.received) + 1, **body})
        self._reply(201, record)

    def do_GET(self) -> None:
        key = self.path.rsplit("/", 1)[-1]
        with self.lock:
            record = self.received.get(key)
        self._reply(200, record) if record else self._reply(404, {"error": "unknown"})

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def keepflow(*args: str, check: bool = True) -> None:
    print(f"\n$ keepflow {' '.join(args)}", flush=True)
    env = {**os.environ, "KEEPFLOW_HOME": str(HOME)}
    res = subprocess.run([*KEEPFLOW, *args], env=env, check=False)
    if check and res.returncode != 0:
        sys.exit(f"demo: `keepflow {' '.join(args)}` failed with exit code {res.returncode}")


def add_orders(shop: Path, orders: list[tuple[str, float]]) -> None:
    with sqlite3.connect(shop) as db:
        db.executemany("INSERT INTO orders (customer, amount) VALUES (?, ?)", orders)


def main() -> None:
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    shop, books = HOME / "shop.db", HOME / "books.db"
    with sqlite3.connect(shop) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL)")
    with sqlite3.connect(books) as db:
        db.execute("CREATE TABLE invoices (order_id INTEGER PRIMARY KEY, customer TEXT, "
                   "amount REAL, created_at TEXT DEFAULT CURRENT_TIMESTAMP)")
    add_orders(shop, [("ACME GmbH", 120.0), ("Globex", 75.5), ("Initech", 310.0)])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Accounting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    (HOME / "connections.toml").write_text(
        f'[connections.shop]\ntype = "sql"\nurl = "sqlite:///{shop}"\n\n'
        f'[connections.books]\ntype = "sql"\nurl = "sqlite:///{books}"\n\n'
        f'[connections.accounting]\ntype = "http"\nbase_url = "http://127.0.0.1:{port}"\n',
        encoding="utf-8")

    print(f"keepflow demo — state in {HOME}, accounting endpoint on port {port}")
    keepflow("init")
    keepflow("deploy", str(HERE / "orders.js"))
    keepflow("trigger", "orders", "pollOrders")
    keepflow("drain", "orders")

    print("\n--- a second round: two new orders; the producer re-reads, nothing is repeated")
    add_orders(shop, [("Umbrella", 42.0), ("Hooli", 999.99)])
    keepflow("trigger", "orders", "pollOrders")
    keepflow("drain")

    keepflow("workflows")
    keepflow("events", "orders")
    keepflow("runs", "orders", "--limit", "6")

    with sqlite3.connect(books) as db:
        invoices = db.execute("SELECT order_id, customer, amount FROM invoices").fetchall()
    print(f"\nbooks.db invoices ({len(invoices)}):")
    for row in invoices:
        print(f"  order {row[0]}: {row[1]} {row[2]} EUR")
    print(f"accounting received {len(Accounting.received)} notification(s), one per "
          "idempotency key:")
    for key, rec in Accounting.received.items():
        print(f"  {key}: {rec['text']}")
    server.shutdown()
    print(f"\nExplore further: KEEPFLOW_HOME={HOME} .venv/bin/keepflow run show <run id>")


if __name__ == "__main__":
    main()
