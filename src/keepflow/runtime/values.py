"""Validation of what scripts hand to the host: events, PrepareResults, state, sizes.

Every rejection is an :class:`~keepflow.errors.InvalidResult` (a ``logic`` failure, SPEC §8)
whose message names the value, the rule and what to do instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from keepflow.errors import InvalidResult
from keepflow.model import EventDraft, Reservation
from keepflow.store.convert import canonical_json

TITLE_MAX = 200  # SPEC §3
MESSAGE_ID_MAX = 256  # SPEC §3
TOPIC_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # SPEC §2


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def check_size(value: Any, limit: int, what: str) -> int:
    """The JSON size of ``value`` in bytes; :class:`InvalidResult` if it is over ``limit``."""
    size = json_size(value)
    _check(size, limit, what)
    return size


def _check(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise InvalidResult(
            f"{what} is {_kib(size)} as JSON, over the limit of {_kib(limit)} (policy "
            f"limits); keep large data outside keepflow and store a reference instead",
            size=size, limit=limit,
        )


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def event_draft(topic: Any, event: Any, *, declared: frozenset[str], payload_limit: int,
                where: str | None = None) -> EventDraft:
    """Validate one ``ctx.publish(topic, {messageId?, title, payload?})`` (SPEC §3).

    ``where`` names the value in messages (default: the ``ctx.publish`` call); every
    rejection names the offending field in its ``field`` detail."""
    if not isinstance(topic, str) or topic not in declared:
        raise InvalidResult(
            f"ctx.publish({json.dumps(topic)}): the topic is not declared in `topics` "
            f"(declared: {', '.join(sorted(declared)) or 'none'})", field="topic"
        )
    at = where or f"ctx.publish('{topic}', …)"
    if not isinstance(event, dict):
        raise InvalidResult(f"{at}: the event must be an object {{messageId, title, payload}}",
                            field="$")
    unknown = set(event) - {"messageId", "title", "payload"}
    if unknown:
        raise InvalidResult(
            f"{at}: unknown event field(s) {', '.join(sorted(map(str, unknown)))}; "
            "an event has messageId, title and payload", field=sorted(map(str, unknown))[0]
        )
    title = event.get("title")
    if not isinstance(title, str) or not title.strip():
        raise InvalidResult(
            f"{at}: `title` is required and must be a non-empty string "
            "naming the external thing, e.g. 'Email from alice@example.com: \"Invoice\"'",
            field="title"
        )
    if len(title) > TITLE_MAX:
        raise InvalidResult(
            f"{at}: `title` is {len(title)} characters; at most {TITLE_MAX} are allowed",
            field="title"
        )
    payload = event.get("payload")
    # One serialisation gives both the size and the hash (sorting keys keeps the length).
    canonical = canonical_json(payload).encode()
    size = len(canonical)
    if size > payload_limit:
        raise InvalidResult(
            f"the payload of event '{title}' is {_kib(size)} as JSON, over the limit of "
            f"{_kib(payload_limit)} (policy limits); keep large data outside keepflow and "
            "store a reference instead", size=size, limit=payload_limit, field="payload")
    message_id = event.get("messageId")
    if message_id is None:
        # SPEC §3: derived from a hash of the canonical payload when omitted.
        message_id = "sha256:" + hashlib.sha256(canonical).hexdigest()[:40]
    elif isinstance(message_id, bool) or not isinstance(message_id, (str, int)):
        raise InvalidResult(
            f"{at}: `messageId` must be a string derived from the external "
            f"id (got {type(message_id).__name__})", field="messageId"
        )
    message_id = str(message_id)
    if not message_id or len(message_id) > MESSAGE_ID_MAX:
        raise InvalidResult(
            f"{at}: `messageId` must be 1 to {MESSAGE_ID_MAX} characters "
            f"(got {len(message_id)})", field="messageId"
        )
    title = title.strip()
    size = len(canonical) + len(title.encode()) + len(message_id.encode())
    return EventDraft(topic=topic, message_id=message_id, title=title, payload=payload,
                      payload_sha256=hashlib.sha256(canonical).hexdigest(), size=size)


@dataclass(frozen=True)
class PrepareResult:
    reservations: tuple[Reservation, ...]
    data: Any
    ui: Any
    size: int = 0  # bytes of its JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "reservations": [{"topic": r.topic, "ids": list(r.message_ids)}
                             for r in self.reservations],
            "data": self.data,
            **({"ui": self.ui} if self.ui is not None else {}),
        }

    @property
    def empty(self) -> bool:
        return not any(r.message_ids for r in self.reservations)


def prepare_result(value: Any, *, subscribed: frozenset[str], limit: int) -> PrepareResult:
    """Validate prepare's return value (SPEC §5.1)."""
    where = "prepare must return {reservations: [{topic, ids}], data, ui?}"
    if not isinstance(value, dict):
        raise InvalidResult(f"{where}; it returned {_describe(value)}")
    unknown = set(value) - {"reservations", "data", "ui"}
    if unknown:
        raise InvalidResult(f"{where}; unknown field(s): {', '.join(sorted(unknown))}")
    raw = value.get("reservations")
    if not isinstance(raw, list):
        raise InvalidResult(f"{where}; `reservations` is {_describe(raw)}")
    merged: dict[str, dict[str, None]] = {}  # topic -> ids in order, deduplicated in O(1)
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or set(r) - {"topic", "ids"}:
            raise InvalidResult(f"{where}; reservations[{i}] must be {{topic, ids}}")
        topic, ids = r.get("topic"), r.get("ids")
        if not isinstance(topic, str) or topic not in subscribed:
            raise InvalidResult(
                f"prepare reserved events of topic {json.dumps(topic)}, which this consumer does "
                f"not subscribe to (it subscribes to: {', '.join(sorted(subscribed))})"
            )
        if not isinstance(ids, list) or not all(isinstance(x, (str, int)) and
                                                not isinstance(x, bool) for x in ids):
            raise InvalidResult(f"{where}; reservations[{i}].ids must be a list of messageIds")
        bucket = merged.setdefault(topic, {})
        for x in ids:
            bucket.setdefault(str(x), None)
    result = PrepareResult(
        reservations=tuple(Reservation(t, tuple(ids)) for t, ids in merged.items() if ids),
        data=value.get("data"),
        ui=value.get("ui"),
    )
    size = check_size(result.to_json(), limit, "the PrepareResult")
    return replace(result, size=size)


def mutation_params(args: tuple[Any, ...], display: str) -> dict[str, Any]:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise InvalidResult(f"{display} takes exactly one object argument with its parameters")
    params: dict[str, Any] = args[0]
    return params


def _describe(value: Any) -> str:
    if value is None:
        return "null/undefined"
    text = canonical_json(value)
    return f"{type(value).__name__} {text[:80]}"
