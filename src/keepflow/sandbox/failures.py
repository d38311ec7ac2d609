"""How sandbox failures travel from the worker to the host, and how engine errors are read.

The worker describes a failure as a small JSON dict (``class`` + fields); the pool turns it back
into the typed error of :mod:`keepflow.errors` (SPEC §8: the type decides the failure class).
Engine errors are recognised here, in one place, from QuickJS's fixed texts: the engine offers
no other channel for them.
"""

from __future__ import annotations

import re
from typing import Any

from keepflow.errors import (
    InvalidResult,
    KeepflowError,
    LogicError,
    NeverSettled,
    SandboxCrashed,
    SandboxLimitExceeded,
    ScriptError,
    UnhandledRejection,
    WorkflowDefinitionError,
)

#: Stack frames and syntax errors name the evaluated source ``<input>`` (the binding fixes it).
_POSITION = re.compile(r"<input>:(\d+):(\d+)")
_OOM_TEXTS = ("InternalError: out of memory", "null", "(Failed obtaining QuickJS error string")

_CLASSES: dict[str, type[KeepflowError]] = {
    "InvalidResult": InvalidResult,
    "NeverSettled": NeverSettled,
    "UnhandledRejection": UnhandledRejection,
    "WorkflowDefinitionError": WorkflowDefinitionError,
    "SandboxCrashed": SandboxCrashed,
    "LogicError": LogicError,
}


def wire(cls: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"class": cls, "message": message, **fields}


def limit(kind: str, message: str) -> dict[str, Any]:
    return wire("SandboxLimitExceeded", message, limit=kind)


def from_wire(d: dict[str, Any]) -> KeepflowError:
    """Rebuild the typed error the worker described."""
    cls = d.get("class")
    message = str(d.get("message", ""))
    if cls == "ScriptError":
        return ScriptError(
            message,
            js_name=str(d.get("js_name", "Error")),
            stack=str(d.get("stack", "")),
            line=d.get("line"),
            column=d.get("column"),
        )
    if cls == "SandboxLimitExceeded":
        return SandboxLimitExceeded(message, limit=str(d.get("limit", "unknown")))
    return _CLASSES.get(str(cls), LogicError)(message)


def user_position(stack: str, user_lines: int) -> tuple[int | None, int | None]:
    """The first stack position inside the user's script.

    The prelude is evaluated with as many leading newlines as the user's script has lines, so
    any position beyond ``user_lines`` belongs to the prelude and is skipped.
    """
    for m in _POSITION.finditer(stack):
        line = int(m.group(1))
        if line <= user_lines:
            return line, int(m.group(2))
    return None, None


def user_stack(stack: str, user_lines: int) -> str:
    """The stack without the prelude's frames (they mean nothing to the script's author)."""
    kept = []
    for frame in stack.splitlines():
        m = _POSITION.search(frame)
        if m is not None and int(m.group(1)) > user_lines:
            continue
        if frame.strip():
            kept.append(frame)
    while kept and kept[-1].endswith("(native)"):  # the prelude's Reflect.apply and such
        kept.pop()
    return "\n".join(kept)


def thrown(name: str, message: str, stack: str, user_lines: int) -> dict[str, Any]:
    """A value thrown by the script (or by the engine on its behalf), as a wire error."""
    if name == "InternalError" and message == "out of memory":
        return limit("memory", f"the script ran out of memory ({name}: {message})")
    if name == "InternalError" and message == "string too long":
        return limit("memory", "the script built a string longer than the engine allows "
                               f"({name}: {message})")
    if name == "InternalError" and message == "interrupted":
        return limit("cpu", "the script used up its CPU time")
    if (name == "RangeError" and "call stack size exceeded" in message) or (
        name == "InternalError" and "stack overflow" in message
    ):
        return limit("stack", f"the script exceeded its stack size ({name}: {message})")
    line, column = user_position(stack, user_lines)
    where = f" (line {line}, column {column})" if line is not None else ""
    return wire(
        "ScriptError",
        f"{name}: {message}{where}",
        js_name=name,
        stack=user_stack(stack, user_lines),
        line=line,
        column=column,
    )


def engine_exception(text: str, is_stack_overflow: bool, user_lines: int) -> dict[str, Any]:
    """An exception the engine raised out of ``eval``/``module``/a job (not caught in JS)."""
    if text.startswith("InternalError: interrupted"):
        return limit("cpu", "the script used up its CPU time")
    if any(text.startswith(t) for t in _OOM_TEXTS):
        return limit("memory", "the script ran out of memory")
    if is_stack_overflow:
        return limit("stack", "the script exceeded its stack size")
    first, _, rest = text.partition("\n")
    name, sep, message = first.partition(": ")
    if not sep:
        name, message = "Error", first
    return thrown(name, message, rest, user_lines)
