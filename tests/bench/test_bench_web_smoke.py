"""The web benchmark's smoke run (``bench/web.py`` at tiny sizes: 500 events, 5 inbound events)
against a real ``keepflow serve`` on each backend, and its section of the report, so the
benchmark cannot rot between full runs. Its numbers mean nothing; only that each was made."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench import report, web

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _plots() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (pip install -e '.[bench]')")


def test_bench_web_smoke(empty_store_url: str, tmp_path: Path) -> None:
    out = web.run_backend(lambda: empty_store_url, quick=True)
    ev = out["events_list"]
    assert ev["seed"]["events"] == 500
    assert sum(ev["seed"]["statuses"].values()) == 500
    assert ev["seed"]["title_matches"][web.RARE.lower()] == 12
    t = ev["timings"]
    assert {case for case, _ in report.WEB_CASES} <= set(t)
    for case, numbers in t.items():
        assert numbers["n"] > 0, case
        assert numbers["p99"] >= numbers["median"] > 0, case
    assert t["api_first"]["events"] == web.PAGE
    assert t["api_title_few"]["events"] == 12
    assert ev["deep_pages"] == 3
    inbound = out["inbound"]
    assert inbound["post"]["n"] == inbound["send_to_consumer_start"]["n"] == 5
    assert inbound["send_to_consumer_start"]["median"] > 0

    backend = "sqlite" if empty_store_url.startswith("sqlite") else "postgresql"
    lines = report.web_section({"backends": {backend: {"web": out}}},
                               report.plot_web({"backends": {backend: {"web": out}}}, tmp_path))
    text = "\n".join(lines)
    assert "## Web surfaces" in text
    assert "title search matching few" in text
    assert (tmp_path / "perf-web.png").is_file()
