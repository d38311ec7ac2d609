"""Helpers for sandbox tests: a recording host and script builders (no mocks: real engine,
real worker processes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keepflow.sandbox.api import (
    HostCall,
    Invocation,
    InvocationResult,
    LogEntry,
    Reply,
    Resolve,
    SandboxLimits,
    Terminate,
)
from keepflow.sandbox.pool import SandboxPool


def workflow(body: str) -> str:
    """A script whose single manual producer `p` has ``body`` as its async handler body."""
    head = "export default Keep.workflow({ producers: { async p(ctx, state) {"
    return f"{head}\n{body}\n}} }} }});\n"


@dataclass
class Host:
    """Answers ctx calls from a script of replies and records what it saw."""

    replies: Callable[[HostCall], Reply] = field(default=lambda c: Resolve(None))
    calls: list[HostCall] = field(default_factory=list)
    logs: list[LogEntry] = field(default_factory=list)

    def __call__(self, call: HostCall) -> Reply:
        self.calls.append(call)
        return self.replies(call)

    def run(
        self,
        pool: SandboxPool,
        source: str,
        handler: tuple[str, ...] = ("producers", "p"),
        *,
        args: tuple[Any, ...] = (),
        connections: dict[str, tuple[str, ...]] | None = None,
        limits: SandboxLimits | None = None,
        undefined_args: frozenset[int] = frozenset(),
    ) -> InvocationResult:
        inv = Invocation(
            source=source,
            handler=handler,
            args=args,
            undefined_args=undefined_args,
            connections=connections or {"sql": ("insert", "query"), "email": ("search",)},
            limits=limits or SandboxLimits(),
        )
        return pool.invoke(inv, self, self.logs.append)


def terminate_tools(call: HostCall) -> Reply:
    """Every tool call is a terminal mutation; other calls resolve to null."""
    return Terminate() if call.target == "tool" else Resolve(None)


def run_script(pool: SandboxPool, body: str, **kw: Any) -> tuple[InvocationResult, Host]:
    host = Host()
    return host.run(pool, workflow(body), **kw), host


def assert_pool_works(pool: SandboxPool) -> None:
    result, _ = run_script(pool, "return 41 + 1;")
    assert result.value == 42
