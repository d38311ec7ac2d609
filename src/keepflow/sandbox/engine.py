"""The engine driver: one fresh QuickJS context per invocation (SPEC §2), inside a worker.

A :class:`Session` owns a context for exactly one invocation or one ``describe``: it sets the
limits, evaluates the prelude and the user's module, and runs microtasks under a CPU budget that
spans the whole invocation. The binding restarts its CPU clock at every entry into JS, so the
session tracks the invocation's total itself (``time.process_time``) and hands the engine only
what is left before each entry; the engine's interrupt cannot be caught by the script.

Only strings cross into JS (the binding corrupts integers above int32), and every string coming
out is JSON produced by the prelude.
"""

from __future__ import annotations

import importlib.resources
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import quickjs

from keepflow.sandbox import failures
from keepflow.sandbox.native import DISPATCH_GLOBAL, EngineHooks

PRELUDE = importlib.resources.files("keepflow.sandbox").joinpath("prelude.js").read_text("utf-8")
#: The worker's JS thread has a 64 MiB stack; the engine's own guard must stay well inside it.
MAX_STACK_BYTES = 32 * 1024 * 1024
#: The cached prelude starts at this line: any stack position beyond the user's script is ours.
#: (A script this long falls back to evaluating the prelude right after its last line.)
PRELUDE_FIRST_LINE = 1_000_001
_TAKE_DISPATCH = (
    f"(() => {{ const d = globalThis.{DISPATCH_GLOBAL}; delete globalThis.{DISPATCH_GLOBAL};"
    " return d; })()"
)
#: Extra heap granted to the prelude after an out-of-memory, so it can still hand over logs.
_RESCUE_HEAP = 16 * 1024 * 1024

_FATAL_KINDS: dict[str, tuple[str, str | None]] = {
    "invalid_args": ("InvalidResult", None),
    "invalid_result": ("InvalidResult", None),
    "host_calls": ("SandboxLimitExceeded", "host_calls"),
    "size": ("SandboxLimitExceeded", "size"),
    "never_settled": ("NeverSettled", None),
    "definition": ("WorkflowDefinitionError", None),
}


class EngineFailure(Exception):
    """Ends the session with a failure, described for the wire (see :mod:`.failures`)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


@dataclass(frozen=True)
class Poll:
    """What the prelude reported: a small parsed header and the JSON payload, untouched."""

    header: dict[str, Any]
    payload: str

    @property
    def state(self) -> str:
        return str(self.header["state"])

    @property
    def calls(self) -> int:
        return int(self.header["calls"])


class Session:
    """A fresh context with the prelude and the user's module loaded (SPEC §2)."""

    def __init__(self, source: str, limits: dict[str, Any], hooks: EngineHooks) -> None:
        self.user_lines = source.count("\n") + 1
        self.started = time.process_time()
        self.deadline = self.started + float(limits["cpu_seconds"])
        self.max_jobs = int(limits["max_jobs"])
        self.memory = int(limits["memory_bytes"])
        self.jobs = 0
        self._hooks = hooks
        self._token = secrets.token_hex(16)
        self._ctx: Any = quickjs.Context()
        self._ctx.set_memory_limit(self.memory)
        self._ctx.set_max_stack_size(min(int(limits["stack_bytes"]), MAX_STACK_BYTES))
        self._bridge: Any = None
        try:
            self._bridge = self._load_prelude()
            self._call("init", str(self.user_lines))
            if hooks.available:
                hooks.attach(self._ctx, self._call("recorder"))
            module_promise = self._enter(self._ctx.module, source)
            self._call("watch", module_promise)
            del module_promise
            self.drain()
        except BaseException:
            self.close()
            raise

    def _load_prelude(self) -> Any:
        # The prelude starts after the user's last line, so a stack position tells whose code
        # it is in (the binding names both sources "<input>").
        if self.user_lines < PRELUDE_FIRST_LINE and self._hooks.load_prelude(self._ctx):
            return self._ctx.eval(_TAKE_DISPATCH)  # before any user code exists
        return self._enter(self._ctx.eval, "\n" * self.user_lines + PRELUDE)

    # ------------------------------------------------------------------ entering the engine
    def cpu_used(self) -> float:
        return time.process_time() - self.started

    def _check_cpu(self) -> float:
        remaining = self.deadline - time.process_time()
        if remaining <= 0:
            raise EngineFailure(failures.limit("cpu", "the script used up its CPU time"))
        return remaining

    def _enter(self, fn: Any, *args: Any) -> Any:
        self._ctx.set_time_limit(self._check_cpu())
        try:
            result = fn(*args)
        except quickjs.JSException as exc:
            self._check_cpu()
            raise EngineFailure(
                failures.engine_exception(
                    str(exc), isinstance(exc, quickjs.StackOverflow), self.user_lines
                )
            ) from None
        except MemoryError:
            raise EngineFailure(failures.limit("memory", "the sandbox ran out of memory")) from None
        self._check_cpu()
        return result

    def _call(self, op: str, *args: Any) -> Any:
        return self._enter(self._bridge, self._token, op, *args)

    def drain(self) -> None:
        """Run microtasks until none is left, within the CPU budget and ``max_jobs``."""
        ctx = self._ctx
        clock = time.process_time
        deadline = self.deadline
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise EngineFailure(failures.limit("cpu", "the script used up its CPU time"))
            ctx.set_time_limit(remaining)
            try:
                ran = ctx.execute_pending_job()
            except quickjs.JSException as exc:
                self._check_cpu()
                raise EngineFailure(
                    failures.engine_exception(
                        str(exc), isinstance(exc, quickjs.StackOverflow), self.user_lines
                    )
                ) from None
            if not ran:
                if self._hooks.pending_exception():
                    raise EngineFailure(failures.limit(
                        "memory", "the script ran out of memory (a continuation was dropped)"))
                return
            self.jobs += 1
            if self.jobs > self.max_jobs:
                raise EngineFailure(
                    failures.limit("jobs", f"the script ran more than {self.max_jobs} microtasks")
                )

    def _poll_from(self, text: Any) -> Poll:
        if not isinstance(text, str) or "\n" not in text:
            raise EngineFailure(failures.wire("LogicError", "the sandbox bridge was not reachable"))
        head, _, payload = text.partition("\n")
        return Poll(json.loads(head), payload)

    # ------------------------------------------------------------------ operations
    def start(self, spec: dict[str, Any], args_json: str) -> Poll:
        """Call the handler, run its microtasks, and report (SPEC §4, §5)."""
        self._call("invoke", json.dumps(spec), args_json)
        return self.poll()

    def settle(self, replies_json: str) -> Poll:
        """Deliver the host's replies to the pending calls, run microtasks, report."""
        self._call("settle", replies_json)
        return self.poll()

    def poll(self) -> Poll:
        self.drain()
        return self._poll_from(self._call("poll"))

    def manifest(self) -> Poll:
        return self._poll_from(self._call("manifest"))

    def rescue(self) -> Poll | None:
        """After an engine failure: what the prelude recorded (logs, and a failure that came
        first, e.g. too many host calls before the loop that used up the CPU)."""
        if self._ctx is None or self._bridge is None:
            return None
        try:
            self._ctx.set_memory_limit(self.memory + _RESCUE_HEAP)
            self._ctx.set_time_limit(0.25)
            return self._poll_from(self._bridge(self._token, "poll"))
        except (quickjs.JSException, MemoryError, EngineFailure, ValueError):
            return None

    def failure_of(self, poll: Poll) -> dict[str, Any]:
        """The wire error for a poll whose state is ``threw`` or ``fatal``."""
        err = poll.header["error"] or {}
        if poll.state == "threw":
            if err.get("name") == "object" and err.get("message") == "null" and \
                    self._hooks.out_of_memory_seen:
                # The engine throws `null` when it cannot even allocate its out-of-memory
                # error (e.g. a Map growing past the heap limit): see native.py.
                return failures.limit("memory", "the script ran out of memory")
            return failures.thrown(
                str(err.get("name", "Error")), str(err.get("message", "")),
                str(err.get("stack", "")), self.user_lines,
            )
        kind = str(err.get("kind", ""))
        cls, limit = _FATAL_KINDS.get(kind, ("LogicError", None))
        message = str(err.get("message", "the script failed"))
        if limit is not None:
            return failures.limit(limit, message)
        return failures.wire(cls, message)

    def close(self) -> None:
        """Drop every reference into the context so its runtime is freed now."""
        self._hooks.detach()
        self._bridge = None
        self._ctx = None



def cached_prelude_source() -> str:
    """The prelude as compiled once per worker: at a fixed line, storing its dispatch
    function in a global that the driver takes away before user code runs."""
    return "\n" * (PRELUDE_FIRST_LINE - 1) + f"globalThis.{DISPATCH_GLOBAL} = " + PRELUDE


def prepare(hooks: EngineHooks) -> None:
    """Once per worker: compile the prelude (a no-op where the engine hooks are unavailable)."""
    if hooks.available:
        hooks.prepare_prelude(quickjs.Context(), cached_prelude_source())
