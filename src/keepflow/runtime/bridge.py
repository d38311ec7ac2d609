"""The host side of ``ctx``: every call a script makes arrives here (SPEC §4, §5, §9).

One :class:`Bridge` serves one handler invocation. It enforces the phase rules, performs reads
(retrying transient failures inside the run, SPEC §7.4), buffers publishes until the run
commits, logs every tool call, and turns the first mutation in ``mutate`` into a *declaration*:
the script is stopped there and the host performs the mutation afterwards (SPEC §5.2, §6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from keepflow.clock import Clock
from keepflow.connectors.base import ToolCall, ToolKind
from keepflow.connectors.config import Connections
from keepflow.errors import (
    ConnectorError,
    InvalidResult,
    KeepflowError,
    PhaseViolation,
    SandboxLimitExceeded,
    TransientError,
)
from keepflow.model import (
    EventDraft,
    Fence,
    LogRecord,
    Phase,
    RunDraft,
    ToolCallRecord,
    VersionRecord,
)
from keepflow.policies import Policy, PolicyBook
from keepflow.runtime import outside, values
from keepflow.runtime.phases import RULES
from keepflow.sandbox.api import HostCall, LogEntry, Reply, Resolve, Terminate
from keepflow.store.store import Store

RESULT_LOG_LIMIT = 64 * 1024  # bytes of a tool result kept in the tool-call log


@dataclass(frozen=True)
class DeclaredMutation:
    connection: str
    tool: str
    params: dict[str, Any]


@dataclass
class RunBuffers:
    """What a run gathers between its durable points: counters and publishes held in memory
    until the next transition writes them (SPEC §3: publishes commit with the run)."""

    tool_calls: int = 0
    log_seq: int = 0
    call_seq: int = 0
    publishes: list[EventDraft] = field(default_factory=list)
    published_bytes: int = 0
    #: Titles of the events this run reserved: the words of escalations (SPEC §6.6).
    reserved_titles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunScope:
    """What all invocations of one run share: the run, what it runs with (version, fence,
    store, connections, policy, clock, the topics it may touch) and its :class:`RunBuffers`."""

    run: RunDraft
    version: VersionRecord
    fence: Fence | None
    store: Store
    connections: Connections
    policy: Policy
    policies: PolicyBook
    workflow_name: str
    clock: Clock
    declared_topics: frozenset[str]
    subscribed: frozenset[str] = frozenset()
    #: The connections the script calls (known since deploy; empty for older versions).
    needs_connections: tuple[str, ...] = ()
    buffers: RunBuffers = field(default_factory=RunBuffers)

    def policy_for(self, connection: str) -> Policy:
        """The effective policy of calls to ``connection`` (SPEC §10 per-connector values)."""
        return self.policies.effective(self.workflow_name, connection)

    def note(self, phase: Phase | None, level: str, message: str) -> None:
        """A host-written line in the run log (e.g. a duplicate publish, SPEC §3)."""
        self.buffers.log_seq += 1
        self.run.stored_bytes += len(message.encode())  # docs/security.md#limits
        self.run.logs.append(LogRecord(seq=self.buffers.log_seq, phase=phase, level=level,
                                       message=message, at=self.clock.now()))


class Bridge:
    def __init__(self, scope: RunScope, phase: Phase) -> None:
        self.scope = scope
        self.phase = phase
        self.rules = RULES[phase]
        self.declared: DeclaredMutation | None = None

    # ---------------------------------------------------------------- logs

    def on_log(self, entry: LogEntry) -> None:
        self.scope.note(self.phase, entry.level, entry.message)

    def note(self, level: str, message: str) -> None:
        self.scope.note(self.phase, level, message)

    # ---------------------------------------------------------------- calls

    def __call__(self, call: HostCall) -> Reply:
        if call.target == "publish":
            return self._publish(call)
        if call.target == "peek":
            return self._peek(call)
        if call.target == "getByIds":
            return self._get_by_ids(call)
        return self._tool(call)

    def _publish(self, call: HostCall) -> Reply:
        self.rules.check("ctx.publish", self.rules.publish)
        s = self.scope
        if len(s.buffers.publishes) >= s.policy.limits.publishes_per_run:
            raise SandboxLimitExceeded(
                f"the run published more than {s.policy.limits.publishes_per_run} events "
                "(policy limits.publishes_per_run)", limit="publishes")
        topic = call.args[0] if call.args else None
        event = call.args[1] if len(call.args) > 1 else None
        draft = values.event_draft(topic, event, declared=s.declared_topics,
                                   payload_limit=s.policy.limits.payload_bytes)
        for earlier in s.buffers.publishes:
            if earlier.topic == draft.topic and earlier.message_id == draft.message_id:
                self.note("warn", f"duplicate publish of {draft.topic}/{draft.message_id} in "
                                  "this run ignored (events are idempotent by messageId)")
                return Resolve({"messageId": draft.message_id})
        limit = s.policy.limits.publish_bytes_per_run
        if s.buffers.published_bytes + draft.size > limit:
            raise SandboxLimitExceeded(
                f"the run published more than {limit} bytes of events (policy "
                "limits.publish_bytes_per_run); publish references to large data instead of "
                "the data, or fewer events per run (docs/security.md#limits)",
                limit="publish_bytes")
        s.buffers.published_bytes += draft.size
        s.buffers.publishes.append(draft)
        return Resolve({"messageId": draft.message_id})

    def _subscribed_topic(self, display: str, topic: Any) -> str:
        if not isinstance(topic, str) or topic not in self.scope.subscribed:
            raise PhaseViolation(
                f"{display}({topic!r}): this consumer does not subscribe to that topic "
                f"(it subscribes to: {', '.join(sorted(self.scope.subscribed))})",
                phase=self.phase.value, call=display)
        return topic

    def _peek(self, call: HostCall) -> Reply:
        self.rules.check("ctx.peek", self.rules.peek)
        topic = self._subscribed_topic("ctx.peek", call.args[0] if call.args else None)
        opts = call.args[1] if len(call.args) > 1 else {}
        limit = opts.get("limit", 10) if isinstance(opts, dict) else None
        cap = self.scope.policy.limits.peek_max
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= cap:
            raise InvalidResult(f"ctx.peek('{topic}', {{limit}}): limit must be 1..{cap}")
        t0 = time.perf_counter()
        found = self.scope.store.peek(self.scope.run.workflow_id, topic, limit)
        views = [e.script_view() for e in found]
        self._log_call(call, None, {"topic": topic, "limit": limit}, True, views, t0)
        return Resolve(views)

    def _get_by_ids(self, call: HostCall) -> Reply:
        self.rules.check("ctx.getByIds", self.rules.get_by_ids)
        topic = self._subscribed_topic("ctx.getByIds", call.args[0] if call.args else None)
        ids = call.args[1] if len(call.args) > 1 else None
        cap = self.scope.policy.limits.peek_max
        if not isinstance(ids, list) or len(ids) > cap or not all(
                isinstance(x, str) for x in ids):
            raise InvalidResult(f"ctx.getByIds('{topic}', ids): ids must be a list of at most "
                                f"{cap} messageId strings")
        t0 = time.perf_counter()
        found = self.scope.store.events_by_ids(self.scope.run.workflow_id, topic, ids)
        views = [found[i].script_view() for i in ids if i in found]
        self._log_call(call, None, {"topic": topic, "ids": ids}, True, views, t0)
        return Resolve(views)

    def _tool(self, call: HostCall) -> Reply:
        s = self.scope
        assert call.connection is not None
        assert call.tool is not None
        connector = s.connections.get(call.connection)
        spec = connector.tool(call.tool)
        self.rules.check_tool(call.display, spec.kind)
        s.buffers.tool_calls += 1
        if s.buffers.tool_calls > s.policy.limits.tool_calls_per_run:
            raise SandboxLimitExceeded(
                f"the run made more than {s.policy.limits.tool_calls_per_run} tool calls "
                "(policy limits.tool_calls_per_run)", limit="tool_calls")
        params = values.mutation_params(call.args, call.display)
        tool_call = ToolCall(tool=call.tool, params=params,
                             timeout=s.policy_for(call.connection).timeouts.tool_call_seconds)
        if spec.kind is ToolKind.MUTATE:
            if self.declared is not None:  # two mutations in one turn
                raise PhaseViolation(
                    f"{call.display}: a second mutation in one mutate; a consumer run makes at "
                    "most one mutation (docs/execution-model.md#the-terminal-mutation)",
                    phase=self.phase.value, call=call.display)
            connector.validate(tool_call)  # malformed params fail before anything is recorded
            self.declared = DeclaredMutation(call.connection, call.tool, params)
            return Terminate()
        return Resolve(self._read(call, connector, tool_call, spec.kind.value))

    def _read(self, call: HostCall, connector: Any, tool_call: ToolCall, kind: str) -> Any:
        """A read, retried inside the run while it fails transiently (SPEC §7.4, §15.9)."""
        s = self.scope
        assert call.connection is not None
        retry = s.policy_for(call.connection).retry
        limited = outside.Limited(s.connections.throttle(call.connection), s.clock)
        attempt = 1
        while True:
            t0 = time.perf_counter()
            try:
                connector.validate(tool_call)
                got = outside.call(connector, tool_call, limited=limited)
            except TransientError as exc:
                self._log_call(call, kind, dict(tool_call.params), False, None, t0, exc)
                if attempt >= retry.max_attempts:
                    raise
                delay = retry.wait(attempt, exc.retry_after)
                self.note("warn", f"{call.display} failed transiently ({exc.message}); retry "
                                  f"{attempt}/{retry.max_attempts - 1} in {delay:.1f}s")
                s.clock.sleep(delay)
                attempt += 1
                continue
            except ConnectorError as exc:
                self._log_call(call, kind, dict(tool_call.params), False, None, t0, exc)
                raise
            note = got.note(call.display)
            if note is not None:
                self.note("warn", note)
            self._log_call(call, kind, dict(tool_call.params), True, got.value, t0,
                           size=got.size)
            return got.value

    def _log_call(self, call: HostCall, kind: str | None, params: Any, ok: bool, result: Any,
                  t0: float, error: KeepflowError | None = None, *, size: int | None = None
                  ) -> None:
        s = self.scope
        s.buffers.call_seq += 1
        if result is not None:
            size = values.json_size(result) if size is None else size
            if size > RESULT_LOG_LIMIT:
                result = {"truncated": True, "bytes": size}
            s.run.stored_bytes += min(size, RESULT_LOG_LIMIT)
        s.run.stored_bytes += values.json_size(params)
        s.run.tool_calls.append(ToolCallRecord(
            seq=s.buffers.call_seq, phase=self.phase, target=call.target,
            connection=call.connection,
            tool=call.tool, kind=kind, params=params, ok=ok, result=result,
            error=error.to_dict() if error else None, started_at=s.clock.now(),
            duration_ms=(time.perf_counter() - t0) * 1000,
        ))
