"""Named fault-injection points at every durable boundary (SPEC §13 crash-injection suite).

Enabled only by the environment variable ``KEEPFLOW_FAULTS``, read once at import::

    KEEPFLOW_FAULTS="in_flight.after_commit:3"   # SIGKILL this process at the 3rd hit

Several points may be given, comma-separated. When the variable is unset, :func:`point` is a
no-op function bound at import time: zero cost on every hot path.

Points (see ``docs/execution-model.md``):

- ``producer_commit.mid_commit`` / ``producer_commit.after_commit``
- ``in_flight.mid_commit`` / ``in_flight.after_commit`` (just before the external call)
- ``mutation.after_call`` (the connector returned; its outcome is not yet recorded)
- ``settle_<status>.mid_commit`` / ``settle_<status>.after_commit``
- ``next.before_commit`` (``next`` ran; its commit has not started)
- ``consumer_commit.mid_commit`` / ``consumer_commit.after_commit``
- ``record_run.mid_commit`` / ``record_run.after_commit``
"""

from __future__ import annotations

import os
import signal
import sys


def _parse(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        name, _, nth = part.partition(":")
        out[name] = int(nth or "1")
    return out


def _noop(name: str) -> None:
    return None


_SPEC = os.environ.get("KEEPFLOW_FAULTS", "")
_TARGETS = _parse(_SPEC) if _SPEC else {}
_HITS: dict[str, int] = {}


def _armed(name: str) -> None:
    nth = _TARGETS.get(name)
    if nth is None:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] == nth:
        sys.stderr.write(f"keepflow: fault point {name} hit {nth}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


point = _armed if _TARGETS else _noop
