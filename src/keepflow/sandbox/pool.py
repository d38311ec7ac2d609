"""The host's entry point to the sandbox: a pool of worker processes.

``invoke`` runs one handler in a fresh context inside a worker and turns every batch of ``ctx``
calls into :class:`HostCall` callbacks (SPEC §4, §5). The sandbox's own wall time is watched here,
excluding the time the host spends answering calls; a worker that overruns it is killed and
replaced, and so is one that dies. Several host threads may invoke at once; each gets its own
worker (idle ones are reused, more are started when none is free).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from keepflow.errors import InvalidResult, SandboxCrashed, SandboxLimitExceeded, ScriptError
from keepflow.sandbox import failures
from keepflow.sandbox.api import (
    HostCall,
    HostCallHandler,
    Invocation,
    InvocationResult,
    LogEntry,
    Resolve,
    SandboxLimits,
    Terminate,
)
from keepflow.sandbox.encoding import encode_for_js
from keepflow.sandbox.process import WorkerProcess
from keepflow.sandbox.protocol import ProtocolTimeout
from keepflow.storable import escape_deep, escape_text, first_unstorable, maybe_unstorable

MAX_LOG_ENTRIES = 1000
MAX_LOG_CHARS = 4096
_STOP_GRACE = 5.0  # seconds a worker gets to drop a context after terminate/abort


class _WallClock:
    """Sandbox wall time: only the intervals in which we wait for the worker count."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.used = 0.0

    def recv(self, proc: WorkerProcess) -> tuple[dict[str, Any], bytes]:
        start = time.monotonic()
        try:
            return proc.recv(start + max(0.0, self.budget - self.used))
        except ProtocolTimeout:
            proc.kill()
            raise SandboxLimitExceeded(
                f"the sandbox ran longer than its wall-time limit of {self.budget:g}s "
                "(time spent in host calls not counted)",
                limit="wall",
            ) from None
        finally:
            self.used += time.monotonic() - start


def _limits_dict(limits: SandboxLimits) -> dict[str, Any]:
    return {
        "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_bytes,
        "stack_bytes": limits.stack_bytes,
        "max_jobs": limits.max_jobs,
    }


class _Run:
    """The state of one invocation on the host side."""

    def __init__(self, inv: Invocation, on_log: Callable[[LogEntry], None] | None) -> None:
        self.inv = inv
        self.on_log = on_log
        self.logs: list[LogEntry] = []
        self.wall = _WallClock(inv.limits.wall_seconds)
        self.host_calls = 0
        self.cpu = 0.0
        self.jobs = 0

    def log(self, entry: LogEntry) -> None:
        self.logs.append(entry)
        if self.on_log is not None:
            self.on_log(entry)

    def warn(self, messages: list[str]) -> None:
        for message in messages:
            self.log(LogEntry(level="warn", message=message, at=time.time()))

    def absorb(self, header: dict[str, Any], body: dict[str, Any]) -> None:
        self.cpu = float(header.get("cpu", self.cpu))
        self.jobs = int(header.get("jobs", self.jobs))
        for e in body.get("logs", ()):
            # Human text: an unstorable character is written out visibly, never refused.
            self.log(LogEntry(level=e["level"], message=escape_text(e["message"]),
                              at=float(e["at"])))

    def result(self, outcome: Any, **fields: Any) -> InvocationResult:
        return InvocationResult(
            outcome=outcome, logs=self.logs, cpu_seconds=self.cpu,
            wall_seconds=self.wall.used, jobs=self.jobs, host_calls=self.host_calls, **fields,
        )


def _check_source(source: str) -> None:
    """The engine takes C strings: a NUL would silently cut the script short."""
    if "\x00" in source:
        line = source.count("\n", 0, source.index("\x00")) + 1
        raise ScriptError("the script contains a NUL character", js_name="SyntaxError",
                          line=line)
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = source.count("\n", 0, exc.start) + 1
        raise ScriptError("the script is not valid Unicode (a lone surrogate)",
                          js_name="SyntaxError", line=line) from None


def _host_call(c: dict[str, Any]) -> HostCall:
    return HostCall(
        seq=int(c["seq"]), target=c["target"], args=tuple(c["args"]),
        connection=c.get("connection"), tool=c.get("tool"),
    )


def _check_call(call: HostCall) -> None:
    """Refuse a call whose arguments hold text the host cannot store: nothing of it is
    performed, declared or recorded (docs/security.md#text-the-host-can-store)."""
    for i, arg in enumerate(call.args):
        bad = first_unstorable(arg)
        if bad is not None:
            raise InvalidResult(bad.describe(f"{call.display}() argument {i + 1}"))


class SandboxPool:
    """Worker processes running untrusted workflow scripts (context manager)."""

    def __init__(
        self,
        size: int = 2,
        *,
        python: str | None = None,
        startup_timeout: float = 30.0,
        max_invocations_per_worker: int = 1000,
    ) -> None:
        self.size = size
        self._python = python
        self._startup_timeout = startup_timeout
        self._max_invocations = max_invocations_per_worker
        self._lock = threading.Lock()
        self._idle: list[WorkerProcess] = []
        self._all: set[WorkerProcess] = set()
        self._closed = False
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="keepflow-sandbox-spawner")
        for _ in range(size):
            self._idle.append(self._spawn())

    # ------------------------------------------------------------------ workers
    def _spawn(self) -> WorkerProcess:
        proc = self._spawner.submit(WorkerProcess, self._python).result()
        with self._lock:
            self._all.add(proc)
        return proc

    def _acquire(self) -> WorkerProcess:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the sandbox pool is closed")
                proc = self._idle.pop() if self._idle else None
            if proc is None:
                proc = self._spawn()
            if proc.alive():
                try:
                    proc.wait_ready(self._startup_timeout)
                except BaseException:
                    self._discard(proc)
                    raise
                return proc
            self._discard(proc)  # died while idle: not this invocation's fault

    def _release(self, proc: WorkerProcess) -> None:
        proc.invocations += 1
        keep = (
            proc.in_sync and not proc.retire and proc.alive()
            and proc.invocations < self._max_invocations
        )
        with self._lock:
            if keep and not self._closed and len(self._idle) < self.size:
                self._idle.append(proc)
                return
        self._discard(proc)

    def _discard(self, proc: WorkerProcess) -> None:
        with self._lock:
            self._all.discard(proc)
        if proc.in_sync:
            proc.close()
        else:
            proc.kill()

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(p.pid for p in self._all)

    # ------------------------------------------------------------------ invoke
    def invoke(
        self,
        inv: Invocation,
        on_call: HostCallHandler,
        on_log: Callable[[LogEntry], None] | None = None,
    ) -> InvocationResult:
        """Run one handler (SPEC §4, §5). Errors carry the logs so far as ``exc.logs``."""
        run = _Run(inv, on_log)
        try:
            _check_source(inv.source)
            proc = self._acquire()
        except BaseException as exc:
            exc.logs = run.logs  # type: ignore[attr-defined]
            raise
        try:
            return self._invoke_on(proc, run, on_call)
        except BaseException as exc:
            exc.logs = run.logs  # type: ignore[attr-defined]
            raise
        finally:
            self._release(proc)

    def _invoke_on(
        self, proc: WorkerProcess, run: _Run, on_call: HostCallHandler
    ) -> InvocationResult:
        inv = run.inv
        limits = inv.limits
        args, warnings = encode_for_js(list(inv.args), "the handler's arguments",
                                       limits.max_message_bytes)
        run.warn(warnings)
        spec = {
            "handler": list(inv.handler),
            "undefinedArgs": sorted(inv.undefined_args),
            "connections": {k: list(v) for k, v in inv.connections.items()},
            "terminal": {k: list(v) for k, v in inv.terminal.items()},
            "maxHostCalls": limits.max_host_calls,
            "maxMessage": limits.max_message_bytes,
            "maxLogs": MAX_LOG_ENTRIES,
            "maxLogChars": MAX_LOG_CHARS,
        }
        proc.send({"op": "invoke", "spec": spec, "limits": _limits_dict(limits)},
                  inv.source, args)
        while True:
            header, payload = run.wall.recv(proc)
            # The sandbox boundary (docs/security.md#text-the-host-can-store): JSON.stringify
            # writes a lone surrogate or NUL only as an escape, so text without one needs no
            # walk; otherwise each value is checked before the host uses it.
            suspicious = maybe_unstorable(payload)
            body = json.loads(payload) if payload else {}
            run.absorb(header, body)
            proc.retire = proc.retire or bool(header.get("retire"))
            kind = header.get("type")
            if kind == "calls":
                calls = [_host_call(c) for c in body["calls"]]
                run.host_calls += len(calls)
                replies = self._answer(proc, run, calls, on_call, check=suspicious)
                if isinstance(replies, InvocationResult):
                    return replies
                proc.send({"op": "replies"}, replies)
            elif kind == "result":
                proc.in_sync = True
                value = body.get("value")
                bad = first_unstorable(value) if suspicious else None
                if bad is not None:
                    raise InvalidResult(bad.describe("the handler's return value"))
                return run.result(
                    "returned", value=value, returned_undefined=bool(body.get("undefined")),
                )
            elif kind == "error":
                proc.in_sync = True
                raise failures.from_wire(escape_deep(header["error"]))
            else:
                proc.kill()
                raise SandboxCrashed(f"the sandbox worker sent an unexpected {kind!r} frame")

    def _answer(
        self, proc: WorkerProcess, run: _Run, calls: list[HostCall], on_call: HostCallHandler,
        *, check: bool,
    ) -> bytes | InvocationResult:
        """Ask the host about each call in order; stop at a Terminate (SPEC §5.2)."""
        parts: list[bytes] = []
        try:
            for i, call in enumerate(calls):
                if check:
                    _check_call(call)
                reply = on_call(call)
                if isinstance(reply, Terminate):
                    self._stop(proc, run, "terminate")
                    return run.result("terminated", after_terminal=calls[i + 1 :])
                if not isinstance(reply, Resolve):
                    raise TypeError(f"on_call returned {reply!r}, not Resolve or Terminate")
                data, warnings = encode_for_js(
                    reply.value, f"the reply to {call.display} (#{call.seq})",
                    run.inv.limits.max_message_bytes,
                )
                run.warn(warnings)
                parts.append(b"[%d,%s]" % (call.seq, data))
        except BaseException:
            # The host refused (phase violation, connector failure, ...): the script never
            # learns about it; its context is dropped and the same error object re-raised.
            self._stop(proc, run, "abort")
            raise
        return b"[" + b",".join(parts) + b"]"

    def _stop(self, proc: WorkerProcess, run: _Run, op: str) -> None:
        """Tell the worker to drop the context unsettled; a worker that can't is killed."""
        try:
            proc.send({"op": op})
            header, _ = proc.recv(time.monotonic() + _STOP_GRACE)
        except (SandboxCrashed, ProtocolTimeout):
            proc.kill()
            return
        if header.get("type") == "idle":
            proc.in_sync = True
        else:
            proc.kill()

    # ------------------------------------------------------------------ describe
    def describe(self, source: str, limits: SandboxLimits | None = None) -> dict[str, Any]:
        """Load ``source`` and return the manifest of its workflow definition (SPEC §2, §11.3).

        Raises ScriptError for a syntax error (with line/column) or a top-level throw.
        """
        limits = limits or SandboxLimits()
        _check_source(source)
        proc = self._acquire()
        try:
            wall = _WallClock(limits.wall_seconds)
            proc.send({"op": "describe", "limits": _limits_dict(limits)}, source)
            header, payload = wall.recv(proc)
            proc.in_sync = True
            proc.retire = proc.retire or bool(header.get("retire"))
            if header.get("type") == "error":
                raise failures.from_wire(escape_deep(header["error"]))
            # Names that are not valid text are shown escaped; the load-time rules refuse them.
            manifest: dict[str, Any] = escape_deep(json.loads(payload)["value"])
            return manifest
        finally:
            self._release(proc)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop every worker: idle ones exit, busy ones are killed (their callers see a crash)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = [p for p in self._all if p not in idle]
            self._all.clear()
        for proc in idle:
            proc.close()
        for proc in busy:
            proc.popen.kill()
        self._spawner.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
