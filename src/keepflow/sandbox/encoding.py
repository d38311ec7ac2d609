"""JSON values going *into* the sandbox.

JavaScript numbers are doubles: an integer that no double equals (most integers beyond
±2**53) would be silently rounded by ``JSON.parse``. Such integers are sent as their decimal
string instead, and a ``warn`` log entry names where (the script sees a string, never a wrong
number). Every integer a double represents exactly — all of the safe range, and values the
script itself produced such as ``2**53`` or ``1e21`` (which PostgreSQL's ``jsonb`` gives back
as an integer) — is sent as a number and round-trips exactly, because JSON.stringify writes a
double's shortest digits and those are the integer itself.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from keepflow.errors import SandboxLimitExceeded
from keepflow.sandbox.api import JS_MAX_SAFE_INTEGER


def _key_path(path: str, key: str) -> str:
    if key.isidentifier() and key.isascii():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _convert(value: Any, path: str, notes: list[str]) -> Any:
    """``value`` with unsafe integers replaced by strings; the same object if nothing changed."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        if -JS_MAX_SAFE_INTEGER <= value <= JS_MAX_SAFE_INTEGER or _exact_double(value):
            return value
        notes.append(path)
        return str(value)
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None
        for k, v in value.items():
            c = _convert(v, _key_path(path, str(k)), notes)
            if c is not v and out is None:
                out = dict(value)
            if out is not None:
                out[k] = c
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for i, v in enumerate(value):
            c = _convert(v, f"{path}[{i}]", notes)
            if c is not v and items is None:
                items = list(value)
            if items is not None:
                items[i] = c
        return value if items is None else items
    return value  # json.dumps reports anything else


def _exact_double(value: int) -> bool:
    """Whether the script gets this integer back exactly: JSON.parse makes it a double, and
    JSON.stringify writes that double's shortest digits (``2**64`` comes back as
    ``18446744073709552000``). True when those digits are the integer itself."""
    try:
        return int(Decimal(repr(float(value)))) == value
    except OverflowError:
        return False


def encode_for_js(value: Any, where: str, max_bytes: int) -> tuple[bytes, list[str]]:
    """JSON text of ``value`` for the engine, plus warnings about integers sent as strings.

    ``where`` names the value in messages ("argument 1", "reply to ctx.peek (#2)").
    """
    notes: list[str] = []
    converted = _convert(value, "$", notes)
    try:
        text = json.dumps(converted, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} is not a JSON value: {exc}") from exc
    data = text.encode("ascii")  # ensure_ascii (the default) escapes everything else
    if len(data) > max_bytes:
        raise SandboxLimitExceeded(
            f"{where} is {len(data)} bytes of JSON, more than the limit of {max_bytes} (policy "
            "limits.message_bytes); ask for less data at a time (docs/security.md#limits)",
            limit="size",
        )
    warnings = [
        f"{where}{'' if p == '$' else ' at ' + p}: an integer no JavaScript number can hold "
        "exactly; the script receives it as a decimal string"
        for p in notes
    ]
    return data, warnings
