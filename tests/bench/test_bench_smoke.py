"""The benchmark suite's smoke run (tiny sizes): every benchmark, both backends, the DBOS peer,
the torture and the report still run end to end, so the suite cannot rot between full runs.
Its numbers mean nothing; only that each piece produced them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.support.postgres import find_bin_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _missing() -> str | None:
    for module in ("dbos", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    if find_bin_dir() is None:
        return "PostgreSQL binaries (initdb, pg_ctl) not found"
    return None


def test_bench_smoke(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        if IN_CI:
            pytest.fail(f"the benchmark smoke run must run in CI: {missing}")
        pytest.skip(missing)
    out = tmp_path / "results.json"
    docs = tmp_path / "docs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(out), "--docs", str(docs)],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=False,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    for backend in ("sqlite", "postgresql"):
        b = res["backends"][backend]
        assert b["consumer_run"]["durable_commits_per_run"] == 3
        assert b["consumer_run_vs_floor"] > 1  # nothing beats the floor
        assert b["throughput"]["workflows_100"]["runs"] == 100
        assert b["history"]["ratio"] > 0
        assert b["idle"]["startup_seconds"] > 0
        assert b["web"]["events_list"]["seed"]["events"] == 500
        assert b["web"]["inbound"]["send_to_consumer_start"]["n"] == 5
        for n in (1, 100):
            assert res["peer"][backend][f"workflows_{n}"]["dbos"]["exactly_once"] is True
    assert res["torture"]["duplicates"] == 0
    assert res["torture"]["lost"] == 0
    page = (docs / "performance.md").read_text()
    assert "## Goals" in page
    assert "DBOS" in page
    assert "## Web surfaces" in page
    assert {p.name for p in (docs / "img").iterdir()} >= {
        "perf-floor.png", "perf-throughput.png", "perf-history.png", "perf-web.png"}
