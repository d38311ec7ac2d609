"""How much a ``sql`` call may hand back, and how a result that would be bigger reads (SPEC §9).

A script chooses the SQL, and the database's bytes are untrusted: one ``SELECT
zeroblob(900000000)`` or a 900 MB stored document must not be loaded into the host, which
runs every workflow. So every result is bounded in bytes by the connection's ``max_bytes``
(default :data:`DEFAULT_MAX_BYTES`), measured as the JSON text the sandbox receives, and in
nesting depth by :data:`MAX_JSON_DEPTH`. The bound is enforced *while* the result is read
(:mod:`sql_query`, :mod:`sql_rows`), never after it is in memory.

Reads that do not fit fail with a :class:`PermanentError` that names the limit (details
``limit="max_bytes"`` or ``limit="depth"``): nothing was written, and asking for less data is
the fix. Mutations do not fail on their *result*: the write has happened, so the returned row
carries :func:`size_marker` / :func:`depth_marker` in place of the values that do not fit.
docs/connectors.md#sql-result-size documents all of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keepflow.connectors.sql.allow import shown
from keepflow.errors import PermanentError

DOCS = "docs/connectors.md#sql-result-size"
#: Default of the ``max_bytes`` setting: half of the default ``limits.message_bytes`` policy
#: (8 MiB), so one result fits the sandbox's message with room for the rest of the turn.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
MIN_MAX_BYTES = 1024
#: The largest ``limits.message_bytes`` a policy may set: a bigger result could never cross.
MAX_MAX_BYTES = 256 * 1024 * 1024
#: Deepest JSON value (objects and arrays inside each other) a result may hold. Deep enough
#: for any document a workflow reads; shallow enough that every recursive JSON walker of the
#: host (ours, the sandbox's encoder, the store's) stays far below Python's recursion limit.
MAX_JSON_DEPTH = 100


class TooDeep(ValueError):
    """A value nests objects/arrays more than :data:`MAX_JSON_DEPTH` levels deep."""


@dataclass(frozen=True)
class ResultLimits:
    """The bounds of one connection's results, and the errors that name them."""

    connection: str
    max_bytes: int
    max_rows: int

    def too_large(self, what: str, detail: str) -> PermanentError:
        return PermanentError(
            f"{what}: the result is larger than max_bytes = {self.max_bytes} bytes of JSON, "
            f"the limit of connection '{self.connection}' ({detail}); nothing was returned. "
            f"Ask for less: fewer rows (LIMIT, WHERE) or columns, or a part of a long value "
            f"(substr), or raise max_bytes in connections.toml (see {DOCS})",
            limit="max_bytes", max_bytes=self.max_bytes)

    def value_too_large(self, what: str, per_value: int) -> PermanentError:
        share = "" if per_value >= self.max_bytes else (
            f", max_bytes = {self.max_bytes} shared among the result's many columns")
        return PermanentError(
            f"{what}: a value the query reads or returns is larger than {per_value} bytes, "
            f"the per-value limit of connection '{self.connection}'{share}; SQLite refused "
            f"to build it and nothing was returned. Read a part of it (substr), select "
            f"fewer columns, or raise max_bytes in connections.toml (see {DOCS})",
            limit="max_bytes", max_bytes=self.max_bytes, per_value=per_value)

    def row_too_large(self, what: str, columns: Mapping[str, int]) -> PermanentError:
        biggest = sorted(columns.items(), key=lambda kv: -kv[1])[:3]
        named = ", ".join(f"'{shown(name)}' has {size} bytes" for name, size in biggest)
        return PermanentError(
            f"{what}: the row is larger than max_bytes = {self.max_bytes} bytes of JSON, the "
            f"limit of connection '{self.connection}' ({named}); nothing was returned. Use "
            f"query to read only the columns you need, or raise max_bytes in "
            f"connections.toml (see {DOCS})",
            limit="max_bytes", max_bytes=self.max_bytes,
            columns=[shown(n) for n, _ in biggest])



def too_deep(what: str) -> PermanentError:
    """A read whose result nests too deeply (ours or the driver's JSON decoder gave up)."""
    return PermanentError(
        f"{what}: a value in the result nests objects or arrays more than {MAX_JSON_DEPTH} "
        f"levels deep, more than a result may hold; nothing was returned. Select a part of "
        f"it (e.g. with -> / ->>), or cast it to text (see {DOCS})",
        limit="depth", max_depth=MAX_JSON_DEPTH)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON text, the way the sandbox encodes it (ASCII, compact)."""
    return len(json.dumps(value, separators=(",", ":"), allow_nan=False))


def check_depth(value: Any) -> None:
    """Raise :class:`TooDeep` if ``value`` nests more than :data:`MAX_JSON_DEPTH` levels.
    Iterative: the check itself must not be the thing that overflows the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, Mapping):
            children: Any = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            raise TooDeep(f"nested more than {MAX_JSON_DEPTH} levels")
        stack.extend((c, depth + 1) for c in children)


def size_marker(size: int) -> dict[str, Any]:
    """What a mutation result holds in place of a value too large to return."""
    return {"truncated": True, "bytes": size}


def depth_marker() -> dict[str, Any]:
    """What a mutation result holds in place of a value nested too deeply to return."""
    return {"truncated": True, "nestedDeeperThan": MAX_JSON_DEPTH}
