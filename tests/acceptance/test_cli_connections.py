"""`keepflow connection add|list|check|secret|remove` on a real home (SQLite and PostgreSQL
stores): secrets come from stdin, are sealed in the store under the home's key and never
reach connections.toml, the raw store, the audit log, a listing or any output; a rotated
secret is what the next run sends; a failed add leaves nothing behind
(docs/connectors.md#configuring-connections, docs/security.md#secrets)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from keepflow.store.store import Store
from tests.acceptance.test_first_hour import _env
from tests.support.sink import start_server, stop_server

pytestmark = pytest.mark.integration

PING = """
export default Keep.workflow({
  name: "pinger",
  topics: { "seen": {} },
  producers: { ping: async (ctx) => { await ctx.api.get({ url: "/ping" }); return null; } },
  consumers: {
    idle: Keep.consumer({
      subscribe: ["seen"],
      async prepare(ctx) { return { reservations: [] }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def kf(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def home(tmp_path: Path, store_url: str) -> tuple[dict[str, str], Path, str]:
    env = _env(KEEPFLOW_HOME=str(tmp_path / "home"), KEEPFLOW_DATABASE_URL=store_url)
    assert kf(env, "init").returncode == 0
    return env, tmp_path / "home", store_url


#: What the server of ``seen`` accepts: ``[]`` any Authorization; else only these (401).
ACCEPTED: list[str] = []


@pytest.fixture
def seen() -> Iterator[tuple[str, list[str]]]:
    """A loopback server that records the Authorization header of every request and answers
    401 to one it does not accept (:data:`ACCEPTED`)."""
    headers: list[str] = []
    ACCEPTED.clear()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            got = self.headers.get("Authorization", "")
            headers.append(got)
            self.send_response(200 if not ACCEPTED or got in ACCEPTED else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

    server = start_server(Handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", headers
    finally:
        stop_server(server)


def raw_store_text(home: Path, url: str) -> str:
    """Everything the store holds, as bytes on disk (SQLite) or as every row's text."""
    if url.startswith("sqlite"):
        return b"".join(p.read_bytes() for p in home.glob("keepflow.db*")).decode("latin-1")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = [r[0] for r in conn.execute(sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))]
            return "\n".join(str(row) for t in tables
                             for row in conn.execute(sa.text(f'SELECT * FROM "{t}"')))
    finally:
        engine.dispose()


def test_a_secret_is_sealed_used_rotated_and_never_shown(home: Any, seen: Any,
                                                         tmp_path: Path) -> None:
    env, home_dir, url = home
    base, headers = seen
    first, second = f"Bearer s1-{uuid.uuid4().hex}", f"Bearer s2-{uuid.uuid4().hex}"
    outputs: list[str] = []

    def run(*args: str, stdin: str = "", ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = kf(env, *args, stdin=stdin)
        outputs.extend([res.stdout, res.stderr])
        assert (res.returncode == 0) is ok, (args, res.stdout, res.stderr)
        return res

    run("connection", "add", "api", "--type", "http", "--set", f"base_url={base}",
        "--set", f'allow=["{base}"]', "--secret", "headers.Authorization", stdin=first + "\n")
    script = tmp_path / "pinger.js"
    script.write_text(PING, encoding="utf-8")
    run("deploy", str(script))
    run("trigger", "pinger", "ping")
    assert headers == [first]

    run("connection", "secret", "api", "headers.Authorization", stdin=second + "\n")
    run("trigger", "pinger", "ping")
    assert headers == [first, second]  # the next run sent the rotated secret

    listed = json.loads(run("connection", "list", "--json").stdout)
    [api] = [c for c in listed if c["name"] == "api"]
    assert api["secrets"] == [{"setting": "headers.Authorization",
                               "from": "stored api.headers.Authorization", "present": True,
                               "updatedAt": api["secrets"][0]["updatedAt"]}]
    assert run("connection", "check", "api").stdout.strip() == "api (http): ok"
    run("runs", "pinger", "--json")
    run("status", "--json")

    key = home_dir / "secret.key"
    assert key.stat().st_mode & 0o777 == 0o600
    toml = (home_dir / "connections.toml").read_text()
    assert 'headers_secret = { Authorization = "api.headers.Authorization" }' in toml
    everything = [toml, raw_store_text(home_dir, url), *outputs]
    for secret in (first, second, first.split("-", 1)[1], second.split("-", 1)[1]):
        assert all(secret not in text for text in everything), "a secret leaked"

    removed = json.loads(run("connection", "remove", "api", "--json").stdout)
    assert removed["secretsRemoved"] == ["api.headers.Authorization"]
    assert "[connections.api]" not in (home_dir / "connections.toml").read_text()
    store = Store(url)
    try:
        assert store.credential_list() == []
        actions = [e["action"] for e in store.audit_entries("credential",
                                                            "api.headers.Authorization")]
    finally:
        store.close()
    assert actions == ["credential.set", "credential.set", "credential.removed"]


def test_a_failed_add_leaves_nothing_and_says_why(home: Any) -> None:
    env, home_dir, url = home
    before = (home_dir / "connections.toml").read_text()
    res = kf(env, "connection", "add", "shop", "--type", "sql", "--set", "tables=5",
             "--secret", "url", stdin="sqlite:////nowhere.db\n")
    assert res.returncode != 0
    assert "tables" in res.stderr
    assert (home_dir / "connections.toml").read_text() == before
    store = Store(url)
    try:
        assert store.credential_list() == []
    finally:
        store.close()
    # A secret on the command line is refused: --set cannot carry one.
    res = kf(env, "connection", "add", "shop", "--type", "sql", "--set", "url_secret=x")
    assert res.returncode == 2
    assert "--secret" in res.stderr
    # No stdin line for a secret: refused, nothing written.
    res = kf(env, "connection", "add", "shop", "--type", "sql", "--secret", "url")
    assert res.returncode == 2
    assert "stdin" in res.stderr
    assert (home_dir / "connections.toml").read_text() == before


def test_check_says_what_failed_and_exits_1(home: Any, tmp_path: Path) -> None:
    env, _, _ = home
    db = tmp_path / "gone.db"
    sa.create_engine(f"sqlite:///{db}").connect().close()
    res = kf(env, "connection", "add", "gone", "--type", "sql", "--secret", "url",
             stdin=f"sqlite:///{db}\n")
    assert res.returncode == 0, res.stderr
    assert kf(env, "connection", "check", "gone").returncode == 0
    db.unlink()
    res = kf(env, "connection", "check", "gone", "--json")
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert out["ok"] is False
    assert out["error"]["code"] == "precondition"
    assert str(db) not in res.stdout  # the URL is the secret: never shown


def test_the_key_is_kept_from_other_users_and_a_foreign_key_is_refused(home: Any) -> None:
    env, home_dir, _ = home
    res = kf(env, "connection", "add", "api", "--type", "http", "--set",
             "base_url=http://127.0.0.1:9", "--secret", "headers.Authorization",
             stdin="Bearer abc\n")
    assert res.returncode == 0, res.stderr
    key = home_dir / "secret.key"
    key.chmod(0o644)
    res = kf(env, "connection", "list")  # listing opens nothing: still fine
    assert res.returncode == 0
    res = kf(env, "connection", "check", "api")
    assert res.returncode != 0
    assert "chmod 600" in res.stderr
    key.chmod(0o600)
    other = {**env, "KEEPFLOW_SECRET_KEY": "A" * 43 + "="}
    res = kf(other, "connection", "check", "api")
    assert res.returncode != 0
    assert "cannot be opened with this home's key" in res.stderr


def test_refused_credentials_ask_to_reconnect_and_the_run_continues_by_itself(
        home: Any, seen: Any, tmp_path: Path) -> None:
    """An auth failure puts a Reconnect item in the inbox naming the connection, what failed
    and the command; replacing the secret retries the blocked run, which then commits."""
    env, _, _ = home
    base, headers = seen
    ACCEPTED.append("Bearer good")
    res = kf(env, "connection", "add", "api", "--type", "http", "--set", f"base_url={base}",
             "--set", f'allow=["{base}"]', "--secret", "headers.Authorization",
             stdin="Bearer expired\n")
    assert res.returncode == 0, res.stderr
    script = tmp_path / "pinger.js"
    script.write_text(PING, encoding="utf-8")
    assert kf(env, "deploy", str(script)).returncode == 0
    failed = kf(env, "trigger", "pinger", "ping", "--json")
    assert failed.returncode != 0
    [item] = json.loads(kf(env, "inbox", "--json").stdout)
    assert item["kind"] == "reconnect"
    assert item["connection"] == "api"
    assert "Reconnect api" in item["title"]
    assert "401" in item["why"] or "refused" in item["why"].lower()
    assert item["choices"][0]["command"] == "keepflow connection secret api <setting>"
    assert "expired" not in json.dumps(item)  # the refused secret is not shown either

    res = kf(env, "connection", "secret", "api", "headers.Authorization", "--json",
             stdin="Bearer good\n")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["retried"] == [item["run"]]
    # A producer's retry runs it afresh: the newest run of the producer committed.
    runs = json.loads(kf(env, "runs", "pinger", "--json").stdout)
    assert runs[0]["status"] == "committed", runs
    assert headers == ["Bearer expired", "Bearer good"]
    assert json.loads(kf(env, "inbox", "--json").stdout) == []
    [wf] = json.loads(kf(env, "workflows", "--json").stdout)
    assert wf["status"] == "active"
