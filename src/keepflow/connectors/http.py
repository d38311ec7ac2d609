"""The ``http`` connector: plain HTTP(S) requests with idempotency keys (SPEC §9).

Reads (``get``, ``head``) and mutations (``post``, ``put``, ``patch``, ``delete``) on one pooled
``httpx.Client`` per connection. Every mutation carries ``Idempotency-Key: <key>`` (the ledger's
key, SPEC §6), so a server that honours the header deduplicates a re-sent request by itself.

A mutation can be verified only if the script says how: ``reconcile: {url}``, a URL that
answers 2xx when the request with ``{idempotencyKey}`` took effect and 404 when it did not.
Without it the outcome of an uncertain mutation cannot be checked (``can_reconcile`` is
false) and the host escalates it (SPEC §6 step 4).

Settings: ``base_url`` (relative ``url``s are appended to it; absolute ones must stay on its
origin so configured credentials never reach another host), ``headers`` (sent on every
request; put credentials in ``headers_env``), ``verify`` (TLS: bool or CA bundle path),
``proxy``, ``allow`` (the exact origins this connection may reach besides its ``base_url``).
Environment proxies and ``.netrc`` are ignored on purpose (``trust_env=False``).

Scripts are untrusted and so is every server: without ``allow`` a connection reaches only
public addresses, checked on the address actually connected to, for every request and every
redirect hop (:mod:`keepflow.connectors.http_egress`); every byte that comes back is redacted
before it is cut to a size limit (:class:`~keepflow.connectors.secret.Redactor`). A server
also controls its pace and its encodings: the whole exchange ends by the call's deadline
(:mod:`keepflow.connectors.http_transport`), a body is bounded while it is decoded and its
charset cannot make decoding fail (:mod:`keepflow.connectors.http_body`), and once the status
is known nothing can make the outcome uncertain (:func:`~keepflow.connectors.http_classify.
settle`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.http_body import ACCEPT_ENCODING, read_body
from keepflow.connectors.http_classify import settle, transport_error
from keepflow.connectors.http_egress import (
    EgressPolicy,
    EgressRefused,
    Origin,
    Resolver,
    system_resolver,
)
from keepflow.connectors.http_settings import (
    CREDENTIAL_HEADERS,
    HTTP_LOGGERS,
    RESERVED_HEADERS,
    TOKEN,
    RedactingLogFilter,
    allowed_origins,
    check_settings,
)
from keepflow.connectors.http_transport import (
    GuardedTransport,
    deadline_in,
    remaining,
    resolve_within,
)
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret, reveal, secret_values
from keepflow.errors import ConnectorError, PermanentError, PermissionDenied

_METHODS = {"get": "GET", "head": "HEAD", "post": "POST", "put": "PUT", "patch": "PATCH",
            "delete": "DELETE"}
_PARAMS = frozenset({"url", "headers", "json", "body", "query", "timeout", "reconcile"})
KEY_PLACEHOLDER = "{idempotencyKey}"
CONNECT_TIMEOUT = 10.0
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_httpx_log = logging.getLogger("httpx")
log = logging.getLogger("keepflow.connectors.http")


_RESULT = "{status, headers, json} for a JSON answer, else {status, headers, text}"


def _read(name: str, description: str) -> ToolSpec:
    return ToolSpec(name, ToolKind.READ, "http.read", RiskTier.LOW, description, ("host",),
                    params="{url, headers?, query?, timeout?}", result=_RESULT)


def _write(name: str, description: str) -> ToolSpec:
    return ToolSpec(name, ToolKind.MUTATE, "http.write", RiskTier.MEDIUM, description,
                    ("host",), reconcile=True, reconcile_param="reconcile",
                    reconcile_doc="docs/connectors.md#http-reconcile",
                    params="{url, json? | body?, headers?, query?, timeout?, reconcile?: {url, "
                           "method?}}", result=_RESULT,
                    reconcile_strategy="only with params.reconcile: GET the URL naming the "
                                       "idempotency key; 2xx = applied, 404 = not applied")


@dataclass(frozen=True)
class _Request:
    method: str
    url: httpx.URL
    headers: dict[str, str]
    query: dict[str, Any] | None
    json: Any
    has_json: bool
    body: str | None
    timeout: float
    reconcile_url: str | None  # template with {idempotencyKey}


class HttpConnector(Connector):
    """Type ``http``. See the module docstring and ``docs/connectors.md``."""

    type_name: ClassVar[str] = "http"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "get": _read("get", "GET a URL; any status except 401/403/408/429/5xx is data"),
        "head": _read("head", "HEAD a URL"),
        "post": _write("post", "POST to a URL with an Idempotency-Key"),
        "put": _write("put", "PUT to a URL with an Idempotency-Key"),
        "patch": _write("patch", "PATCH a URL with an Idempotency-Key"),
        "delete": _write("delete", "DELETE a URL with an Idempotency-Key"),
    }

    def __init__(self, config: ConnectionConfig, *, resolver: Resolver | None = None) -> None:
        """``resolver`` replaces the system's DNS lookup (tests of the egress policy)."""
        super().__init__(config)
        self.validate_settings(config.settings)
        settings = config.settings
        base = settings.get("base_url")
        self._base_is_secret = isinstance(base, Secret)
        self._base = httpx.URL(reveal(base)) if base is not None else None
        self._headers = {str(k): reveal(v) for k, v in settings.get("headers", {}).items()}
        # A secret base_url is usually secret for its path (a webhook token): mask that too.
        secrets = secret_values(settings)
        if self._base is not None and self._base_is_secret:
            secrets.append(self._base.path)
        self._redact = Redactor(secrets)
        proxy = reveal(settings.get("proxy"))
        # docs/security.md#network-egress: configured origins are reachable, others only if
        # public; with `allow`, only the configured ones.
        explicit = allowed_origins(settings)
        if self._base is not None:
            explicit.append(Origin.of(self._base))
        # docs/connectors.md#http-deadline: a name lookup ends with the call, too.
        self._egress = EgressPolicy(
            explicit=explicit, restricted="allow" in settings,
            proxy=Origin.of(httpx.URL(proxy)) if proxy is not None else None,
            resolver=resolve_within(resolver or system_resolver))
        self._transport = GuardedTransport(self._egress, verify=settings.get("verify", True),
                                           proxy=proxy)
        # The client only builds requests; _send hands them to the transport itself, so no
        # hidden logic runs on a server's answer: redirects are followed hop by hop there
        # (httpx would parse a hostile Location even when not following it), and nothing
        # is kept between calls (no cookie jar: one server's Set-Cookie must not ride along
        # on the requests of every other workflow that uses this connection).
        self._client = httpx.Client(
            transport=self._transport,
            trust_env=False,
            follow_redirects=False,
            # Only codings read_body can decode within its bound (a gzip bomb cannot).
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        )
        # httpx logs every request URL at INFO, httpcore response headers at DEBUG: a secret
        # base_url (a webhook) or an echoed token must not leak there.
        self._log_filter = RedactingLogFilter(self._redact) if self._redact else None
        if self._log_filter is not None:
            for logger in HTTP_LOGGERS:
                logging.getLogger(logger).addFilter(self._log_filter)

    def __repr__(self) -> str:
        return f"HttpConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        check_settings(settings)

    # -- declarations ------------------------------------------------------------------------

    def can_reconcile(self, call: ToolCall) -> bool:
        return self.tool(call.tool).reconcile and isinstance(call.params.get("reconcile"),
                                                             Mapping)

    def describe(self, call: ToolCall) -> str:
        method = _METHODS.get(call.tool, call.tool.upper())
        try:
            url = self._resolve(call.params.get("url"), "url")
        except PermanentError:
            return f"{self.name}.{call.tool} (invalid url)"
        return f"{method} {self._display(url)}"

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        req = self._parse(call)
        mutate = self.tool(call.tool).kind is ToolKind.MUTATE
        configured = {name.lower() for name in self._headers}
        headers = {k: v for k, v in req.headers.items() if k.lower() not in configured}
        headers.update(self._headers)  # configured headers win, whatever the case
        if mutate:
            if not call.idempotency_key:
                raise PermanentError(f"{self.name}.{call.tool}: a mutation needs an "
                                     "idempotency key (host bug)")
            headers["Idempotency-Key"] = call.idempotency_key
        return self._exchange(req, headers, mutate=mutate)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """GET ``reconcile.url`` with the key filled in: 2xx applied, 404 failed, else retry."""
        req = self._parse(call)
        if req.reconcile_url is None or not call.idempotency_key:
            raise NotImplementedError(f"{self.name}.{call.tool} has no reconcile url")
        url = self._resolve(
            req.reconcile_url.replace(KEY_PLACEHOLDER, quote(call.idempotency_key, safe="")),
            "reconcile.url",
        )
        probe = _Request("GET", url, {}, None, None, False, None, req.timeout, None)
        try:
            result = self._exchange(probe, dict(self._headers), mutate=False, raw=True)
        except PermanentError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)
        except ConnectorError as exc:  # transient, auth, permission, ...
            return ReconcileResult(ReconcileOutcome.RETRY, detail=self._redact.text(str(exc)))
        status = result["status"]
        where = f"GET {self._display(url)}"
        if 200 <= status < 300:
            return ReconcileResult(ReconcileOutcome.APPLIED, result, f"{where} -> {status}")
        if status == 404:
            return ReconcileResult(ReconcileOutcome.FAILED, None, f"{where} -> 404")
        return ReconcileResult(ReconcileOutcome.RETRY, None, f"{where} -> {status}")

    def close(self) -> None:
        self._client.close()
        if self._log_filter is not None:
            for logger in HTTP_LOGGERS:
                logging.getLogger(logger).removeFilter(self._log_filter)

    # -- for connectors built on HTTP (feed): this connection's egress, redirects, deadline,
    # -- body bounds and redaction, without a second HTTP stack ------------------------------

    def resolve(self, raw: Any, field: str) -> httpx.URL:
        """``raw`` as an absolute URL this connection may be asked for (PermanentError)."""
        return self._resolve(raw, field)

    def display(self, url: httpx.URL) -> str:
        """``url`` for messages (no query, secrets masked)."""
        return self._display(url)

    @property
    def redactor(self) -> Redactor:
        """Masks this connection's secrets in whatever a server sends back."""
        return self._redact

    def fetch(self, url: httpx.URL, headers: Mapping[str, str], timeout: float
              ) -> tuple[httpx.Response, bytes, bool]:
        """GET ``url`` as a read: ``headers`` under the configured ones (which win), redirects
        followed and checked, everything ended by ``timeout``. Returns the (closed) response,
        its body as far as it was read, and whether the body was cut."""
        configured = {name.lower() for name in self._headers}
        sent = {k: v for k, v in headers.items() if k.lower() not in configured}
        sent.update(self._headers)
        what = f"GET {self._display(url)}"
        try:
            request = self._client.build_request(
                "GET", url, headers=sent,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))
        except (ValueError, TypeError, UnicodeError, httpx.InvalidURL) as exc:
            raise PermanentError(f"{what}: the request could not be built "
                                 f"({type(exc).__name__}); nothing was sent",
                                 sent=False) from None
        with deadline_in(timeout):
            response = self._send(request, sent, what, mutate=False, deadline=timeout)
            try:
                body, cut = read_body(response)
            except Exception as exc:  # a bug, never the server's say: the status decides
                log.warning("the body of %s could not be read (%s)", what, type(exc).__name__)
                body, cut = b"", True
            finally:
                response.close()
        return response, body, cut

    # -- internals ---------------------------------------------------------------------------

    def _exchange(self, req: _Request, headers: dict[str, str], *, mutate: bool,
                  raw: bool = False) -> dict[str, Any]:
        what = f"{req.method} {self._display(req.url)}"
        kwargs: dict[str, Any] = {}
        try:
            if req.has_json:
                kwargs["json"] = req.json
            elif req.body is not None:
                kwargs["content"] = req.body.encode()
            request = self._client.build_request(
                req.method, req.url, headers=headers, params=req.query,
                timeout=httpx.Timeout(req.timeout, connect=min(req.timeout, CONNECT_TIMEOUT)),
                **kwargs,
            )
        except (ValueError, TypeError, UnicodeError, httpx.InvalidURL) as exc:
            # Nothing has left this process: a definite failure, never "did it happen?".
            raise PermanentError(
                f"{what}: the request could not be built ({type(exc).__name__}: "
                f"{self._redact.text(str(exc))}); nothing was sent", sent=False) from None
        # docs/connectors.md#http-deadline: connecting, TLS, 1xx answers, headers, every
        # redirect hop and the body all end by the call's deadline.
        with deadline_in(req.timeout):
            response = self._send(request, headers, what, mutate=mutate,
                                  deadline=req.timeout)
            # The status is known from here on: nothing below may make the outcome
            # uncertain (SPEC §6). A body that breaks off is returned as far as it got.
            try:
                body, truncated = read_body(response)
            except Exception as exc:  # a bug, never the server's say: the status decides
                log.warning("the body of %s could not be read (%s); only its status is kept",
                            what, type(exc).__name__)
                body, truncated = b"", True
            finally:
                response.close()
        # Redacted before anything is cut to a limit (the result, the error snippet).
        result, error = settle(response, body, truncated, mutate=mutate, what=what,
                               redact=self._redact)
        if raw or error is None:
            return result
        raise error

    def _send(self, request: httpx.Request, headers: dict[str, str], what: str, *,
              mutate: bool, deadline: float) -> httpx.Response:
        """Send ``request``; a read follows up to :data:`MAX_REDIRECTS` redirects, each hop
        checked like a new request (egress, a valid URL) and its body never read."""
        for _hop in range(MAX_REDIRECTS + 1):
            self._strip_credentials_off_origin(request)
            try:
                response = self._transport.handle_request(request)
            except EgressRefused as exc:
                raise self._refused(what, exc) from None
            except httpx.HTTPError as exc:
                raise transport_error(exc, mutate=mutate, what=what, redact=self._redact.text,
                                      deadline=deadline) from None
            response.request = request
            # The line httpx's client would log (its logger carries our RedactingLogFilter).
            _httpx_log.info('HTTP Request: %s %s "%s %d %s"', request.method, request.url,
                            response.http_version, response.status_code,
                            response.reason_phrase)
            if mutate or response.status_code not in _REDIRECTS or \
                    "location" not in response.headers:
                return response
            response.close()
            request = self._redirect(request, headers, response.headers["location"], what)
        raise PermanentError(f"{what}: more than {MAX_REDIRECTS} redirects; the last one was "
                             "not followed", sent=False)

    def _redirect(self, request: httpx.Request, headers: dict[str, str], location: str,
                  what: str) -> httpx.Request:
        """The next hop of a read (RFC 9110 §15.4), or a definite failure if a server's
        ``Location`` is no URL we can follow."""
        url: httpx.URL | None
        try:
            url = request.url.join(location)
            url.host  # noqa: B018 - decodes the IDNA name: "xn--localhost" raises here
        except (httpx.InvalidURL, UnicodeError, ValueError):  # e.g. control characters
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.raw_host or \
                url.userinfo:
            shown, _ = self._redact.cut(location, 200)
            raise PermanentError(
                f"{what}: the server redirected to {shown!a}, which is not a valid "
                "http(s) URL without credentials; it was not followed "
                "(docs/connectors.md#http-failure-classification)", sent=False)
        hop = dict(headers)
        if _origin(url) != _origin(request.url):  # credentials never follow a redirect away
            hop = {k: v for k, v in hop.items() if k.lower() not in CREDENTIAL_HEADERS}
        # The socket operations obey the deadline by themselves; waiting for a free pooled
        # connection does not, so its timeout shrinks to what is left.
        timeout = dict(request.extensions.get("timeout", {}))
        left = remaining()
        if left is not None:
            pool = timeout.get("pool")
            timeout["pool"] = max(0.0, left if pool is None else min(pool, left))
        return self._client.build_request(request.method, url, headers=hop,
                                          extensions={"timeout": timeout})

    def _refused(self, what: str, exc: EgressRefused) -> PermissionDenied:
        """SPEC §8 ``permission``: definite, nothing was sent (the ledger records ``failed``)."""
        origin = self._redact.text(exc.origin)
        message = self._redact.text(f"{what}: refused {exc.origin} before sending anything: "
                                    f"{exc.detail}; {self._egress.advice(self.name, exc)}")
        return PermissionDenied(message, sent=False, refused=exc.refused, destination=origin)

    def _parse(self, call: ToolCall) -> _Request:
        """Check the params (SPEC §6: malformed calls are rejected before ``in_flight``)."""
        p = call.params
        tool = call.tool
        self.tool(tool)
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{tool}: params must be an object")
        unknown = sorted(set(p) - _PARAMS)
        if unknown:
            raise _bad(self, tool, unknown[0], f"unknown parameter; known: {sorted(_PARAMS)}")
        mutate = self.tool(tool).kind is ToolKind.MUTATE
        url = self._resolve(p.get("url"), "url")
        headers = p.get("headers", {})
        if not isinstance(headers, Mapping):
            raise _bad(self, tool, "headers", "must be an object of strings")
        for name, value in headers.items():
            if not isinstance(value, str):
                raise _bad(self, tool, f"headers.{name}", "header values must be strings")
            if not TOKEN.match(str(name)) or str(name).lower() in RESERVED_HEADERS:
                raise _bad(self, tool, f"headers.{name}", "this header cannot be set")
        has_json = "json" in p
        body = p.get("body")
        if has_json and body is not None:
            raise _bad(self, tool, "json", "give either json or body, not both")
        if body is not None and not isinstance(body, str):
            raise _bad(self, tool, "body", "must be a string (use json for objects)")
        if tool in ("get", "head") and (has_json or body is not None):
            raise _bad(self, tool, "json" if has_json else "body", f"{tool} takes no body")
        query = p.get("query")
        if query is not None:
            if not isinstance(query, Mapping):
                raise _bad(self, tool, "query", "must be an object")
            for k, v in query.items():
                items = v if isinstance(v, list) else [v]
                if not all(isinstance(i, (str, int, float, bool)) for i in items):
                    raise _bad(self, tool, f"query.{k}", "values must be strings or numbers")
        timeout = call.timeout
        if "timeout" in p:
            t = p["timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or \
                    not math.isfinite(t):
                raise _bad(self, tool, "timeout", "must be a positive number of seconds")
            timeout = min(float(t), call.timeout)
        reconcile_url = None
        if "reconcile" in p:
            reconcile_url = self._parse_reconcile(tool, p["reconcile"], mutate)
        return _Request(_METHODS[tool], url, {str(k): v for k, v in headers.items()},
                        dict(query) if query is not None else None, p.get("json"), has_json,
                        body, timeout, reconcile_url)

    def _parse_reconcile(self, tool: str, spec: Any, mutate: bool) -> str:
        if not mutate:
            raise _bad(self, tool, "reconcile", "only mutations reconcile")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("url"), str):
            raise _bad(self, tool, "reconcile", "must be {url, method?: 'GET'}")
        extra = sorted(set(spec) - {"url", "method"})
        if extra:
            raise _bad(self, tool, f"reconcile.{extra[0]}", "unknown parameter")
        if str(spec.get("method", "GET")).upper() != "GET":
            raise _bad(self, tool, "reconcile.method", "only GET is supported")
        template: str = spec["url"]
        self._resolve(template.replace(KEY_PLACEHOLDER, "key"), "reconcile.url")
        return template

    def _resolve(self, raw: Any, field: str) -> httpx.URL:
        """An absolute URL for ``raw``: relative ones are appended to ``base_url``."""
        if not isinstance(raw, str) or (not raw and self._base is None):
            raise PermanentError(f"{self.name}: {field} is required and must be a string",
                                 field=field)
        if not raw and self._base is not None:
            return self._base  # "" means the base_url itself (e.g. a webhook URL)
        try:
            url = httpx.URL(raw)
            url.host  # noqa: B018 - decodes an IDNA name: "xn--localhost" raises here
        except (httpx.InvalidURL, UnicodeError, ValueError):
            raise PermanentError(
                f"{self.name}: {field} is not a valid URL (a host name in IDNA form must "
                "decode; see docs/connectors.md#http)", field=field) from None
        if url.is_absolute_url:
            if url.scheme not in ("http", "https") or not url.raw_host:
                raise PermanentError(f"{self.name}: {field} must be an http(s) URL", field=field)
            if url.userinfo:
                raise PermanentError(f"{self.name}: {field} must not contain credentials",
                                     field=field)
            if self._base is not None and _origin(url) != _origin(self._base):
                raise PermanentError(
                    f"{self.name}: {field} must be relative to the connection's base_url "
                    f"({self._display(self._base)}) or on the same origin", field=field)
            return url
        if url.host or raw.startswith("//"):
            raise PermanentError(f"{self.name}: {field} has no scheme", field=field)
        if self._base is None:
            raise PermanentError(f"{self.name}: {field} must be an absolute http(s) URL "
                                 "(the connection has no base_url)", field=field)
        if ".." in url.path.split("/"):
            raise PermanentError(f"{self.name}: {field} must not contain '..'", field=field)
        return httpx.URL(str(self._base).rstrip("/") + "/" + raw.lstrip("/"))

    def _display(self, url: httpx.URL) -> str:
        """The URL for messages: no query (it may carry tokens), no path of a secret base, and
        the path as sent — percent-encoded, so a script's control characters stay inert in
        the ledger, approvals and escalations."""
        origin = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
        if self._base_is_secret:
            return f"{origin}/…"
        path = url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
        return self._redact.text(origin + path)

    def _strip_credentials_off_origin(self, request: httpx.Request) -> None:
        """Redirects of reads may leave the base origin: configured headers stay behind."""
        if self._base is not None and _origin(request.url) != _origin(self._base):
            for name in self._headers:
                request.headers.pop(name, None)


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.raw_host, url.port or default


def _bad(connector: Connector, tool: str, field: str, problem: str) -> PermanentError:
    return PermanentError(f"{connector.name}.{tool}: params.{field}: {problem}", field=field)


register_connector(HttpConnector)
