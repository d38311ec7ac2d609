"""The HTTP API of the real `keepflow serve` (docs/security.md#the-api): without a token it
answers only requests addressed to loopback, so a DNS-rebound page cannot use it; state changes
need the CSRF header; bad input is a clean 4xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.acceptance.test_serve import Server, serve_env
from tests.conftest import new_pg_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Server, dict[str, str]]]:
    """One `keepflow serve` per backend for this module (and its environment): the tests
    below only read, are refused, or start a second server that must be refused, so they can
    share it instead of each starting its own (~2 s apiece)."""
    tmp = tmp_path_factory.mktemp(f"api-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'keepflow.db'}"
    else:
        url = new_pg_database(request.getfixturevalue("pg_admin_url"),
                              request.getfixturevalue("pg_template"))
    env = serve_env(tmp, url)
    s = Server(env, tmp / "serve.log")
    try:
        yield s, env
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.fixture
def server(api_server: tuple[Server, dict[str, str]]) -> Server:
    s = api_server[0]
    assert s.proc.poll() is None, "the shared server stopped"
    return s


@pytest.fixture
def env(api_server: tuple[Server, dict[str, str]]) -> dict[str, str]:
    return api_server[1]


def test_the_api_answers_only_requests_addressed_to_loopback(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        res = httpx.get(server.url + "/api/health", headers={"Host": host})
        assert res.status_code == 200, host
    for host in (f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}", "",
                 f"localhost.:{port}", f"[::2]:{port}"):
        res = httpx.get(server.url + "/api/status", headers={"Host": host})
        assert res.status_code == 403, host
        assert res.json()["error"]["code"] == "host"
        assert "docs/security.md#the-api" in res.json()["error"]["message"]
        res = httpx.post(server.url + "/api/refresh",
                         headers={"Host": host, "X-Keepflow-Request": "1"})
        assert res.status_code == 403, host


def test_state_changes_need_the_csrf_header(server: Server) -> None:
    res = httpx.post(server.url + "/api/refresh")
    assert res.status_code == 403
    assert res.json()["error"]["code"] == "csrf"
    assert httpx.post(server.url + "/api/refresh",
                      headers={"X-Keepflow-Request": "1"}).status_code == 200


@pytest.mark.parametrize("path", [
    "/api/workflows/%ff/refresh", "/api/workflows/%00/refresh", "/api/workflows/%ED%A0%80/refresh",
    "/api/workflows/" + "x" * 60_000 + "/refresh", "/api/workflows/a/trigger/%ff",
])
def test_malformed_names_are_a_clean_client_error(server: Server, path: str) -> None:
    res = httpx.post(server.url + path, headers={"X-Keepflow-Request": "1"})
    assert 400 <= res.status_code < 500, (path, res.status_code, res.text[:200])
    assert httpx.get(server.url + "/api/health").status_code == 200  # still serving


def test_a_second_server_on_the_same_home_is_refused(server: Server, env: dict[str, str]
                                                      ) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "keepflow.cli", "serve", "--port", "0"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode != 0
    assert "already runs" in res.stderr
    assert "Traceback" not in res.stderr
    assert httpx.get(server.url + "/api/health").status_code == 200  # the first one is fine
