"""The contract between the host and the JavaScript sandbox.

The host asks the sandbox to run one handler of one script (:class:`Invocation`). While the
script runs, every ``ctx`` call it makes arrives at the host as a :class:`HostCall`; the host
answers each with a :class:`Reply`:

* :class:`Resolve` settles the call's promise with a JSON value;
* :class:`Terminate` ends the invocation *without* settling the promise: this is how a
  terminal mutation works (SPEC §5.2) — code after it, ``catch`` and ``finally`` never run;
* raising a :class:`~keepflow.errors.KeepflowError` from the handler aborts the invocation and
  re-raises that error to the caller (phase violations, connector failures). The script never
  sees it, so it can never catch it.

Every value crosses the boundary as JSON. The sandbox itself has no file, network, process,
timer or module access; everything goes through host calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: Integers outside this range cannot be represented exactly by a JavaScript number.
JS_MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one invocation (SPEC §10 ``limits`` / ``timeouts``). A frozen value recorded
    with each run, in the spirit of a capability set."""

    cpu_seconds: float = 2.0  # JS CPU time, summed over the whole invocation
    wall_seconds: float = 30.0  # sandbox wall time, not counting time spent in host calls
    memory_bytes: int = 64 * 1024 * 1024  # JS heap
    stack_bytes: int = 1024 * 1024
    max_jobs: int = 1_000_000  # microtasks run in one invocation
    max_host_calls: int = 1_000  # ctx calls in one invocation
    max_message_bytes: int = 8 * 1024 * 1024  # any single JSON value crossing the boundary


@dataclass(frozen=True)
class Invocation:
    """Run one handler of one script in a fresh context."""

    source: str
    #: Path of the handler inside the workflow definition, e.g. ``("producers", "poll")`` or
    #: ``("consumers", "addRow", "prepare")``.
    handler: tuple[str, ...]
    #: Arguments after ``ctx``, as JSON values. ``None`` entries are passed as ``undefined``
    #: when ``undefined_args`` names their index (a producer's first state is ``undefined``).
    args: tuple[Any, ...] = ()
    undefined_args: frozenset[int] = frozenset()
    #: ``ctx.<connection>.<tool>`` stubs to create: connection name -> tool names.
    connections: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The tools among them that mutate: a call of one is terminal (SPEC §5.2) — once the
    #: script queued it, nothing it does afterwards has any effect.
    terminal: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)


HostCallTarget = Literal["publish", "peek", "getByIds", "tool"]


@dataclass(frozen=True)
class HostCall:
    """One ``ctx`` call made by the script."""

    seq: int  # 1-based order of calls within the invocation
    target: HostCallTarget
    args: tuple[Any, ...]  # JSON values exactly as the script passed them
    connection: str | None = None  # for target == "tool"
    tool: str | None = None  # for target == "tool"

    @property
    def display(self) -> str:
        if self.target == "tool":
            return f"ctx.{self.connection}.{self.tool}"
        return f"ctx.{self.target}"


@dataclass(frozen=True)
class Resolve:
    value: Any = None


@dataclass(frozen=True)
class Terminate:
    """Stop the script here; the call's promise never settles (terminal mutation)."""


Reply = Resolve | Terminate


class HostCallHandler(Protocol):
    def __call__(self, call: HostCall) -> Reply: ...


@dataclass(frozen=True)
class LogEntry:
    level: Literal["debug", "info", "warn", "error"]
    message: str
    at: float  # seconds since the epoch


@dataclass
class InvocationResult:
    #: ``returned``: the handler's promise fulfilled. ``terminated``: a host call was answered
    #: with :class:`Terminate` and the script was stopped there.
    outcome: Literal["returned", "terminated"]
    value: Any = None  # the returned JSON value (``None`` if it returned undefined)
    returned_undefined: bool = False
    logs: list[LogEntry] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    jobs: int = 0
    host_calls: int = 0
    #: Calls the script made in the same batch *after* the call answered with
    #: :class:`Terminate`. They were never performed (``on_call`` did not see them); the
    #: executor uses them to flag "a second mutation" / "a call after the terminal mutation".
    after_terminal: list[HostCall] = field(default_factory=list)
