"""Phase rules, where statically visible (SPEC §4, §5.1–§5.3), and topic references (§2).

| phase    | tools                         | publish | peek | getByIds |
|----------|-------------------------------|---------|------|----------|
| producer | read, read_by_id              | yes     | no   | no       |
| prepare  | read, read_by_id              | no      | yes  | yes      |
| mutate   | read_by_id + one mutation     | no      | no   | yes      |
| next     | none                          | yes     | no   | no       |
"""

from __future__ import annotations

from collections.abc import Sequence

from keepflow.sandbox.findings import Finding, error
from keepflow.sandbox.static.ctxcalls import CtxCall
from keepflow.sandbox.static.handlers import HandlerFn, Phase
from keepflow.sandbox.static.tree import Script

KIND_WORDS = {"read": "a list/search read", "read_by_id": "a by-id read", "mutate": "a mutation"}
_TOPICS_BY_STATE = (
    "keep track of what was already seen in the producer's state (re-publishing the same "
    "messageId is a no-op)"
)

#: (phase, what) -> why it is forbidden and what to do instead. ``what`` is a tool kind,
#: "tool" (any tool) or a ctx builtin.
FORBIDDEN: dict[tuple[Phase, str], str] = {
    ("producer", "mutate"): "producers may only read and publish "
                            "(docs/execution-model.md#handlers-and-phases); publish an event "
    "and make the change in a consumer's mutate",
    ("producer", "peek"): f"producers cannot read topics "
                          f"(docs/execution-model.md#handlers-and-phases); {_TOPICS_BY_STATE}",
    ("producer", "getByIds"): f"producers cannot read topics "
                              f"(docs/execution-model.md#handlers-and-phases); {_TOPICS_BY_STATE}",
    ("prepare", "mutate"): "prepare may only read and reserve events "
                           "(docs/execution-model.md#handlers-and-phases); make the "
    "change in mutate, passing what it needs through PrepareResult.data",
    ("prepare", "publish"): "prepare may not publish "
                            "(docs/execution-model.md#handlers-and-phases); publish from next, "
    "which runs after the mutation",
    ("mutate", "read"): "mutate may only make by-id reads and one mutation "
                        "(docs/execution-model.md#the-terminal-mutation); do "
    "list/search reads in prepare and pass the results through PrepareResult.data",
    ("mutate", "publish"): "mutate may not publish "
                           "(docs/execution-model.md#the-terminal-mutation); publish from next, "
    "which runs after the mutation",
    ("mutate", "peek"): "mutate may not peek (docs/execution-model.md#the-terminal-mutation); peek "
                        "and reserve events in prepare "
    "and pass what mutate needs through PrepareResult.data",
    ("next", "tool"): "next may not call tools (docs/execution-model.md#handlers-and-phases); read "
                      "in prepare and make the change "
    "in mutate — next receives the mutation result as its third argument",
    ("next", "peek"): "next may not read topics (docs/execution-model.md#handlers-and-phases); use "
                      "prepared.data from prepare",
    ("next", "getByIds"): "next may not read topics (docs/execution-model.md#handlers-and-phases); "
                          "use prepared.data from prepare",
}


def check_phase(
    script: Script, handler: HandlerFn, calls: Sequence[CtxCall], topics: frozenset[str] | None
) -> list[Finding]:
    findings: list[Finding] = []
    for call in calls:
        where = handler.label + (f" (via {' → '.join(call.via)})" if call.via else "")
        pos = script.position(call.node)
        if call.target == "tool":
            what = call.kind or ""
            reason = FORBIDDEN.get((handler.phase, what)) or FORBIDDEN.get((handler.phase, "tool"))
            shown = f"{call.display} ({KIND_WORDS.get(what, 'a tool call')})"
        else:
            reason = FORBIDDEN.get((handler.phase, call.target))
            shown = call.display
        if reason is not None:
            findings.append(
                error("phase-call", f"{where}: {shown} is not allowed here — {reason}", *pos)
            )
        if call.target == "tool" or call.topic is None:
            continue
        if topics is not None and call.topic not in topics:
            findings.append(
                error(
                    "undeclared-topic",
                    f'{where}: {call.display}("{call.topic}", ...) names a topic that is not '
                    f"declared in `topics` (declared: {', '.join(sorted(topics)) or 'none'}). "
                    "Declare it in topics (with exactly one consumer) or fix the name "
                    "(docs/execution-model.md#handlers-and-phases)",
                    *pos,
                )
            )
        elif (
            call.target in ("peek", "getByIds")
            and handler.subscribe is not None
            and call.topic not in handler.subscribe
        ):
            findings.append(
                error(
                    "unsubscribed-topic",
                    f'{where}: {call.display}("{call.topic}", ...) reads a topic consumer '
                    f"{handler.handler} does not subscribe to (subscribe: "
                    f"{', '.join(sorted(handler.subscribe)) or 'none'}); a consumer may only "
                    "reserve events of its subscribed topics "
                    "(docs/execution-model.md#handlers-and-phases). Add the topic to "
                    "subscribe or read the right topic",
                    *pos,
                )
            )
    return findings
