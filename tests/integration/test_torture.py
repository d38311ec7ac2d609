"""Torture: hundreds of mutations against a loopback server that randomly (seeded) applies
then times out, rejects, hangs, or answers 5xx; the host (`keepflow drain`) is SIGKILLed at
random instants; a scripted person answers the inbox *truthfully* (it looks at the server's
record).

At the end: every event consumed or skipped, the server's effect exactly once per event the
ledger says applied, zero duplicates, zero lost — printed as one JSON summary line.

Sizes: ≥ 600 mutation attempts on SQLite and ≥ 300 on PostgreSQL by default (about a minute
each); ``KEEPFLOW_TORTURE_MUTATIONS=2000 KEEPFLOW_TORTURE_MUTATIONS_PG=2000`` is a long run.
The connector timeout is 0.1 s (the server hangs 0.3 s): a hang costs that, not seconds.

The harness lives in :mod:`tests.support.torture`; ``bench/torture.py`` runs a longer version
(``make bench``: ≥ 10,000 mutations, ≥ 500 kills) with kills at named fault points as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.torture import Torture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Mutation attempts (ledger rows) at least, on SQLite; kept small by default so that the
#: whole suite's wall time stays sane (see the module docstring for the long run).
MUTATIONS = int(os.environ.get("KEEPFLOW_TORTURE_MUTATIONS", "600"))
#: The same torture runs on PostgreSQL, shorter (each attempt costs more there).
MUTATIONS_PG = int(os.environ.get("KEEPFLOW_TORTURE_MUTATIONS_PG", "300"))
WORKFLOWS = 8
CALL_SECONDS = 0.1  # connector timeouts (policy)
HANG_SECONDS = 0.3  # the server's hang, well past the client's timeout


@pytest.mark.timeout(2400)
def test_torture(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    t = Torture(tmp_path, store_url, workflows=WORKFLOWS, call_seconds=CALL_SECONDS,
                hang_seconds=HANG_SECONDS)
    target = MUTATIONS_PG if store_url.startswith("postgresql") else MUTATIONS
    try:
        while True:
            attempts = t.attempts()
            if attempts >= target:
                break
            t.add_orders(150)
            t.poll_all()
            for _ in range(6):
                kill = t.rng.uniform(0.3, 2.5) if t.rng.random() < 0.5 else None
                t.keepflow("drain", kill_after=kill)
                t.answer_inbox()
        t.settle()
        summary = t.verify(attempts)
    finally:
        t.close()
    with capsys.disabled():
        print(f"\ntorture: {json.dumps(summary)}")
    assert summary["duplicates"] == 0
    assert summary["lost"] == 0
    assert summary["mutations"] >= target
    assert summary["inbox_left"] == 0
