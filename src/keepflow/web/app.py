"""The host's HTTP API (SPEC §12): routes only, no business logic — they call the service
layer and the scheduler loop.

Security: loopback by default; with an access token every request needs
``Authorization: Bearer <token>``; state-changing requests need the header
``X-Keepflow-Request: 1``, which a browser cannot add to a cross-site request without a CORS
preflight that this API never grants (CSRF protection). Without a token the ``Host`` header
must name this machine's loopback (``127.0.0.1``, ``localhost``, ``[::1]``): a page on a
domain that an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin with its own
name, could add the header itself, and would otherwise reach the API
(docs/security.md#the-api).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from keepflow import __version__, service
from keepflow.errors import Conflict, KeepflowError, NotFound, UsageError
from keepflow.runtime.host import Host
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.storable import first_unstorable
from keepflow.views import outcome_view
from keepflow.web.api import operations

CSRF_HEADER = "x-keepflow-request"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def _loopback_host(header: str) -> bool:
    """Whether a ``Host`` header names loopback (with or without a port)."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host in LOOPBACK_NAMES
_STATUS = {NotFound: 404, Conflict: 409, UsageError: 400}


def _error(exc: KeepflowError) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    return JSONResponse({"error": exc.to_dict()}, status_code=status)


def create_app(host: Host, loop: SchedulerLoop, *, token: str | None,
               lifespan_hooks: tuple[Callable[[], Awaitable[None]],
                                     Callable[[], Awaitable[None]]]) -> FastAPI:
    start, stop = lifespan_hooks

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await start()
        yield
        await stop()

    app = FastAPI(title="keepflow", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json")

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given, f"Bearer {token}"):
                return JSONResponse({"error": {"code": "unauthorized", "message":
                                     "missing or wrong access token"}}, status_code=401)
        elif not _loopback_host(request.headers.get("host", "")):
            return JSONResponse({"error": {"code": "host", "message":
                                 "this API answers only requests addressed to 127.0.0.1, "
                                 "localhost or [::1]; to serve other names, set "
                                 "KEEPFLOW_API_TOKEN (docs/security.md#the-api)"}},
                                status_code=403)
        texts = [request.scope.get("path", ""), *request.query_params.keys(),
                 *request.query_params.values()]
        if any(first_unstorable(t) is not None for t in texts):
            return JSONResponse({"error": {"code": "usage", "message":
                                 "the request's path or query holds characters that are not "
                                 "valid text (NUL or a lone surrogate)"}}, status_code=400)
        if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"error": {"code": "csrf", "message":
                                 f"state-changing requests need the header {CSRF_HEADER}: 1"}},
                                status_code=403)
        try:
            return await call_next(request)
        except KeepflowError as exc:
            return _error(exc)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "version": __version__,
                "running": loop.scheduler.running()}

    @app.get("/api/status")
    async def status(workflow: str | None = None) -> Any:
        return service.status(host, workflow, server={"pid": os.getpid()})

    @app.post("/api/workflows/{name}/trigger/{handler}")
    async def trigger(name: str, handler: str, wait: bool = False,
                      timeout: float = 300.0) -> Any:
        wf = host.store.get_workflow(name)
        future = loop.trigger(wf.id, handler)
        if not wait:
            return JSONResponse({"queued": True, "workflow": wf.name, "handler": handler},
                                status_code=202)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return JSONResponse({"queued": True, "workflow": wf.name, "handler": handler,
                                 "message": f"still queued or running after {timeout:g}s"},
                                status_code=202)
        return outcome_view(outcome)

    @app.post("/api/workflows/{name}/refresh")
    async def refresh(name: str) -> Any:
        wf = host.store.get_workflow(name)
        loop.refresh(wf.id)
        return {"refreshed": wf.name}

    @app.post("/api/refresh")
    async def refresh_all() -> Any:
        loop.refresh()
        return {"refreshed": "all"}

    app.include_router(operations(host, loop))
    return app
