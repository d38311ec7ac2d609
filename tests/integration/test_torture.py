"""Torture: ≥ 2,000 mutations against a loopback server that randomly (seeded) applies then
times out, rejects, hangs, or answers 5xx; the host (`keepflow drain`) is SIGKILLed at random
instants; a scripted person answers the inbox *truthfully* (it looks at the server's record).

At the end: every event consumed or skipped, the server's effect exactly once per event the
ledger says applied, zero duplicates, zero lost — printed as one JSON summary line.

The harness lives in :mod:`tests.support.torture`; ``bench/torture.py`` runs a longer version
with kills at named fault points as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.torture import Torture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MUTATIONS = int(os.environ.get("KEEPFLOW_TORTURE_MUTATIONS", "2000"))
#: The same torture runs on PostgreSQL, shorter, to keep the suite's wall time sane.
MUTATIONS_PG = int(os.environ.get("KEEPFLOW_TORTURE_MUTATIONS_PG", "600"))
WORKFLOWS = 8


@pytest.mark.timeout(2400)
def test_torture(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    t = Torture(tmp_path, store_url, workflows=WORKFLOWS)
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
