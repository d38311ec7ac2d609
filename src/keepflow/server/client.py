"""Talking to a running ``keepflow serve`` from another process (the CLI).

The server writes ``$KEEPFLOW_HOME/serve.json`` (pid, URL) while it runs. While it runs it holds
every workflow's lease, so commands that run handlers go through it, and commands that change a
workflow tell it to re-read (it also notices changes by itself within a second).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from keepflow.errors import Conflict, KeepflowError, NotFound, UsageError
from keepflow.settings import Settings

CSRF = {"X-Keepflow-Request": "1"}


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    url: str
    token: str | None = None

    def _headers(self) -> dict[str, str]:
        return {**CSRF, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}

    def post(self, path: str, timeout: float = 30.0, **params: Any) -> Any:
        return self._request("POST", path, timeout, params)

    def get(self, path: str, timeout: float = 10.0, **params: Any) -> Any:
        return self._request("GET", path, timeout, params)

    def _request(self, method: str, path: str, timeout: float, params: dict[str, Any]) -> Any:
        try:
            res = httpx.request(method, self.url + path, params=params,
                                headers=self._headers(), timeout=timeout)
        except httpx.HTTPError as exc:
            raise Conflict(f"the keepflow server at {self.url} did not answer: {exc}") from None
        return _answer(res)


def _answer(res: httpx.Response) -> Any:
    body = res.json() if res.headers.get("content-type", "").startswith("application/json") \
        else {}
    if res.status_code < 400:
        return body
    message = (body.get("error") or {}).get("message") or f"HTTP {res.status_code}"
    cls: type[KeepflowError] = {404: NotFound, 409: Conflict, 400: UsageError}.get(
        res.status_code, KeepflowError)
    raise cls(message)


def server_file(settings: Settings) -> Path:
    return settings.home / "serve.json"


def write_server_file(settings: Settings, url: str) -> None:
    path = server_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url}), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def remove_server_file(settings: Settings) -> None:
    path = server_file(settings)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def find_server(settings: Settings) -> ServerInfo | None:
    """The running server of this ``$KEEPFLOW_HOME``, if any (a stale file is ignored)."""
    try:
        info = json.loads(server_file(settings).read_text(encoding="utf-8"))
        pid, url = int(info["pid"]), str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    server = ServerInfo(pid, url, settings.access_token())
    try:
        server.get("/api/health", timeout=2.0)
    except KeepflowError:
        return None
    return server
