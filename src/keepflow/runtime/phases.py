"""What each handler phase may call (SPEC §4, §5.1–5.3), as one frozen table.

Enforcement happens at the ``ctx`` boundary on every call (SPEC §9); a violation aborts the run
as a ``logic`` failure whose message names the call, the phase and what is allowed instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from keepflow.connectors.base import ToolKind
from keepflow.errors import PhaseViolation
from keepflow.model import Phase


@dataclass(frozen=True)
class PhaseRules:
    phase: Phase
    tool_kinds: frozenset[ToolKind]
    publish: bool
    peek: bool
    get_by_ids: bool
    allowed_text: str  # for error messages

    def check_tool(self, display: str, kind: ToolKind) -> None:
        if kind not in self.tool_kinds:
            raise PhaseViolation(
                f"{display} ({_KIND_WORDS[kind]}) is not allowed in {self.phase.value}: "
                f"{self.allowed_text}",
                phase=self.phase.value, call=display,
            )

    def check(self, display: str, allowed: bool) -> None:
        if not allowed:
            raise PhaseViolation(
                f"{display} is not allowed in {self.phase.value}: {self.allowed_text}",
                phase=self.phase.value, call=display,
            )


_KIND_WORDS = {
    ToolKind.READ: "a list/search read",
    ToolKind.READ_BY_ID: "a by-id read",
    ToolKind.MUTATE: "a mutation",
}

RULES: dict[Phase, PhaseRules] = {
    Phase.PRODUCER: PhaseRules(
        Phase.PRODUCER, frozenset({ToolKind.READ, ToolKind.READ_BY_ID}),
        publish=True, peek=False, get_by_ids=False,
        allowed_text="a producer may only make read-only tool calls, ctx.publish and ctx.log "
                     "(docs/execution-model.md#handlers-and-phases); mutations belong in a "
                     "consumer's mutate",
    ),
    Phase.PREPARE: PhaseRules(
        Phase.PREPARE, frozenset({ToolKind.READ, ToolKind.READ_BY_ID}),
        publish=False, peek=True, get_by_ids=True,
        allowed_text="prepare may only read: tool reads, ctx.peek, ctx.getByIds "
                     "(docs/execution-model.md#handlers-and-phases); "
                     "mutate in mutate, publish in next",
    ),
    Phase.MUTATE: PhaseRules(
        Phase.MUTATE, frozenset({ToolKind.READ_BY_ID, ToolKind.MUTATE}),
        publish=False, peek=False, get_by_ids=True,
        allowed_text="mutate may only make by-id reads and at most one mutation, as its last "
                     "statement (docs/execution-model.md#the-terminal-mutation); list reads and "
                     "peek belong in prepare, publish in "
                     "next",
    ),
    Phase.NEXT: PhaseRules(
        Phase.NEXT, frozenset(),
        publish=True, peek=False, get_by_ids=False,
        allowed_text="next may only publish and compute "
                     "(docs/execution-model.md#handlers-and-phases); read in prepare, mutate "
                     "in mutate",
    ),
}
