"""Reading engine errors and stack positions (pure)."""

from __future__ import annotations

from keepflow.errors import (
    InvalidResult,
    SandboxLimitExceeded,
    ScriptError,
    WorkflowDefinitionError,
)
from keepflow.sandbox import failures

STACK = (
    "    at inner (<input>:7:13)\n"
    "    at <anonymous> (<input>:3:5)\n"
    "    at invoke (<input>:480:20)\n"
    "    at apply (native)\n"
)


def test_position_skips_prelude_frames() -> None:
    assert failures.user_position(STACK, 10) == (7, 13)
    assert failures.user_position("    at invoke (<input>:480:20)\n", 10) == (None, None)
    assert failures.user_position(STACK, 5) == (3, 5)


def test_user_stack_drops_prelude_frames() -> None:
    assert failures.user_stack(STACK, 10) == (
        "    at inner (<input>:7:13)\n    at <anonymous> (<input>:3:5)"
    )


def test_syntax_error_text_gives_line_and_column() -> None:
    d = failures.engine_exception("SyntaxError: expecting ';'\n    at <input>:4:13\n", False, 9)
    err = failures.from_wire(d)
    assert isinstance(err, ScriptError)
    assert (err.js_name, err.line, err.column) == ("SyntaxError", 4, 13)
    assert err.message == "SyntaxError: expecting ';' (line 4, column 13)"


def test_engine_limits_are_recognised() -> None:
    cpu = failures.from_wire(failures.engine_exception("InternalError: interrupted\n", False, 1))
    oom = failures.from_wire(failures.engine_exception("InternalError: out of memory\n", False, 1))
    null = failures.from_wire(failures.engine_exception("null\n", False, 1))
    deep = failures.from_wire(failures.engine_exception("RangeError: x\n", True, 1))
    assert [e.limit for e in (cpu, oom, null, deep)  # type: ignore[attr-defined]
            ] == ["cpu", "memory", "memory", "stack"]
    assert all(isinstance(e, SandboxLimitExceeded) for e in (cpu, oom, null, deep))


def test_thrown_values_that_are_limits() -> None:
    oom = failures.from_wire(failures.thrown("InternalError", "out of memory", "", 1))
    deep = failures.from_wire(
        failures.thrown("RangeError", "Maximum call stack size exceeded", "", 1))
    assert isinstance(oom, SandboxLimitExceeded)
    assert oom.limit == "memory"
    assert isinstance(deep, SandboxLimitExceeded)
    assert deep.limit == "stack"


def test_wire_classes_round_trip() -> None:
    assert isinstance(failures.from_wire(failures.wire("InvalidResult", "m")), InvalidResult)
    err = failures.from_wire(failures.wire("WorkflowDefinitionError", "m"))
    assert isinstance(err, WorkflowDefinitionError)
    assert err.message == "m"
