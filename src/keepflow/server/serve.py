"""``keepflow serve``: the long-running host (SPEC §7, §13).

One process: the store (migrated), recovery of unfinished runs (SPEC §5.5), the sandbox
worker pool, the scheduler loop and the HTTP API, until SIGINT/SIGTERM. Shutdown is graceful:
no new runs start, runs in progress get ``grace`` seconds to reach their next durable point
(backoff sleeps end at once), workers stop, leases are released; whatever did not finish
resumes on the next start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import uvicorn

from keepflow.errors import UsageError
from keepflow.model import WorkflowStatus
from keepflow.notifications import DELIVER_SECONDS, SWEEP_SECONDS, Notifier
from keepflow.runtime.host import Host
from keepflow.runtime.recovery import recover
from keepflow.scheduler.loop import SchedulerLoop, StoppableClock
from keepflow.server.client import find_server, remove_server_file, write_server_file
from keepflow.settings import Settings
from keepflow.terminal import dumps_json, visible
from keepflow.web.api import CarriedByLoop
from keepflow.web.app import create_app

log = logging.getLogger("keepflow")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    log_format: str = "text"  # text | json
    grace_seconds: float = 30.0
    status_every: float | None = None  # None: 2 s on a terminal, 60 s otherwise
    ui: bool = True  # the pages; the JSON API is always served


class JsonLines(logging.Formatter):
    """One JSON object per line. Field values (handler names, errors) come from scripts and
    servers: the text escapes every control and format character, the values stay exact
    (docs/security.md#terminal-output)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                                "level": record.levelname.lower(), "event": record.getMessage()}
        data.update(getattr(record, "fields", {}))
        return dumps_json(data, indent=None)


class TextLines(logging.Formatter):
    """``HH:MM:SS event key=value …`` for a person: every part shown visibly, and a value
    with a space, ``=`` or ``"`` quoted, so one field cannot forge another field or line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{_logfmt(k)}={_logfmt(v)}" for k, v in fields.items())
        return (f"{self.formatTime(record, '%H:%M:%S')} {visible(record.getMessage())} "
                f"{extra}").rstrip()


def _logfmt(value: object) -> str:
    text = visible(str(value))
    if text and not any(c in text for c in ' ="'):
        return text
    return '"' + text.replace('"', '\\"') + '"'  # unambiguous: visible() doubled backslashes


def _configure_logging(fmt: str, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines() if fmt == "json" else TextLines())
    root = logging.getLogger("keepflow")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _required_token(settings: Settings, bind: str, stream: TextIO) -> str | None:
    """The access token every request must carry, or None (loopback, no token set).

    The first start makes one in ``$KEEPFLOW_HOME/api-token`` and shows it this once; binding
    beyond loopback requires it (docs/security.md#the-api)."""
    made = None if settings.api_token else settings.make_access_token()
    if made is not None:
        _announce(stream, f"keepflow serve: made an access token (shown this once; kept in "
                          f"{settings.access_token_file}, readable only by you):\n  {made}\n")
    if settings.api_token or not _loopback(bind):
        token = settings.access_token()
        if not token:
            raise UsageError(f"binding to {bind} exposes the server beyond this machine and "
                             f"needs an access token, but {settings.access_token_file} is "
                             "empty or unreadable; remove it (a new one is made) or set "
                             "KEEPFLOW_API_TOKEN")
        return token
    return None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it every answer that goes out in two
    # writes (headers, then body) waits ~40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                         "--port (0 picks a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class StatusLine:
    """workflows active, runs/min, needs-action count — on the terminal, now and then."""

    def __init__(self, loop: SchedulerLoop, stream: TextIO, every: float | None) -> None:
        self.loop = loop
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every if every is not None else (2.0 if self.tty else 60.0)
        self._next = time.monotonic() + self.every
        self._gone = False

    def text(self) -> str:
        slots = self.loop.scheduler.slots.values()
        by = {s: sum(1 for x in slots if x.status is s) for s in WorkflowStatus}
        return (f"keepflow: {len(slots)} workflows ({by[WorkflowStatus.ACTIVE]} active, "
                f"{by[WorkflowStatus.NEEDS_ACTION]} need action, "
                f"{by[WorkflowStatus.PAUSED]} paused) · {self.loop.runs_per_minute()} runs/min"
                f" · {self.loop.scheduler.running()} running")

    def tick(self) -> None:
        if self._gone or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every
        try:
            if self.tty:  # keepflow's own control sequence: redraw the one status line
                self.stream.write("\r\x1b[2K" + self.text())
            else:
                self.stream.write(self.text() + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            # The reader went away (`keepflow serve 2>&1 | head`) or the stream was closed: a
            # status line is not worth ending the scheduler loop that calls this.
            self._gone = True


def _announce(stream: TextIO, text: str) -> None:
    """A line of keepflow's own; a reader that went away (`serve 2>&1 | head`) stops nothing."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


def serve(settings: Settings, options: ServeOptions, *, stream: TextIO = sys.stderr) -> int:
    _configure_logging(options.log_format, stream)
    running = find_server(settings)
    if running is not None:  # two hosts on one home would fight over serve.json and leases
        raise UsageError(f"a keepflow server already runs for {settings.home} (pid "
                         f"{running.pid}, {running.url}); stop it first, or give this one "
                         "another KEEPFLOW_HOME")
    token = _required_token(settings, options.host, stream)
    sock = _bind(options.host, options.port)
    port = sock.getsockname()[1]
    url = f"http://{options.host}:{port}"
    clock = StoppableClock()
    host = Host(settings, clock=clock, handoff=CarriedByLoop())
    notifier = Notifier(host.store, host.policies, clock.now)  # SPEC §12
    try:
        report = recover(host)
        for o in report.resumed:
            log.info("recovered", extra={"fields": {"run": o.run_id, "handler": o.handler,
                                                    "status": o.status.value}})
        loop = SchedulerLoop(host, concurrency=settings.run_concurrency)
        loop.scheduler.listeners.append(
            lambda event, fields: log.info(event, extra={"fields": fields}))
        loop.every(SWEEP_SECONDS, notifier.sweep, "notification sweep")
        loop.every(DELIVER_SECONDS, notifier.deliver, "notification webhooks")
        status = StatusLine(loop, stream, options.status_every)
        state: dict[str, Any] = {}

        async def start() -> None:
            import asyncio

            loop.start()
            state["task"] = asyncio.create_task(loop.run(status.tick), name="scheduler")
            if asked:  # a stop came before uvicorn listened for it
                server["s"].should_exit = True
            log.info("started", extra={"fields": {
                "url": url, "workflows": len(loop.scheduler.slots), "pid": os.getpid()}})

        async def stop() -> None:
            left = await loop.shutdown(options.grace_seconds)
            state["left"] = left
            task = state.get("task")
            if task is not None:
                task.cancel()
            log.info("stopped", extra={"fields": {"unfinished_runs": left}})

        server: dict[str, uvicorn.Server] = {}
        # uvicorn handles SIGINT/SIGTERM (graceful shutdown) once it serves, then re-raises
        # the signal to the handlers it found. Until then a signal is only noted, and start()
        # (which runs once uvicorn's own handlers are in place) stops at once: a stop asked for
        # right after "listening on" is never lost, and a clean stop exits 0.
        asked: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: asked.append(signum))
        app = create_app(host, loop, token=token, lifespan_hooks=(start, stop), ui=options.ui,
                         stopping=lambda: "s" in server and server["s"].should_exit)
        write_server_file(settings, url)
        _announce(stream, f"keepflow serve: listening on {url} (pid {os.getpid()})"
                          + (f"; open {url}/ in a browser" if options.ui else "") + "\n")
        config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=int(options.grace_seconds) + 5)
        server["s"] = uvicorn.Server(config)
        server["s"].run(sockets=[sock])
        left = int(state.get("left", 0))
        if left:
            # Runs stuck past the grace period: leave like a crash; recovery resumes them.
            _announce(stream, f"keepflow serve: {left} run(s) did not reach a durable point in "
                              f"{options.grace_seconds:g}s; they resume on the next start\n")
            remove_server_file(settings)
            os._exit(3)
        return 0
    finally:
        remove_server_file(settings)
        sock.close()
        notifier.close()
        host.close()
