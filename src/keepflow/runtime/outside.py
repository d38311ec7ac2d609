"""The connector boundary: what the outside world hands back, made safe to keep (SPEC §8, §9).

Every connector call and reconcile of the runtime goes through :func:`call` and
:func:`reconcile`. Whatever a connector returns — a built-in one relaying a server's bytes, or a
third party's — becomes a JSON value the store can always write and the script can always
receive: strings are valid Unicode without NUL (docs/security.md#text-the-host-can-store),
keys are strings, numbers are finite, anything else is written out as text. The same holds for
the messages and details of the typed errors a connector raises, because they end up in the
ledger, the failure record and the person's inbox.

Nothing here decides an outcome: a cleaned error keeps its type, so its failure class and
whether the request was sent are unchanged.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any

from keepflow.clock import Clock
from keepflow.connectors.base import Connector, ReconcileResult, ToolCall
from keepflow.connectors.limits import Throttle
from keepflow.errors import ConnectorError, TransientError
from keepflow.storable import maybe_unstorable, replace_unstorable

#: Nesting kept from the outside world, as deep as a script may send (prelude.js MAX_DEPTH):
#: deeper subtrees are written out as a marker instead of exhausting Python's recursion.
MAX_DEPTH = 64
TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels]"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
#: JSON brackets to +1 / -1 (as signed bytes), every other byte deleted.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


@dataclass(frozen=True)
class Received:
    """A connector's result as the host keeps it, and what had to change."""

    value: Any
    #: Bytes of ``value`` as compact JSON (ASCII-escaped).
    size: int = 0
    #: Characters replaced by U+FFFD (lone surrogates, NUL) and values written out as text.
    replaced: int = 0
    converted: int = 0
    #: The whole value was larger than the caller keeps, and is a marker instead.
    cut: bool = False

    def note(self, display: str) -> str | None:
        """A run-log line when the result was changed on the way in, else None."""
        parts = []
        if self.cut:
            parts.append(f"it was {self.size} bytes of JSON, more than keepflow keeps of a "
                         "mutation's result (half of limits.message_bytes), so it is kept as "
                         '{"truncated": true, "bytes": N}')
        if self.replaced:
            parts.append(f"{self.replaced} character(s) that are not valid text (lone "
                         "surrogates or NUL) were replaced by U+FFFD")
        if self.converted:
            parts.append(f"{self.converted} value(s) that are not JSON were written out as text")
        if not parts:
            return None
        return (f"the result of {display}: {'; '.join(parts)} "
                "(docs/security.md#text-the-host-can-store)")


@dataclass(frozen=True)
class Limited:
    """The host's limits on a connection's calls (docs/connectors.md#call-limits), and the
    clock a call waits on."""

    throttle: Throttle
    clock: Clock


def call(connector: Connector, tool_call: ToolCall, max_bytes: int | None = None, *,
         limited: Limited | None = None) -> Received:
    """``connector.call`` with its result and its typed errors made storable; a result over
    ``max_bytes`` (a mutation's: it happened, so it is kept, as a marker) is cut. With
    ``limited``, the call waits for its turn first (a ``TransientError`` before anything is
    sent when the wait would be too long)."""
    try:
        if limited is None:
            result = connector.call(tool_call)
        else:
            with limited.throttle.slot(limited.clock, tool_call.timeout):
                result = _backing_off(limited, connector.call, tool_call)
    except ConnectorError as exc:
        clean_error(exc)
        # Which connection failed: the inbox names it (an auth failure asks to reconnect it).
        exc.details.setdefault("connection", connector.name)
        raise
    return _capped(received(result), max_bytes)


def reconcile(connector: Connector, tool_call: ToolCall, max_bytes: int | None = None, *,
              limited: Limited | None = None) -> ReconcileResult:
    """``connector.reconcile`` with its answer made storable (and capped like :func:`call`)."""
    try:
        if limited is None:
            answer = connector.reconcile(tool_call)
        else:
            with limited.throttle.slot(limited.clock, tool_call.timeout):
                answer = _backing_off(limited, connector.reconcile, tool_call)
    except ConnectorError as exc:
        clean_error(exc)
        raise
    detail, _ = replace_unstorable(str(answer.detail))
    return replace(answer, result=_capped(received(answer.result), max_bytes).value,
                   detail=detail)


def _backing_off(limited: Limited, fn: Any, tool_call: ToolCall) -> Any:
    """``fn(tool_call)``; a rate limit with a Retry-After holds every call of the connection."""
    try:
        return fn(tool_call)
    except TransientError as exc:
        limited.throttle.back_off(limited.clock, exc.retry_after)
        raise


def _capped(got: Received, max_bytes: int | None) -> Received:
    if max_bytes is None or got.size <= max_bytes:
        return got
    return replace(got, value={"truncated": True, "bytes": got.size}, cut=True)


def received(value: Any) -> Received:
    """``value`` as the host keeps it. The common case — already plain, valid JSON — costs
    one C-level serialisation and is returned as it is."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        pass
    else:
        data = text.encode()
        if not maybe_unstorable(data) and _depth(data) <= MAX_DEPTH:
            return Received(value, len(text))
    converted = 0

    def walk(v: Any, depth: int = 0) -> Any:
        nonlocal converted
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if depth >= MAX_DEPTH and isinstance(v, (dict, list, tuple)):
            converted += 1
            return TOO_DEEP
        if isinstance(v, float):
            if math.isfinite(v):
                return v
            converted += 1
            return str(v)
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                if not isinstance(k, str):
                    converted += 1
                out[str(k)] = walk(item, depth + 1)
            return out
        if isinstance(v, (list, tuple)):
            return [walk(item, depth + 1) for item in v]
        converted += 1
        return str(v)

    plain = walk(value)
    clean, replaced = replace_unstorable(plain)
    size = len(json.dumps(clean, separators=(",", ":")))
    return Received(clean, size, replaced, converted)


def _depth(json_text: bytes) -> int:
    """How deeply ``json_text`` nests (0 when it has too few brackets to pass
    :data:`MAX_DEPTH`), counted in C: strings dropped, brackets mapped to ±1 and summed."""
    if json_text.count(b"[") + json_text.count(b"{") <= MAX_DEPTH:
        return 0  # cannot nest deeper than it has brackets
    brackets = _STRING.sub(b"", json_text).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(array("b", brackets)), default=0)


def nesting(value: Any) -> int:
    """How many levels of arrays and objects ``value`` nests (a scalar: 0), counted without
    recursion (a parsed body may nest hundreds of levels)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, depth = todo.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is not None:
            deepest = max(deepest, depth)
            todo.extend((item, depth + 1) for item in items)
    return deepest


def clean_error(exc: ConnectorError) -> ConnectorError:
    """The same error object, its message and details made storable (in place)."""
    exc.message, _ = replace_unstorable(str(exc.message))
    exc.details = received(exc.details).value
    exc.args = (exc.message,)
    return exc
