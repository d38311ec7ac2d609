"""The host's HTTP server (SPEC §12): the JSON API under ``/api``, the pages, ``/metrics``.
Routes only; the logic lives in the service layer and the scheduler loop.

Who may call it and how a state change proves it comes from our own page is
``keepflow.web.security`` (docs/security.md#the-api).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from keepflow import __version__, service
from keepflow.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KeepflowError,
    NotFound,
    TooLarge,
    Unauthorized,
    UsageError,
)
from keepflow.runtime.host import Host
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.storable import first_unstorable
from keepflow.views import outcome_view
from keepflow.web.api import operations
from keepflow.web.metrics import metrics_router
from keepflow.web.security import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Guard,
    loopback_host,
    same_origin,
)

_STATUS: dict[type[KeepflowError], int] = {
    InvalidInput: 422, NotFound: 404, Conflict: 409, UsageError: 400, Unauthorized: 401,
    Forbidden: 403, TooLarge: 413}
#: Inbound events authenticate with their workflow's own token, not the access token, and are
#: sent by other programs (no CSRF: a browser cannot send the bearer token cross-site).
_INBOUND = re.compile(r"^/api/workflows/[^/]+/topics/[^/]+/events$")
#: What a browser may load before signing in.
_OPEN_PATHS = frozenset({"/login", "/static/keepflow.css"})
#: The largest body a page form may post (its fields are a CSRF value, a path to go back to
#: and at most a few names): without a bound, anyone could post gigabytes to ``/login``.
FORM_BYTES = 64 * 1024


def _status_of(exc: KeepflowError) -> int:
    return next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)


def _refusal(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


#: Every refusal's body (docs/api.md#errors), as the published schema describes it.
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "field": {"type": "string", "description": "the field at fault, when there is one"}}}},
}


def _publish_error_shape(app: FastAPI) -> None:
    """FastAPI describes its 422 answers as ``{"detail": [...]}``; keepflow answers every
    refusal as ``{"error": {...}}`` (the ``invalid`` handler below): the schema says so."""
    made = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = made()
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("ValidationError", None)
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = ERROR_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(host: Host, loop: SchedulerLoop, *, token: str | None,
               lifespan_hooks: tuple[Callable[[], Awaitable[None]],
                                     Callable[[], Awaitable[None]]],
               ui: bool = True, stopping: Callable[[], bool] = lambda: False) -> FastAPI:
    """``token``: the access token every request must carry (None: loopback only)."""
    start, stop = lifespan_hooks
    guard = Guard(token)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await start()
        yield
        await stop()

    app = FastAPI(title="keepflow", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json")
    _publish_error_shape(app)

    def failed(request: Request, exc: KeepflowError) -> Response:
        status = _status_of(exc)
        if ui and not request.url.path.startswith("/api/") and request.url.path != "/metrics":
            from keepflow.web.pages import error_page

            return error_page(host, guard, request, exc, status)
        return JSONResponse({"error": exc.to_dict()}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Starlette's own refusals (no such route, wrong method) in keepflow's error shape."""
        known: dict[int, type[KeepflowError]] = {404: NotFound, 405: UsageError}
        cls = known.get(exc.status_code, KeepflowError)
        message = {404: f"there is nothing at {request.url.path} (docs/api.md)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        response = failed(request, cls(message))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """A query or path value of the wrong type, named like every other refusal."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        message = f"`{where}`: {first.get('msg', 'invalid value')}"
        response = failed(request, InvalidInput(message, field=where))
        response.status_code = 422
        return response

    @app.middleware("http")
    async def answer(request: Request,
                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await checks(request, call_next)
        # Answers hold tokens (a new inbound token), payloads and titles: no cache keeps them,
        # and none is read as anything but its declared type. Static files set their own.
        response.headers.setdefault("cache-control", "no-store")
        response.headers.setdefault("x-content-type-options", "nosniff")
        return response

    async def checks(request: Request,
                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.scope.get("path", "")
        inbound = request.method == "POST" and _INBOUND.match(path) is not None
        page = not path.startswith("/api/") and path != "/metrics"
        if token is None and not loopback_host(request.headers.get("host", "")):
            return _refusal("host", "this server answers only requests addressed to "
                            "127.0.0.1, localhost or [::1]; to serve other names, bind with an "
                            "access token (docs/security.md#the-api)", 403)
        if not inbound and path not in _OPEN_PATHS and not guard.authorized(
                request.headers.get("authorization", ""), request.cookies.get(SESSION_COOKIE)):
            if page and ui and request.method == "GET":
                from urllib.parse import quote

                return RedirectResponse(f"/login?next={quote(path, safe='/')}", 303)
            return _refusal("unauthorized", "missing or wrong access token; send it as "
                            "`Authorization: Bearer <token>` (docs/security.md#the-api)", 401)
        texts = [path, *request.query_params.keys(), *request.query_params.values()]
        if any(first_unstorable(t) is not None for t in texts):
            return _refusal("usage", "the request's path or query holds characters that are "
                            "not valid text (NUL or a lone surrogate)", 400)
        if request.method not in ("GET", "HEAD"):
            if not same_origin(request.headers.get("origin"), request.headers.get("host", "")):
                return _refusal("csrf", "this request comes from another site's page; state "
                                "changes are accepted only from keepflow's own pages", 403)
            if not page and not inbound and request.headers.get(CSRF_HEADER) != "1":
                return _refusal("csrf", f"state-changing requests need the header "
                                f"{CSRF_HEADER}: 1 (docs/api.md#requests)", 403)
            length = request.headers.get("content-length", "0")
            if page and ("transfer-encoding" in request.headers or not length.isdigit()
                         or int(length) > FORM_BYTES):
                return _refusal("too_large", f"a form may post at most {FORM_BYTES:,} bytes, "
                                "with a Content-Length", 413)
        try:
            return await call_next(request)
        except KeepflowError as exc:
            return failed(request, exc)

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
    app.include_router(metrics_router(host, loop))  # GET /metrics, not in the schema
    if ui:
        from keepflow.web.pages import pages

        app.include_router(pages(host, loop, guard, stopping))
    return app
